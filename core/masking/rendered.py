"""What the engine hands back: one rendered example (ids, labels, findings) and, on demand, per-token details."""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import NamedTuple

from ..findings import Finding
from .labels import IGNORE


class Segment(NamedTuple):
    """A span of the rendered text: which message and part it belongs to, and whether the strategy trains it."""

    start: int
    end: int
    message: int | None  # index into the example's messages; None for template text
    role: str | None
    part: str  # template, header, reasoning, content, tool_calls, eot, scaffold, prompt, completion, text, eos, tokens
    trained: bool
    rule: str


@dataclass
class TokenInfo:
    position: int
    id: int
    text: str
    label: int
    message: int | None
    role: str | None
    part: str
    rule: str
    special: bool
    weight: float = 1.0  # the token's loss weight where it is trained (RenderedExample.weights); 0 where not


@dataclass
class RenderedExample:
    """One example rendered under one configuration: ids, labels and everything needed to explain them.

    ``offsets`` (character span of each token in ``text``) and ``segments`` are computed on first access: a whole
    dataset renders without building per-token Python objects.
    """

    row: int
    kind: str
    input_ids: list[int]
    labels: list[int]
    text: str = ""
    findings: list[Finding] = field(default_factory=list)
    messages: list[dict] | None = None
    token_rules: dict[int, str] = field(default_factory=dict)  # position -> rule, where a token-level rule decided
    n_before_truncation: int = 0
    truncated_at_start: int = 0  # tokens cut from the start (keep_end)
    strategy: str = ""
    turn: int | None = None  # split_turns: which assistant message of the row this example trains
    template_label: str = ""  # which template produced the tokens, in words
    template_swapped: bool = False  # rendered with TRL's training twin, not the tokenizer's own template
    inference_text: str | None = None  # the tokenizer's own rendering, when the twin renders differently
    # Per-token loss weights in [0, 1], or None when every weight is 0 or 1 (the labels alone say it: -100 is 0).
    # Where a weight is > 0 the label is the token id; training minimises sum(w * nll) / sum(w).
    weights: list[float] | None = None
    _enc: object = field(default=None, repr=False)
    _keep: slice | None = field(default=None, repr=False)
    _segments: list | None = field(default=None, repr=False)
    _segment_builder: object = field(default=None, repr=False)
    _offsets: list | None = field(default=None, repr=False)

    @property
    def offsets(self) -> list[tuple[int, int]] | None:
        if self._offsets is None and self._enc is not None:
            off = self._enc.offsets
            self._offsets = off[self._keep] if self._keep is not None else off
        return self._offsets

    @property
    def segments(self) -> list[Segment]:
        if self._segments is None:
            self._segments = self._segment_builder() if self._segment_builder is not None else []
        return self._segments

    @property
    def n_tokens(self) -> int:
        return len(self.input_ids)

    @property
    def n_trained(self) -> int:
        """Tokens trained with full weight (with loss weights: weight 1; otherwise every labelled token)."""
        if self.weights is None:
            return len(self.labels) - self.labels.count(IGNORE)
        return self.weights.count(1.0)

    @property
    def n_weighted(self) -> int:
        """Tokens trained with a weight strictly between 0 and 1."""
        return 0 if self.weights is None else len(self.weights) - self.weights.count(0.0) - self.weights.count(1.0)

    @property
    def weight_sum(self) -> float:
        """sum(w) over the tokens: how much of the loss this example carries."""
        return float(self.n_trained) if self.weights is None else float(sum(self.weights))

    def to_json(self) -> dict:
        """The CLI/export record: one per input row."""
        d = {"row": self.row}
        if self.turn is not None:
            d["turn"] = self.turn
        d = {**d, "input_ids": self.input_ids, "labels": self.labels}
        if self.weights is not None:
            d["loss_weights"] = self.weights
        return {**d,
                "findings": [{"code": f.code, "message": f.message, "severity": f.severity} for f in self.findings],
                "n_tokens": self.n_tokens, "n_trained": self.n_trained,
                "truncated_tokens": self.n_before_truncation - self.n_tokens}

    def tokens(self, tokenizer) -> list[TokenInfo]:
        """Per-token details for the token view (id, text, label, source message, part, rule)."""
        special_ids = set(getattr(tokenizer, "all_special_ids", []) or [])
        seg_starts = [s.start for s in self.segments]
        out = []
        pieces = None
        if self.offsets is None:
            pieces = tokenizer.convert_ids_to_tokens(self.input_ids)
        for i, (tid, lab) in enumerate(zip(self.input_ids, self.labels)):
            if self.offsets is not None:
                s, e = self.offsets[i]
                txt = self.text[s:e] if e > s else tokenizer.decode([tid])
                k = bisect.bisect_right(seg_starts, s) - 1
                seg = self.segments[k] if 0 <= k < len(self.segments) else None
            else:
                txt, seg = pieces[i], (self.segments[0] if self.segments else None)
            w = (1.0 if lab != IGNORE else 0.0) if self.weights is None else self.weights[i]
            rule = self.token_rules.get(i)
            if rule is None and seg is not None:
                rule = seg.rule
                if 0.0 < w < 1.0:  # a weight decided it, not (only) the strategy
                    rule = (f"weight {w:g} (the message's or the rule's weight); " if seg.trained else
                            f"weight {w:g} (prompt_loss_weight); the strategy alone: ") + seg.rule
                elif (lab != IGNORE) != seg.trained:  # a token straddling a segment boundary
                    rule = ("trained: token overlaps a trained span (" if lab != IGNORE else
                            "not trained: token overlaps an untrained span (") + seg.rule + ")"
            out.append(TokenInfo(i, tid, txt, lab, seg.message if seg else None, seg.role if seg else None,
                                 seg.part if seg else "tokens", rule or "", tid in special_ids, w))
        return out
