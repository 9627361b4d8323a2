"""Packing preview against the real TRL 1.16: rows equal to trl.data_utils.pack_dataset and to SFTTrainer(packing=True),
documents mapped back to their source examples, truncation losses counted, and labels_seen equal to what
DataCollatorForLanguageModeling hands the model."""

import random

import pytest
from datasets import Dataset
from trl import SFTConfig, SFTTrainer
from trl.data_utils import pack_dataset
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from core.data.formats import normalize_row
from core.masking.engine import MaskConfig, render_examples
from core.errors import MaskLensError
from core.packing import PACKING_STRATEGIES, pack_preview, packing_summary
from tests.conftest import tiny_llama

IGNORE = -100

HAND = [
    {"input_ids": [1, 2, 3, 4, 5], "labels": [IGNORE, IGNORE, 3, 4, 5]},
    {"input_ids": [6, 7], "labels": [6, 7]},
    {"input_ids": [8, 9, 10], "labels": [IGNORE, 9, 10]},
    {"input_ids": [11], "labels": [11]},
    {"input_ids": [], "labels": []},  # TRL's bfd drops empty sequences
    {"input_ids": [12, 13, 14, 15, 16, 17, 18, 19, 20], "labels": [IGNORE] * 6 + [18, 19, 20]},
    {"input_ids": [6, 7], "labels": [6, 7]},  # identical to example 1
]

