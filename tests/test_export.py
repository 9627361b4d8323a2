"""Exports against the real TRL 1.16: the written files load with datasets and SFTTrainer trains exactly their labels;
the TRL snippet compiles, names only real SFTConfig fields, and runs; the axolotl and LLaMA-Factory snippets parse as
YAML with the options each strategy maps to."""

import ast
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from datasets import load_dataset
from trl import SFTConfig, SFTTrainer

from core.data.formats import normalize_row
from core.masking.engine import STRATEGIES, MaskConfig, render_examples
from core.export import (axolotl_snippet, export_jsonl, export_parquet, export_records, llamafactory_snippet,
                         sftconfig_snippet)
from tests.conftest import tiny_llama

IGNORE = -100
MESSAGES = [
    [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello! How can I help?"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "2+2?"},
     {"role": "assistant", "content": "4"}, {"role": "user", "content": "Sure?"},
     {"role": "assistant", "content": "Yes. 2+2 is 4, always."}],
    [{"role": "user", "content": "Thanks. " * 30}, {"role": "assistant", "content": "It is sunny."}],
]


def rendered(tok, **cfg):
    exs = [normalize_row({"messages": m}, i) for i, m in enumerate(MESSAGES)]
    return render_examples(exs, tok, MaskConfig(**cfg))


def all_configs():
    return [MaskConfig("full"), MaskConfig("completion_only"), MaskConfig("assistant_only"),
            MaskConfig("assistant_only", eos="last_turn", train_roles=("assistant", "tool"), max_length=256),
            MaskConfig("assistant_only", eos="none", use_generation_markers=False, truncation="keep_end",
                       max_length=64),
            MaskConfig("last_assistant"), MaskConfig("last_assistant", eos="none", chat_template="{{ x }}\n'\"q\"'"),
            MaskConfig("response_template", response_template="### Assistant:"),
            MaskConfig("response_template", response_template=[1, 2, 3], instruction_template="### Human:")]


# ---------------------------------------------------------------------------------------------------------- files
@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_export_loads_with_datasets(smol_tok, tmp_path, fmt):
    rs = rendered(smol_tok, strategy="assistant_only")
    path = tmp_path / f"out.{fmt}"
    (export_jsonl if fmt == "jsonl" else export_parquet)(rs, path)
    ds = load_dataset("json" if fmt == "jsonl" else "parquet", data_files=str(path), split="train")
    assert ds.column_names == ["input_ids", "labels", "row"]
    assert ds["input_ids"] == [r.input_ids for r in rs]
    assert ds["labels"] == [r.labels for r in rs]
    assert ds["row"] == [0, 1, 2]
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_export_options(smol_tok, tmp_path, fmt):
    rs = rendered(smol_tok, strategy="full")
    path = tmp_path / f"out.{fmt}"
    (export_jsonl if fmt == "jsonl" else export_parquet)(rs, path, row=False, attention_mask=True)
    ds = load_dataset("json" if fmt == "jsonl" else "parquet", data_files=str(path), split="train")
    assert ds.column_names == ["input_ids", "labels", "attention_mask"]
    assert ds["attention_mask"] == [[1] * len(r.input_ids) for r in rs]


