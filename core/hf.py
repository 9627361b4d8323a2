"""MaskLens inside your own `datasets` pipeline: `Dataset.map` with exactly the labels MaskLens shows.

Example:
    from datasets import load_dataset
    from .hf import masklens_map
    from core import MaskConfig

    ds = load_dataset("json", data_files="chat.jsonl", split="train")
    fn = masklens_map("HuggingFaceTB/SmolLM2-135M-Instruct", MaskConfig("assistant_only", reasoning="mask"))
    ds = ds.map(fn, batched=True, with_indices=True, num_proc=4, remove_columns=ds.column_names)
    # ds["input_ids"], ds["labels"]: a pre-tokenized dataset TRL's SFTTrainer uses as is (no re-masking)

The function carries the tokenizer's *name or path*, never the tokenizer: each `num_proc` worker loads it once
(core.models caches it per process), and `datasets` can hash and pickle the function cheaply. Rows are rendered as
the dataset holds them: a dataset loaded with `datasets` has had its schema unified across rows (keys added with
null values, see the `schema_nulls_injected` finding), and those nulls are what TRL renders too.
With `with_indices=True`, an error names the dataset row; with cfg.split_turns a row gives one output row per
assistant turn, so remove every input column (remove_columns=ds.column_names).
Strategies registered at run time (--rules, your own files) must be registered in the workers too: register them at
import time of a module the workers import, or use num_proc=1.
"""

from __future__ import annotations

import os

from .masking.options import MaskConfig


class MasklensMap:
    """A picklable batched-map function: batch (dict of columns) -> {"input_ids": [...], "labels": [...]}."""

    def __init__(self, tokenizer_name_or_path: str | os.PathLike | None, cfg: MaskConfig,
                 trust_remote_code: bool = False):
        if not isinstance(cfg, MaskConfig):
            raise TypeError(f"cfg must be a MaskConfig, got {type(cfg).__name__}")
        if tokenizer_name_or_path is not None and not isinstance(tokenizer_name_or_path, (str, os.PathLike)):
            raise TypeError("pass the tokenizer's name or path (each worker loads it), not a tokenizer object")
        self.tokenizer = None if tokenizer_name_or_path is None else str(tokenizer_name_or_path)
        self.cfg = cfg
        self.trust_remote_code = trust_remote_code

    def __call__(self, batch: dict, indices: list[int] | None = None) -> dict:
        from .data.formats import normalize_row  # noqa: PLC0415
        from .masking.engine import render_examples  # noqa: PLC0415
        from .models import load_tokenizer  # noqa: PLC0415  (cached per process)

        columns = list(batch)
        n = len(batch[columns[0]]) if columns else 0
        rows = [{c: batch[c][k] for c in columns} for k in range(n)]
        index = list(indices) if indices is not None else list(range(n))
        examples = [normalize_row(r, i, source="dataset") for r, i in zip(rows, index)]
        tok = load_tokenizer(self.tokenizer, trust_remote_code=self.trust_remote_code)
        rendered = render_examples(examples, tok, self.cfg)
        return {"input_ids": [r.input_ids for r in rendered], "labels": [r.labels for r in rendered]}

    def __repr__(self) -> str:
        return f"masklens_map({self.tokenizer!r}, {self.cfg!r})"


def masklens_map(tokenizer_name_or_path: str | os.PathLike | None, cfg: MaskConfig,
                 trust_remote_code: bool = False) -> MasklensMap:
    """A function for `Dataset.map(fn, batched=True, with_indices=True, num_proc=N, remove_columns=...)` giving
    `input_ids` and `labels` exactly as core.engine.render_examples does. None: the embedded SmolLM2 tokenizer.

    Example: ds.map(masklens_map("my/tokenizer", MaskConfig("assistant_only")), batched=True,
                    remove_columns=ds.column_names)["labels"][0] -> [-100, -100, ..., 9906, 0]
    """
    return MasklensMap(tokenizer_name_or_path, cfg, trust_remote_code)
