"""Packing preview: which examples share a row, what was cut, and which labels the model really sees — as TRL 1.16.

The rows are made by TRL's own ``trl.data_utils.pack_dataset`` (so they match ``SFTTrainer(packing=True)`` by
construction), fed exactly what ``SFTTrainer._prepare_dataset`` feeds it (trl/trainer/sft_trainer.py:1439-1483): the
``input_ids`` and ``labels`` columns, not truncated beforehand and with fully masked examples kept (TRL's truncation and
its filter run only without packing), optionally shuffled with the trainer's seed, packed in ``datasets.map`` batches
of 1,000 examples (bins never span two batches). bfd drops empty examples and cuts longer ones at max_length
(trl/data_utils.py:741, :746): those tokens are lost; bfd_split re-packs the overflow as new documents.

Which example each packed document came from is not guessed from token content: two extra list columns (the source
index and each token's position in its source) travel through ``pack_dataset`` alongside ``input_ids``. Every
strategy slices, truncates and reorders all list columns identically, and bins depend only on lengths, so the
mapping is exact, even for identical examples, and ``input_ids``/``labels``/``seq_lengths`` are unchanged.

What the model sees (``labels_seen``) is what ``DataCollatorForLanguageModeling`` returns:
- ``bfd``/``bfd_split`` imply padding-free in TRL 1.16 (sft_trainer.py:916: ``padding_free = args.padding_free
  or (args.packing and args.packing_strategy in {"bfd", "bfd_split"})``); the padding-free collator rebuilds
  ``position_ids`` from ``seq_lengths`` and sets ``labels[position_ids == 0] = -100`` (sft_trainer.py:208): the first
  token of every document (and of every ``bfd_split`` fragment) is never trained.
- ``wrapped`` is not padding-free by default: labels pass unchanged, but documents attend across their boundaries
  and a document's first token is predicted from the previous document's end.

Labels are unshifted, -100 ignored (the model shifts them itself).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from .errors import MaskLensError

IGNORE = -100
PACKING_STRATEGIES = ("bfd", "bfd_split", "wrapped")  # TRL 1.16 SFTConfig.packing_strategy values
_SRC, _POS = "_masklens_source", "_masklens_position"


@dataclass(frozen=True)
class SourceSlice:
    """The part of one source example a packed document holds."""

    source: int  # index into the examples given to pack_preview
    start: int  # first source token held
    end: int  # one past the last source token held (< length: truncated by bfd, or split)
    length: int  # the source example's full length
    trained: int  # trained tokens (label != -100) in the whole source example


@dataclass
class PackedRow:
    """One packed row. ``documents[i] = (start, end, source)`` and ``slices[i]`` describe the same document."""

    input_ids: list[int]
    labels: list[int]  # as TRL's packed dataset holds them
    labels_seen: list[int]  # after TRL's collator for this strategy (padding-free masks document starts)
    seq_lengths: list[int] | None  # TRL's column (bfd, bfd_split); wrapped has none
    documents: list[tuple[int, int, int]]
    slices: list[SourceSlice]
    max_length: int
    padding_free: bool

    @property
    def fill_ratio(self) -> float:
        return len(self.input_ids) / self.max_length

    def to_json(self) -> dict:
        return {"input_ids": self.input_ids, "labels": self.labels, "labels_seen": self.labels_seen,
                "seq_lengths": self.seq_lengths, "documents": [list(d) for d in self.documents],
                "source_ranges": [[s.start, s.end] for s in self.slices], "fill_ratio": round(self.fill_ratio, 4)}


def _ids_and_labels(ex, i: int) -> tuple[list[int], list[int]]:
    if hasattr(ex, "input_ids"):  # a RenderedExample
        ids, labels = ex.input_ids, ex.labels
    else:
        try:
            ids = ex["input_ids"]
        except (KeyError, TypeError):
            raise MaskLensError("an example to pack has no input_ids", row=i,
                                fix="pass rendered examples or dicts with input_ids and labels") from None
        labels = ex.get("labels")
        labels = ids if labels is None else labels  # TRL's collator: no labels -> every token trained
    if len(ids) != len(labels):
        raise MaskLensError(f"input_ids has {len(ids)} tokens but labels has {len(labels)}", row=i, field="labels")
    return list(ids), list(labels)


def _packed_table(pairs: list[tuple[list[int], list[int]]], max_length: int, strategy: str, shuffle_seed, map_kwargs):
    import datasets
    import numpy as np
    import pyarrow as pa
    from datasets.table import InMemoryTable
    from trl.data_utils import pack_dataset

    lengths = np.fromiter((len(ids) for ids, _ in pairs), dtype=np.int64, count=len(pairs))
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))

    def col(values, typ):
        return pa.ListArray.from_arrays(offsets, pa.array(values, type=typ))

    src = np.repeat(np.arange(len(pairs), dtype=np.int64), lengths)
    pos = np.arange(int(lengths.sum()), dtype=np.int64) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    table = pa.table({
        "input_ids": col(itertools.chain.from_iterable(p[0] for p in pairs), pa.int64()),
        "labels": col(itertools.chain.from_iterable(p[1] for p in pairs), pa.int64()),
        _SRC: col(src, pa.int64()), _POS: col(pos, pa.int64()),
    })
    ds = datasets.Dataset(InMemoryTable(table))
    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # a preview, not a job: no "Map: 100%" on stderr
    try:
        if shuffle_seed is not None:  # SFTTrainer: shuffle before packing, then again after
            ds = ds.shuffle(seed=shuffle_seed)
        packed = pack_dataset(ds, max_length, strategy, dict(map_kwargs or {}))
        if shuffle_seed is not None:
            packed = packed.shuffle(seed=shuffle_seed)
        return packed.with_format("arrow")[:]
    finally:
        if bars:
            datasets.enable_progress_bars()


def pack_preview(examples: list, max_length: int, strategy: str = "bfd", *, padding_free: bool | None = None,
                 shuffle_seed: int | None = None, map_kwargs: dict | None = None) -> list[PackedRow]:
    """Pack examples (dicts with input_ids/labels, or RenderedExamples) exactly as SFTTrainer(packing=True) does.

    ``padding_free=None`` follows TRL 1.16: on for bfd and bfd_split, off for wrapped (``SFTConfig(padding_free=True)``
    turns it on there too). ``shuffle_seed`` mimics ``SFTConfig(shuffle_dataset=True, seed=...)``; ``map_kwargs``
    (e.g. ``{"num_proc": 4}`` for ``dataset_num_proc``) go to ``datasets.map`` as TRL passes them: both change the bins.

    Example: pack_preview([{"input_ids": [1, 2, 3], "labels": [1, 2, 3]}, {"input_ids": [4], "labels": [4]}], 4)
    -> one row [1, 2, 3, 4], documents [(0, 3, 0), (3, 4, 1)], labels_seen [-100, 2, 3, -100].
    """
    if strategy not in PACKING_STRATEGIES:
        raise MaskLensError(f"unknown packing strategy {strategy!r}", field="packing_strategy",
                            fix=f"use one of {', '.join(PACKING_STRATEGIES)}")
    if not isinstance(max_length, int) or max_length < 1:
        raise MaskLensError("packing needs a positive max_length (TRL: 'When packing is enabled, `max_length` "
                            "can't be `None`')", field="max_length")
    if padding_free is None:
        padding_free = strategy in ("bfd", "bfd_split")
    pairs = [_ids_and_labels(ex, i) for i, ex in enumerate(examples)]
    if not pairs:
        return []
    totals = [(len(ids), sum(1 for x in labels if x != IGNORE)) for ids, labels in pairs]
    table = _packed_table(pairs, max_length, strategy, shuffle_seed, map_kwargs)

    seq_col = table.column("seq_lengths").to_pylist() if "seq_lengths" in table.column_names else None
    rows = []
    for r, (ids, labels, src, pos) in enumerate(zip(*(table.column(c).to_pylist()
                                                      for c in ("input_ids", "labels", _SRC, _POS)))):
        seq = seq_col[r] if seq_col is not None else None
        if seq is not None:
            bounds = list(itertools.accumulate(seq, initial=0))
        else:  # wrapped: a document is a run of tokens from one source (each source is contiguous in the stream)
            bounds = [0] + [i for i in range(1, len(src)) if src[i] != src[i - 1]] + [len(src)]
        documents, slices = [], []
        for a, b in zip(bounds, bounds[1:]):
            s = src[a]
            assert all(x == s for x in src[a:b]), f"row {r}: document [{a}, {b}) mixes source examples"
            documents.append((a, b, s))
            slices.append(SourceSlice(s, pos[a], pos[b - 1] + 1, *totals[s]))
        seen = list(labels)
        if padding_free:  # DataCollatorForLanguageModeling: labels[position_ids == 0] = -100
            for a in (bounds[:-1] if seq is not None else [0]):
                seen[a] = IGNORE
        rows.append(PackedRow(ids, labels, seen, seq, documents, slices, max_length, padding_free))
    return rows


def packing_summary(rows: list[PackedRow], n_examples: int | None = None) -> dict:
    """What packing did: rows, fill, padding avoided, examples split or truncated, trained tokens kept and lost.

    Padding is counted against a static baseline: each example alone in a ``max_length`` row (dynamic padding to the
    longest in a batch pads less). Trained tokens count labels != -100, as TRL's dataset holds them:
    ``trained_tokens_before`` (source examples) -> ``trained_tokens_packed`` (bfd truncation cuts documents longer
    than max_length: ``trained_tokens_lost_to_truncation``) -> ``trained_tokens_seen`` (after the collator; the
    padding-free one masks each document's first token: ``trained_tokens_masked_by_collator``).
    ``cross_document_targets``: trained first tokens of documents that, without padding-free, the model predicts from
    the end of another document in the same row (wrapped). ``n_examples`` (the number given to pack_preview) counts
    empty examples, which TRL drops and rows cannot show.
    """
    if not rows:
        return {"rows": 0, "examples": n_examples or 0, "tokens": 0, "fill_ratio": 0.0}
    max_length = rows[0].max_length
    sources: dict[int, SourceSlice] = {}
    held: dict[int, int] = {}
    kept_trained: dict[int, int] = {}
    pieces: dict[int, int] = {}
    cross = 0
    for row in rows:
        for (a, b, s), sl in zip(row.documents, row.slices):
            sources[s] = sl
            held[s] = held.get(s, 0) + (b - a)
            kept_trained[s] = kept_trained.get(s, 0) + sum(1 for x in row.labels[a:b] if x != IGNORE)
            pieces[s] = pieces.get(s, 0) + 1
            if a > 0 and not row.padding_free and row.labels_seen[a] != IGNORE:
                cross += 1
    tokens = sum(len(r.input_ids) for r in rows)
    trained_before = sum(sl.trained for sl in sources.values())
    trained_packed = sum(sum(1 for x in r.labels if x != IGNORE) for r in rows)
    trained_seen = sum(sum(1 for x in r.labels_seen if x != IGNORE) for r in rows)
    unpacked_padding = sum(max_length - min(sl.length, max_length) for sl in sources.values())
    packed_padding = len(rows) * max_length - tokens
    return {
        "rows": len(rows),
        "examples": n_examples if n_examples is not None else len(sources),
        "examples_packed": len(sources),
        "max_length": max_length,
        "padding_free": rows[0].padding_free,
        "tokens": tokens,
        "fill_ratio": tokens / (len(rows) * max_length),
        "documents_per_row": sum(len(r.documents) for r in rows) / len(rows),
        "padding_tokens_unpacked": unpacked_padding,
        "padding_tokens_packed": packed_padding,
        "padding_tokens_avoided": unpacked_padding - packed_padding,
        "examples_split": sum(1 for s in sources if pieces[s] > 1),
        "examples_truncated": sum(1 for s, sl in sources.items() if held[s] < sl.length),
        "tokens_lost_to_truncation": sum(sl.length - held[s] for s, sl in sources.items()),
        "trained_tokens_before": trained_before,
        "trained_tokens_packed": trained_packed,
        "trained_tokens_lost_to_truncation": sum(sl.trained - kept_trained[s] for s, sl in sources.items()),
        "trained_tokens_seen": trained_seen,
        "trained_tokens_masked_by_collator": trained_packed - trained_seen,
        "cross_document_targets": cross,
    }