def test_export_is_atomic(smol_tok, tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_text("previous\n")

    class Broken:  # fails halfway through the records
        row, input_ids = 9, [1, 2]

        @property
        def labels(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        export_jsonl(rendered(smol_tok, strategy="full") + [Broken()], path)
    assert path.read_text() == "previous\n"
    assert os.listdir(tmp_path) == ["out.jsonl"]

    import core.export as export

    def failing_write(tmp):  # fails while writing: the temporary file is removed, the old file stays
        open(tmp, "w").write("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        export._atomic_write(path, failing_write)
    assert path.read_text() == "previous\n"
    assert os.listdir(tmp_path) == ["out.jsonl"]


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
@pytest.mark.parametrize("strategy", ["assistant_only", "last_assistant", "full"])
def test_sft_trainer_trains_exactly_the_exported_labels(smol_tok, tmp_path, fmt, strategy):
    rs = rendered(smol_tok, strategy=strategy)
    path = tmp_path / f"out.{fmt}"
    (export_jsonl if fmt == "jsonl" else export_parquet)(rs, path)
    ds = load_dataset("json" if fmt == "jsonl" else "parquet", data_files=str(path), split="train")
    args = SFTConfig(output_dir=str(tmp_path / "trl"), report_to=[], bf16=False, use_cpu=True, max_length=None)
    trainer = SFTTrainer(model=tiny_llama(smol_tok), args=args, train_dataset=ds, processing_class=smol_tok)
    assert trainer.train_dataset["input_ids"] == [r.input_ids for r in rs]
    assert trainer.train_dataset["labels"] == [r.labels for r in rs]


def test_sft_trainer_with_max_length_drops_fully_masked_rows(smol_tok, tmp_path):
    # keep_start at 48 tokens leaves row 2 (a long user turn) with no trained token: MaskLens keeps and flags it,
    # TRL (with a max_length) drops it.
    rs = rendered(smol_tok, strategy="assistant_only", max_length=48)
    assert [r.n_trained > 0 for r in rs] == [True, True, False]
    path = export_jsonl(rs, tmp_path / "out.jsonl")
    ds = load_dataset("json", data_files=str(path), split="train")
    args = SFTConfig(output_dir=str(tmp_path / "trl"), report_to=[], bf16=False, use_cpu=True, max_length=48)
    trainer = SFTTrainer(model=tiny_llama(smol_tok), args=args, train_dataset=ds, processing_class=smol_tok)
    assert trainer.train_dataset["row"] == [0, 1]
    assert trainer.train_dataset["labels"] == [rs[0].labels, rs[1].labels]


def test_export_records():
    class R:
        row, input_ids, labels = 3, [5, 6], [IGNORE, 6]

    assert export_records([R()]) == [{"input_ids": [5, 6], "labels": [IGNORE, 6], "row": 3}]
    assert json.dumps(export_records([R()], row=False, attention_mask=True)) == \
        '[{"input_ids": [5, 6], "labels": [-100, 6], "attention_mask": [1, 1]}]'


# ------------------------------------------------------------------------------------------------------ TRL snippet
SFT_FIELDS = {f.name for f in dataclasses.fields(SFTConfig)}


def sftconfig_calls(src: str) -> dict[str, dict]:
    """{variable name: {keyword: literal value}} for every `x = SFTConfig(...)` in a snippet."""
    out = {}
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call) and \
                getattr(node.value.func, "id", None) == "SFTConfig":
            out[node.targets[0].id] = {k.arg: ast.literal_eval(k.value) for k in node.value.keywords}
    return out


@pytest.mark.parametrize("cfg", all_configs(), ids=lambda c: c.strategy)
@pytest.mark.parametrize("data_path", ["export.jsonl", "export.parquet"])
def test_sftconfig_snippet_compiles_and_names_real_fields(cfg, data_path):
    src = sftconfig_snippet(cfg, "HuggingFaceTB/SmolLM2-135M-Instruct", data_path)
    compile(src, "snippet.py", "exec")
    calls = sftconfig_calls(src)
    for name, kwargs in calls.items():
        assert set(kwargs) <= SFT_FIELDS, f"{name}: not SFTConfig fields: {set(kwargs) - SFT_FIELDS}"
    assert calls["args"]["max_length"] == cfg.max_length
    assert ("parquet" if data_path.endswith("parquet") else "json") in src.split("load_dataset(")[1][:10]
    native = calls.get("native_args")
    if cfg.strategy == "full":
        assert native["completion_only_loss"] is False
    elif cfg.strategy == "completion_only":
        assert native["completion_only_loss"] is True
    elif cfg.strategy == "assistant_only":
        assert native["assistant_only_loss"] is True and "{% generation %}" in src
        if cfg.eos != "every_turn":
            assert f"eos={cfg.eos}: no native TRL option" in src
    elif cfg.strategy == "last_assistant":
        assert native is None and "no native TRL option" in src
    else:
        assert native is None and "removed in TRL 0.20" in src
    if cfg.chat_template and native is not None:
        assert native["chat_template_path"]
    if native is not None and cfg.max_length:
        assert native["max_length"] == cfg.max_length
        assert native.get("truncation_mode", "keep_start") == cfg.truncation


@pytest.mark.filterwarnings("ignore:The `'keep_end'` truncation mode is deprecated")
def test_sftconfig_snippet_kwargs_construct(tmp_path):
    # Every SFTConfig the snippets name constructs (on a CPU: bf16 off).
    for cfg in all_configs():
        for kwargs in sftconfig_calls(sftconfig_snippet(cfg, "m", "d.jsonl", {"bf16": False, "use_cpu": True})).values():
            args = SFTConfig(**{**kwargs, "output_dir": str(tmp_path), "report_to": []})
            assert args.max_length == cfg.max_length


def test_sftconfig_snippet_runs(smol_tok, tmp_path):
    """The snippet, as written, trains on the export (a tiny local model; CPU flags through extra_args)."""
    model_dir = tmp_path / "model"
    tiny_llama(smol_tok).save_pretrained(model_dir)
    smol_tok.save_pretrained(model_dir)
    cfg = MaskConfig("assistant_only", max_length=64)
    data = export_jsonl(render_examples([normalize_row({"messages": m}, i) for i, m in enumerate(MESSAGES[:2])],
                                        smol_tok, cfg), tmp_path / "export.jsonl")
    script = tmp_path / "train.py"
    script.write_text(sftconfig_snippet(cfg, str(model_dir), str(data),
                                        {"bf16": False, "use_cpu": True, "report_to": [], "max_steps": 2,
                                         "save_strategy": "no"}))
    p = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "train_loss" in p.stdout + p.stderr


# ----------------------------------------------------------------------------------------------------- YAML snippets
@pytest.mark.parametrize("cfg", all_configs(), ids=lambda c: c.strategy)
def test_axolotl_snippet(cfg):
    y = yaml.safe_load(axolotl_snippet(cfg, data_path="train.jsonl", base_model="org/model"))
    assert y["base_model"] == "org/model" and y["sample_packing"] is False
    (ds,) = y["datasets"]
    s = cfg.strategy
    if cfg.chat_template:
        assert y["chat_template"] == "jinja" and y["chat_template_jinja"] == cfg.chat_template
    else:
        assert y["chat_template"] == "tokenizer_default"
    if cfg.max_length:
        assert y["sequence_len"] == cfg.max_length
        assert ("excess_length_strategy" in y) is (cfg.truncation == "keep_start")
    else:
        assert "sequence_len" not in y
    if s == "full":
        assert y["train_on_inputs"] is True and ds["type"] == "chat_template" and ds["train_on_eos"] == "all"
    elif s == "completion_only":
        assert y["train_on_inputs"] is False and ds["type"] == "input_output"
    elif s == "assistant_only":
        assert y["train_on_inputs"] is False and ds["type"] == "chat_template"
        assert ds["roles_to_train"] == list(cfg.train_roles) and ds["message_field_training"] == "train"
        assert ds.get("train_on_eos") == {"every_turn": "turn", "last_turn": "last", "none": None}[cfg.eos]
    elif s == "last_assistant":
        assert ds["roles_to_train"] == [] and ds["train_on_eos"] is None and y["train_on_inputs"] is False
    else:
        assert ds["type"] is None and "no axolotl equivalent" in axolotl_snippet(cfg)
    if s != "response_template":
        assert ds["path"] == "train.jsonl"


@pytest.mark.parametrize("cfg", all_configs(), ids=lambda c: c.strategy)
def test_llamafactory_snippet(cfg):
    text = llamafactory_snippet(cfg, dataset="my_data", template="qwen", model="org/model")
    y = yaml.safe_load(text)
    assert y["stage"] == "sft" and y["template"] == "qwen" and y["model_name_or_path"] == "org/model"
    assert y["packing"] is False and y["neat_packing"] is False
    assert y.get("cutoff_len") == cfg.max_length
    s = cfg.strategy
    expected = {"full": (True, False), "completion_only": (False, False), "assistant_only": (False, False),
                "last_assistant": (False, True)}
    if s in expected:
        assert (y["train_on_prompt"], y["mask_history"]) == expected[s]
        assert y["dataset"] == "my_data"
    else:
        assert "train_on_prompt" not in y and y["tokenized_path"] == "masklens_tokenized"
        assert "no LLaMA-Factory equivalent" in text
    if s == "assistant_only" and cfg.eos != "every_turn":
        assert f"eos={cfg.eos}: no LLaMA-Factory option" in text


def test_every_strategy_is_covered():
    assert sorted({c.strategy for c in all_configs()}) == sorted(STRATEGIES)
    assert yaml.safe_load(llamafactory_snippet(MaskConfig("full")))["template"] is None  # must be set by the user


# ---------------------------------------------------------------------------------------------------------- split rows
SAMPLES = Path(__file__).resolve().parent.parent / "assets" / "samples"


@pytest.mark.parametrize("family, sample", [("smollm2", "chat_multiturn"), ("qwen3", "reasoning"),
                                            ("qwen3", "agent_traces")])
@pytest.mark.parametrize("source", ["trl", "own"])
def test_split_rows_prepared_by_trl_equal_split_turns(smol_tok, family, sample, source, tmp_path):
    """split_turns exported as prompt/completion rows (export_split_rows): TRL 1.16's SFTTrainer preparation of the
    file (completion_only_loss, its default for the format) gives exactly the input_ids and labels that MaskLens
    renders with split_turns=True, one example per assistant turn, under either template_source: split examples
    are prompt/completion rows, which TRL (and MaskLens) render with the tokenizer's own template, no training swap.
    Qwen3: reasoning_content on several turns, an inline <think>, tool calls and tool results."""
    from core.data.formats import load_examples
    from core.export import export_split_rows, split_turn_rows
    from tests import trl_reference as tr

    tok = smol_tok if family == "smollm2" else tr.family_tokenizer(smol_tok, family, tag_tokens=True)
    examples = load_examples(SAMPLES / f"{sample}.jsonl")
    cfg = MaskConfig("assistant_only", split_turns=True, template_source=source)
    ours = render_examples(examples, tok, cfg)
    path = export_split_rows(examples, cfg, tmp_path / f"{sample}.split_turns.jsonl")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert rows == json.loads(json.dumps(split_turn_rows(examples, cfg)))
    assert len(rows) == len(ours) > len(examples)  # several assistant turns per row
    assert [(r["row"], r["turn"]) for r in rows] == [(o.row, o.turn) for o in ours]
    theirs = tr._run_sft(tok, tr._as_written([{**r, tr.ROW_KEY: i} for i, r in enumerate(rows)]), max_length=None)
    assert sorted(theirs) == list(range(len(rows)))  # TRL dropped none
    for i, o in enumerate(ours):
        t = theirs[i]
        assert (t["input_ids"], t["labels"]) == (o.input_ids, o.labels), \
            f"row {o.row} turn {o.turn}: " + tr.first_difference(tok, o.input_ids, t["input_ids"], o.labels,
                                                                 t["labels"])
        assert sum(lab != IGNORE for lab in o.labels) > 0


def test_split_rows_loaded_with_load_dataset_train_the_same(smol_tok, tmp_path):
    """The TRL snippet's path: load_dataset('json') of the exported split rows (rows whose messages share their keys:
    no schema nulls), prepared by SFTTrainer with its defaults."""
    from core.data.formats import load_examples
    from core.export import export_split_rows
    from tests import trl_reference as tr

    examples = load_examples(SAMPLES / "chat_multiturn.jsonl")
    cfg = MaskConfig("assistant_only", split_turns=True)
    ours = render_examples(examples, smol_tok, cfg)
    path = export_split_rows(examples, cfg, tmp_path / "chat.split_turns.jsonl")
    ds = load_dataset("json", data_files=str(path), split="train")
    ds = ds.add_column(tr.ROW_KEY, list(range(len(ds))))
    theirs = tr._run_sft(smol_tok, ds, max_length=None)
    assert [(theirs[i]["input_ids"], theirs[i]["labels"]) for i in range(len(ours))] == \
        [(o.input_ids, o.labels) for o in ours]