CONVERSATIONS = [
    [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello! How can I help?"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "2+2?"},
     {"role": "assistant", "content": "4"}, {"role": "user", "content": "Sure?"},
     {"role": "assistant", "content": "Yes. 2+2 is 4, always."}],
    [{"role": "user", "content": "Write a haiku about tokens."},
     {"role": "assistant", "content": "Bytes merge into words\nmasks decide what will be learnt\n-100 sleeps"}],
    [{"role": "user", "content": "Thanks. " * 30}, {"role": "assistant", "content": "It is sunny. " * 20}],
    [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
]


def trl_rows(examples, max_length, strategy):
    ds = Dataset.from_list([{"input_ids": e["input_ids"], "labels": e["labels"]} for e in examples])
    return pack_dataset(ds, max_length, strategy)[:]


def assert_same_as_trl(rows, examples, max_length, strategy):
    theirs = trl_rows(examples, max_length, strategy)
    assert [r.input_ids for r in rows] == theirs["input_ids"]
    assert [r.labels for r in rows] == theirs["labels"]
    if strategy == "wrapped":
        assert "seq_lengths" not in theirs and all(r.seq_lengths is None for r in rows)
    else:
        assert [r.seq_lengths for r in rows] == theirs["seq_lengths"]


def assert_documents_map_back(rows, examples):
    covered = {}
    for row in rows:
        assert row.documents[0][0] == 0 and row.documents[-1][1] == len(row.input_ids)
        for (a, b, s), sl in zip(row.documents, row.slices):
            assert sl.source == s and sl.end - sl.start == b - a
            assert row.input_ids[a:b] == examples[s]["input_ids"][sl.start:sl.end]
            assert row.labels[a:b] == examples[s]["labels"][sl.start:sl.end]
            covered.setdefault(s, []).append((sl.start, sl.end))
    return covered


def engine_examples(tok, **cfg):
    exs = [normalize_row({"messages": m}, i) for i, m in enumerate(CONVERSATIONS)]
    return [{"input_ids": r.input_ids, "labels": r.labels} for r in render_examples(exs, tok, MaskConfig(**cfg))]


# ----------------------------------------------------------------------------------------------- equality with TRL
@pytest.mark.parametrize("strategy", PACKING_STRATEGIES)
@pytest.mark.parametrize("max_length", [1, 4, 6, 9, 64])
def test_hand_made_equals_pack_dataset(strategy, max_length):
    rows = pack_preview(HAND, max_length, strategy)
    assert_same_as_trl(rows, HAND, max_length, strategy)
    covered = assert_documents_map_back(rows, HAND)
    nonempty = {i for i, e in enumerate(HAND) if e["input_ids"]}
    assert set(covered) == nonempty  # identical examples 1 and 6 each map to themselves, once
    if strategy != "bfd":  # nothing is lost: every source token is held exactly once, in order
        for s, spans in covered.items():
            spans.sort()
            assert spans[0][0] == 0 and spans[-1][1] == len(HAND[s]["input_ids"])
            assert all(x[1] == y[0] for x, y in zip(spans, spans[1:]))


@pytest.mark.parametrize("strategy", PACKING_STRATEGIES)
def test_many_examples_cross_the_map_batch(strategy):
    # 2,500 examples: datasets.map packs in batches of 1,000, and bins never span two batches.
    rng = random.Random(0)
    exs = []
    for _ in range(2500):
        n = rng.randint(0, 40)
        ids = [rng.randrange(1000) for _ in range(n)]
        exs.append({"input_ids": ids, "labels": [x if rng.random() < 0.6 else IGNORE for x in ids]})
    rows = pack_preview(exs, 32, strategy)
    assert_same_as_trl(rows, exs, 32, strategy)
    assert_documents_map_back(rows, exs)


@pytest.mark.parametrize("strategy", PACKING_STRATEGIES)
@pytest.mark.parametrize("max_length", [24, 64, 200])
def test_engine_output_equals_pack_dataset(smol_tok, strategy, max_length):
    exs = engine_examples(smol_tok, strategy="assistant_only")
    rows = pack_preview(exs, max_length, strategy)
    assert_same_as_trl(rows, exs, max_length, strategy)
    assert_documents_map_back(rows, exs)


def sft_trainer(tok, exs, tmp_path, **cfg):
    args = SFTConfig(output_dir=str(tmp_path / "trl"), report_to=[], bf16=False, use_cpu=True,
                     per_device_train_batch_size=2, packing=True, **cfg)
    return SFTTrainer(model=tiny_llama(tok), args=args, train_dataset=Dataset.from_list(exs), processing_class=tok)


@pytest.mark.parametrize("strategy", PACKING_STRATEGIES)
def test_engine_output_equals_sft_trainer_packing(smol_tok, tmp_path, strategy):
    exs = engine_examples(smol_tok, strategy="assistant_only")
    trainer = sft_trainer(smol_tok, exs, tmp_path, max_length=64, packing_strategy=strategy)
    rows = pack_preview(exs, 64, strategy)
    ds = trainer.train_dataset
    assert [r.input_ids for r in rows] == ds["input_ids"]
    assert [r.labels for r in rows] == ds["labels"]
    if strategy != "wrapped":
        assert [r.seq_lengths for r in rows] == ds["seq_lengths"]
    # bfd and bfd_split imply padding-free in TRL 1.16; wrapped does not
    assert trainer.data_collator.padding_free is (strategy != "wrapped")
    assert all(r.padding_free is (strategy != "wrapped") for r in rows)


def test_shuffle_seed_equals_sft_trainer_shuffle(smol_tok, tmp_path):
    exs = engine_examples(smol_tok, strategy="full") * 3
    trainer = sft_trainer(smol_tok, exs, tmp_path, max_length=48, shuffle_dataset=True, seed=7)
    rows = pack_preview(exs, 48, "bfd", shuffle_seed=7)
    assert [r.input_ids for r in rows] == trainer.train_dataset["input_ids"]
    assert [r.seq_lengths for r in rows] == trainer.train_dataset["seq_lengths"]
    assert_documents_map_back(rows, exs)


# -------------------------------------------------------------------------------------------- collator: labels_seen
@pytest.mark.parametrize("strategy", ["bfd", "bfd_split"])
def test_labels_seen_equals_padding_free_collator(smol_tok, strategy):
    exs = engine_examples(smol_tok, strategy="full") + HAND
    rows = pack_preview(exs, 40, strategy)
    collator = DataCollatorForLanguageModeling(pad_token_id=smol_tok.pad_token_id, padding_free=True)
    for i in range(0, len(rows), 3):  # batches of 3 packed rows
        batch = rows[i:i + 3]
        out = collator([{"input_ids": r.input_ids, "labels": r.labels, "seq_lengths": r.seq_lengths} for r in batch])
        assert out["labels"].shape[0] == 1  # padding-free: one flattened sequence
        assert out["labels"][0].tolist() == [x for r in batch for x in r.labels_seen]
    # the first token of every document is masked, trained or not
    for r in rows:
        for a, _, _ in r.documents:
            assert r.labels_seen[a] == IGNORE


def test_labels_seen_equals_wrapped_collator(smol_tok):
    exs = engine_examples(smol_tok, strategy="full")
    rows = pack_preview(exs, 40, "wrapped")
    collator = DataCollatorForLanguageModeling(pad_token_id=smol_tok.pad_token_id)  # what SFTTrainer uses for wrapped
    out = collator([{"input_ids": r.input_ids, "labels": r.labels} for r in rows])
    for r, lab in zip(rows, out["labels"]):
        assert lab[:len(r.input_ids)].tolist() == r.labels_seen == r.labels
    assert packing_summary(rows)["cross_document_targets"] > 0  # full trains each document's first token


def test_wrapped_padding_free_masks_row_starts_only():
    rows = pack_preview(HAND, 4, "wrapped", padding_free=True)
    collator = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)
    out = collator([{"input_ids": r.input_ids, "labels": r.labels} for r in rows])
    assert out["labels"][0].tolist() == [x for r in rows for x in r.labels_seen]
    assert all(r.labels_seen[1:] == r.labels[1:] for r in rows)


