"""Auditing a whole dataset under one configuration: counts, distributions and the problem examples."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from .data import Example
from .engine import MaskConfig, RenderedExample, render_examples

CHUNK = 512  # examples per batch: big enough for batch tokenization, small enough for a live progress bar


@dataclass
class AuditReport:
    examples: int = 0
    tokens: int = 0
    trained_tokens: int = 0
    examples_without_trained_tokens: int = 0
    examples_truncated: int = 0
    findings: dict[str, int] = field(default_factory=dict)  # code -> number of examples with it
    trained_share: list[float] = field(default_factory=list)  # per example, after truncation
    lengths: list[int] = field(default_factory=list)  # per example, before truncation
    problems: list[dict] = field(default_factory=list)  # {row, codes, severity} for examples with error/warning findings
    max_length: int | None = None

    def to_json(self) -> dict:
        return {"examples": self.examples, "tokens": self.tokens, "trained_tokens": self.trained_tokens,
                "trained_share": round(self.trained_tokens / self.tokens, 4) if self.tokens else 0.0,
                "examples_without_trained_tokens": self.examples_without_trained_tokens,
                "examples_truncated": self.examples_truncated, "findings": dict(self.findings),
                "problem_rows": [p["row"] for p in self.problems], "max_length": self.max_length}

    def to_text(self) -> str:
        share = self.trained_tokens / self.tokens if self.tokens else 0.0
        lines = [f"examples                        {self.examples}",
                 f"tokens                          {self.tokens}",
                 f"trained tokens                  {self.trained_tokens} ({share:.1%})",
                 f"examples without trained tokens {self.examples_without_trained_tokens}",
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


def audit(examples: list[Example], tokenizer, cfg: MaskConfig, progress=None,
          keep_rendered: bool = False, errors: str = "raise") -> tuple[AuditReport, list[RenderedExample]]:
    """Render every example and summarise. progress(done, total) is called after each chunk.
    errors="finding" keeps going past examples the template cannot render (see render_examples)."""
    rep = AuditReport(max_length=cfg.max_length)
    kept: list[RenderedExample] = []
    total = len(examples)
    for start in range(0, total, CHUNK):
        for r in render_examples(examples[start:start + CHUNK], tokenizer, cfg, errors=errors):
            add(rep, r)
            if keep_rendered:
                kept.append(r)
        if progress:
            progress(min(start + CHUNK, total), total)
    return rep, kept


def add(rep: AuditReport, r: RenderedExample) -> None:
    n, t = r.n_tokens, r.n_trained
    rep.examples += 1
    rep.tokens += n
    rep.trained_tokens += t
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
