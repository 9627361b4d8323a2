"""Auditing a whole dataset under one configuration: counts, distributions and the problem examples.

The report is compact so that it can be folded chunk by chunk over a dataset of any size (core.parallel streams
files through it): per-example distributions are 4-byte arrays, problem rows a few bytes each, and reports of
chunks merge in input order (AuditReport.merge).
"""

from __future__ import annotations

from array import array
from collections import Counter
from dataclasses import dataclass, field

from .data.formats import Example
from .masking.engine import MaskConfig, RenderedExample, render_examples

CHUNK = 512  # examples per batch: big enough for batch tokenization, small enough for a live progress bar


class ProblemRows:
    """The examples with error/warning findings, stored compactly: a list of {row, codes, severity} to read.

    Example: p.append({"row": 3, "codes": ["x"], "severity": "warning"}); p[0] == {"row": 3, ...}; len(p) == 1.
    """

    def __init__(self):
        self.rows = array("q")
        self.kinds = array("H")  # index into self.table: (severity, codes) combinations are few
        self.table: list[tuple[str, tuple[str, ...]]] = []
        self._index: dict[tuple[str, tuple[str, ...]], int] = {}

    def append(self, p: dict) -> None:
        key = (p["severity"], tuple(p["codes"]))
        k = self._index.get(key)
        if k is None:
            k = self._index[key] = len(self.table)
            self.table.append(key)
        self.rows.append(p["row"])
        self.kinds.append(k)

    def extend(self, other: ProblemRows) -> None:
        for i in range(len(other)):
            self.append(other[i])

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        sev, codes = self.table[self.kinds[i]]
        return {"row": self.rows[i], "codes": list(codes), "severity": sev}

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def __eq__(self, other) -> bool:
        return list(self) == list(other)


@dataclass
class AuditReport:
    examples: int = 0
    tokens: int = 0
    trained_tokens: int = 0  # trained with full weight
    weighted_tokens: int = 0  # trained with a weight between 0 and 1 (prompt_loss_weight, message or part weights)
    weight_sum: float = 0.0  # sum of every token's loss weight: what the loss averages over
    examples_without_trained_tokens: int = 0
    examples_truncated: int = 0
    findings: dict[str, int] = field(default_factory=dict)  # code -> number of examples with it
    trained_share: array = field(default_factory=lambda: array("f"))  # per example, after truncation
    lengths: array = field(default_factory=lambda: array("i"))  # per example, before truncation
    problems: ProblemRows = field(default_factory=ProblemRows)  # {row, codes, severity}: error/warning findings
    max_length: int | None = None
    rows: int = 0  # input rows read (split_turns makes several examples of one row)

    def merge(self, other: AuditReport) -> None:
        """Fold the report of the next chunk into this one (chunks in input order)."""
        for k in ("examples", "tokens", "trained_tokens", "weighted_tokens", "weight_sum",
                  "examples_without_trained_tokens", "examples_truncated", "rows"):
            setattr(self, k, getattr(self, k) + getattr(other, k))
        for c, n in other.findings.items():
            self.findings[c] = self.findings.get(c, 0) + n
        self.trained_share.extend(other.trained_share)
        self.lengths.extend(other.lengths)
        self.problems.extend(other.problems)

    def to_json(self) -> dict:
        return {"rows": self.rows, "examples": self.examples, "tokens": self.tokens, "trained_tokens": self.trained_tokens,
                "weighted_tokens": self.weighted_tokens, "weight_sum": round(self.weight_sum, 4),
                "trained_share": round(self.trained_tokens / self.tokens, 4) if self.tokens else 0.0,
                "examples_without_trained_tokens": self.examples_without_trained_tokens,
                "examples_truncated": self.examples_truncated, "findings": dict(self.findings),
                "problem_rows": [p["row"] for p in self.problems], "max_length": self.max_length}

    def to_text(self) -> str:
        share = self.trained_tokens / self.tokens if self.tokens else 0.0
        lines = [f"rows                            {self.rows}",
                 f"examples                        {self.examples}"
                 + (f" (split_turns: {self.examples - self.rows} more than rows)" if self.examples > self.rows else ""),
                 f"tokens                          {self.tokens}",
                 f"trained tokens                  {self.trained_tokens} ({share:.1%})"]
        if self.weighted_tokens:
            lines.append(f"weighted tokens (0 < w < 1)     {self.weighted_tokens} (sum of all weights "
                         f"{self.weight_sum:,.1f} = {self.weight_sum / self.tokens:.1%} of the tokens)")
        lines += [f"examples without trained tokens {self.examples_without_trained_tokens}",
                  f"examples truncated              {self.examples_truncated}"
                  + (f" (max_length {self.max_length})" if self.max_length else "")]
        if self.findings:
            lines.append("findings (examples affected):")
            lines += [f"  {code:<30} {n}" for code, n in sorted(self.findings.items(), key=lambda kv: -kv[1])]
        else:
            lines.append("findings: none")
        if self.problems:
            rows = ", ".join(str(p["row"]) for p in self.problems[:20])
            lines.append(f"problem rows: {rows}{' ...' if len(self.problems) > 20 else ''}")
        return "\n".join(lines)


def audit(examples: list[Example], tokenizer, cfg: MaskConfig, progress=None, keep_rendered: bool = False,
          errors: str = "raise", image_root=None) -> tuple[AuditReport, list[RenderedExample]]:
    """Render every example and summarise. progress(done, total) is called after each chunk.
    errors="finding" keeps going past examples the template cannot render; image paths must lie inside image_root
    (see render_examples)."""
    rep = AuditReport(max_length=cfg.max_length, rows=len(examples))
    kept: list[RenderedExample] = []
    total = len(examples)
    for start in range(0, total, CHUNK):
        for r in render_examples(examples[start:start + CHUNK], tokenizer, cfg, errors=errors, image_root=image_root):
            add(rep, r)
            if keep_rendered:
                kept.append(r)
        if progress:
            progress(min(start + CHUNK, total), total)
    return rep, kept


def audit_chunk(examples: list[Example], tokenizer, cfg: MaskConfig, errors: str = "raise") -> AuditReport:
    """The report of one chunk of rows, to merge into the whole dataset's (nothing rendered is kept)."""
    return audit(examples, tokenizer, cfg, errors=errors)[0]


def add(rep: AuditReport, r: RenderedExample) -> None:
    n, t = r.n_tokens, r.n_trained
    rep.examples += 1
    rep.tokens += n
    rep.trained_tokens += t
    rep.weighted_tokens += r.n_weighted
    rep.weight_sum += r.weight_sum
    rep.trained_share.append(t / n if n else 0.0)
    rep.lengths.append(r.n_before_truncation)
    rep.examples_without_trained_tokens += t == 0
    rep.examples_truncated += r.n_before_truncation > n
    codes = Counter(f.code for f in r.findings)
    for c in codes:
        rep.findings[c] = rep.findings.get(c, 0) + 1
    bad = [f for f in r.findings if f.severity in ("error", "warning")]
    if bad:
        rep.problems.append({"row": r.row, "codes": sorted({f.code for f in bad}),
                             "severity": "error" if any(f.severity == "error" for f in bad) else "warning"})
