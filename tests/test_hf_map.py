"""core.hf.masklens_map inside datasets.Dataset.map(batched=True, num_proc=2): exactly render_examples' ids/labels."""

import json
import pickle
from pathlib import Path

import pytest

from core.masking.options import MaskConfig
from core.data.formats import normalize_row
from core.masking.engine import render_examples
from core.errors import MaskLensError
from core.hf import masklens_map

datasets = pytest.importorskip("datasets")
SAMPLES = Path(__file__).resolve().parents[1] / "assets" / "samples"


def rows_of(name):
    return [json.loads(x) for x in (SAMPLES / name).read_text().splitlines() if x.strip()]


def reference(rows, tok, cfg):
    rendered = render_examples([normalize_row(r, i) for i, r in enumerate(rows)], tok, cfg)
    return [r.input_ids for r in rendered], [r.labels for r in rendered]


def test_map_num_proc_2_equals_render_examples(smol_tok):
    rows = rows_of("chat_multiturn.jsonl") + rows_of("weighted.jsonl")
    ds = datasets.Dataset.from_list(rows)
    cfg = MaskConfig("assistant_only", mask_tokens=("<|im_end|>",))
    out = ds.map(masklens_map(None, cfg), batched=True, batch_size=4, with_indices=True, num_proc=2,
                 remove_columns=ds.column_names)
    ids, labels = reference(ds.to_list(), smol_tok, cfg)
    assert out.column_names == ["input_ids", "labels"]
    assert out["input_ids"] == ids and out["labels"] == labels
    assert any(la != -100 for row in labels for la in row)


def test_split_turns_gives_a_row_per_turn(smol_tok):
    ds = datasets.Dataset.from_list(rows_of("chat_multiturn.jsonl"))
    cfg = MaskConfig("assistant_only", split_turns=True)
    out = ds.map(masklens_map(None, cfg), batched=True, batch_size=3, remove_columns=ds.column_names)
    ids, labels = reference(ds.to_list(), smol_tok, cfg)
    assert len(out) == len(ids) > len(ds) and out["labels"] == labels


def test_rows_as_the_dataset_holds_them(smol_tok):
    """from_list unifies tool schemas across rows (null keys): the map renders what the dataset holds, like TRL."""
    ds = datasets.Dataset.from_list(rows_of("agent_traces.jsonl"))
    cfg = MaskConfig("assistant_only")
    out = ds.map(masklens_map(None, cfg), batched=True, remove_columns=ds.column_names)
    assert out["labels"] == reference(ds.to_list(), smol_tok, cfg)[1]


def test_pickles_without_a_tokenizer_and_errors_name_the_row(smol_tok):
    fn = masklens_map(None, MaskConfig("full"))
    fn({"text": ["warm up"]})  # loads the tokenizer in this process
    assert len(pickle.dumps(fn)) < 2000
    with pytest.raises(TypeError, match="name or path"):
        masklens_map(smol_tok, MaskConfig("full"))
    batch = {"messages": [[{"role": "user", "content": "Hi"}], [{"role": "wizard", "content": "Hi"}]]}
    with pytest.raises(MaskLensError, match=r"row 7.*unknown role 'wizard'"):
        fn(batch, [6, 7])
