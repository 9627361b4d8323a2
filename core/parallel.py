"""Rendering a dataset chunk by chunk, in this process or in N worker processes, results in input order.

Workers are started with "spawn" and get everything as plain data: the tokenizer's *name or path* (each worker loads
it once), the MaskConfig, and the user files (--rules, --strategy-file, --collator) that register strategies, which
each worker registers again. Nothing else crosses the process boundary but rows going in and small results
(JSON lines, a chunk's audit stats) coming back; at most ``2 * num_proc`` chunks are in flight, so memory does not
grow with the dataset.

Example:
    spec = WorkerSpec(tokenizer=None)                       # None: the embedded SmolLM2
    for lines in map_chunks(render_json_chunk, spec, cfg, chunks(iter_rows("big.jsonl")), num_proc=2):
        ...                                                 # one list of JSON lines per chunk, in order
"""

from __future__ import annotations

import collections
import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

from .errors import MaskLensError

CHUNK = 512  # rows per chunk: big enough for batch tokenization, small enough to keep memory flat


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker needs to render like the parent: plain data only (it is pickled to each worker)."""

    tokenizer: str | None = None  # hub id or local directory; None = the embedded SmolLM2
    trust_remote_code: bool = False
    rules_files: tuple[str, ...] = ()
    strategy_files: tuple[str, ...] = ()
    collator_files: tuple[str, ...] = ()
    source: str | None = None  # the data file, for error messages

    def register(self) -> dict[str, object]:
        """Register the user files' strategies in this process. Returns {strategy name: Rules or file path}.

        Example: WorkerSpec(rules_files=("first_turn.yaml",)).register() -> {"rules:first_turn": Rules(...)}.
        """
        from .rules import load_rules, register_rules  # noqa: PLC0415
        from .user_code import load_collator_file, load_strategy_file  # noqa: PLC0415

        names: dict[str, object] = {}
        for f in self.rules_files:
            rules = load_rules(f)
            names[register_rules(rules)] = rules
        for f in self.strategy_files:
            for n in load_strategy_file(f):
                names[n] = f
        for f in self.collator_files:
            names[load_collator_file(f)] = f
        return names

    def load_tokenizer(self):
        from .models import load_tokenizer  # noqa: PLC0415

        return load_tokenizer(self.tokenizer, trust_remote_code=self.trust_remote_code)
