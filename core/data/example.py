"""One dataset row, normalised: the Example type, its kinds, roles, and per-message training weights.

Example: Example(row=0, kind=KIND_MESSAGES, messages=[{"role": "user", "content": "Hi"}, ...])
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ..findings import Finding

ROLES = ("system", "user", "assistant", "tool", "developer")
# ShareGPT's names, as axolotl and LLaMA-Factory map them (TRL keeps them verbatim; we say so in a finding).
SHAREGPT_ROLES = {"human": "user", "gpt": "assistant", "system": "system", "tool": "tool", "function_call": "assistant",
                  "observation": "tool", "user": "user", "assistant": "assistant"}


@dataclass
class Example:
    """One dataset row, normalised. ``kind`` is one of KINDS; ``row`` is its 0-based index in the dataset.

    ``images``: the row's images in the order TRL fills the image placeholders with them (``images`` / ``image``
    column), as written: local paths (relative to ``base_dir``), ``{"bytes": ..., "path": ...}`` dicts as `datasets`
    stores them, raw bytes or PIL images. None for a text-only row. core.masking.vision opens them.
    """

    row: int
    kind: str
    messages: list[dict] | None = None  # conversational, and prompt+completion of a conversational pair
    prompt: Any = None  # str or list of messages
    completion: Any = None
    text: str | None = None
    input_ids: list[int] | None = None
    labels: list[int] | None = None
    tools: list | None = None
    chat_template_kwargs: dict = field(default_factory=dict)
    raw: dict = field(default_factory=dict)
    source: str | None = None
    line: int | None = None  # 1-based line in a JSONL file
    notes: list[Finding] = field(default_factory=list)
    turn: int | None = None  # split_turns: the assistant message this example trains (its history is the prompt)
    images: list | None = None
    base_dir: str | None = None  # the folder relative image paths are read from (the data file's)

    @property
    def n_prompt_messages(self) -> int:
        return len(self.prompt) if self.kind == KIND_PC_CONV else 0


KIND_TEXT = "text"
KIND_MESSAGES = "messages"
KIND_PC_TEXT = "prompt_completion_text"
KIND_PC_CONV = "prompt_completion_messages"
KIND_TOKENS = "tokens"
KINDS = (KIND_TEXT, KIND_MESSAGES, KIND_PC_TEXT, KIND_PC_CONV, KIND_TOKENS)


def message_weight(message: dict) -> float:
    """The loss weight of a message: ``weight`` (OpenAI: 0/1; LLaMA-Factory's ``loss_weight`` converts to it, any value
    in [0, 1]) and ``train`` false (axolotl) is 0. Example: {"weight": 0.5} -> 0.5; {"train": False} -> 0.0; {} -> 1.0."""
    if message.get("train", True) is False:
        return 0.0
    w = message.get("weight", 1)
    return float(w) if isinstance(w, (int, float)) and not (isinstance(w, float) and math.isnan(w)) else 1.0


def is_trained_flag_off(message: dict) -> bool:
    """True when a message carries weight 0 (OpenAI) or train false (axolotl). Example: {"weight": 0} -> True."""
    return message_weight(message) == 0.0