# ------------------------------------------------------------------------------------------------------ summary
def test_summary_counts_truncation_losses():
    exs = [
        {"input_ids": list(range(10)), "labels": [IGNORE] * 3 + list(range(3, 10))},  # 7 trained, 6 cut at 4
        {"input_ids": [20, 21], "labels": [20, 21]},
        {"input_ids": [], "labels": []},
        {"input_ids": [30, 31, 32], "labels": [IGNORE, 31, 32]},
    ]
    rows = pack_preview(exs, 4, "bfd")
    s = packing_summary(rows, n_examples=len(exs))
    assert s["examples"] == 4 and s["examples_packed"] == 3
    assert s["rows"] == 3 and s["tokens"] == 9
    assert s["examples_truncated"] == 1 and s["examples_split"] == 0
    assert s["tokens_lost_to_truncation"] == 6
    assert s["trained_tokens_before"] == 11
    assert s["trained_tokens_packed"] == 5
    assert s["trained_tokens_lost_to_truncation"] == 6  # labels 4..9 were cut away
    # collator: first tokens of [30..] (-100 already), [20..] (trained), [0..] (-100 already)
    assert s["trained_tokens_seen"] == 4 and s["trained_tokens_masked_by_collator"] == 1
    the_long_one = next(sl for r in rows for sl in r.slices if sl.source == 0)
    assert (the_long_one.start, the_long_one.end, the_long_one.length) == (0, 4, 10)


def test_summary_split_keeps_everything():
    exs = [{"input_ids": list(range(10)), "labels": list(range(10))}, {"input_ids": [20, 21], "labels": [20, 21]}]
    s = packing_summary(pack_preview(exs, 4, "bfd_split"))
    assert s["examples_split"] == 1 and s["examples_truncated"] == 0
    assert s["trained_tokens_lost_to_truncation"] == 0 and s["trained_tokens_packed"] == 12
    assert s["trained_tokens_masked_by_collator"] == 4  # 3 fragments of example 0 + example 1
    assert s["rows"] == 3 and s["padding_tokens_packed"] == 0  # [0..3] [4..7] [8, 9, 20, 21]


def test_summary_padding_avoided_and_fill(smol_tok):
    exs = engine_examples(smol_tok, strategy="assistant_only")
    rows = pack_preview(exs, 256, "bfd")
    s = packing_summary(rows)
    assert s["rows"] < len(exs) and 0 < s["fill_ratio"] <= 1
    assert s["padding_tokens_avoided"] == (len(exs) - len(rows)) * 256
    assert s["trained_tokens_lost_to_truncation"] == 0
    assert s["trained_tokens_before"] == sum(1 for e in exs for x in e["labels"] if x != IGNORE)


def test_rendered_examples_are_accepted(smol_tok):
    exs = [normalize_row({"messages": m}, i) for i, m in enumerate(CONVERSATIONS)]
    rendered = render_examples(exs, smol_tok, MaskConfig(strategy="assistant_only"))
    rows = pack_preview(rendered, 128)
    dicts = [{"input_ids": r.input_ids, "labels": r.labels} for r in rendered]
    assert [r.input_ids for r in rows] == [r.input_ids for r in pack_preview(dicts, 128)]


def test_errors():
    with pytest.raises(MaskLensError, match="unknown packing strategy"):
        pack_preview(HAND, 8, "greedy")
    with pytest.raises(MaskLensError, match="max_length"):
        pack_preview(HAND, None)
    with pytest.raises(MaskLensError, match="labels has"):
        pack_preview([{"input_ids": [1, 2], "labels": [1]}], 8)
    assert pack_preview([], 8) == []
