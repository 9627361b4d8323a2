"""Small helpers several test files share."""

from __future__ import annotations

from core.masking.labels import IGNORE


def trained_text(tok, ids, labels) -> list[str]:
    """The decoded runs of consecutive trained tokens. Example: [-100, 5, 6, -100, 7] -> [decode([5, 6]), decode([7])]."""
    runs, cur = [], []
    for i, lab in zip(ids, labels):
        if lab != IGNORE:
            cur.append(i)
        elif cur:
            runs.append(tok.decode(cur))
            cur = []
    if cur:
        runs.append(tok.decode(cur))
    return runs


def trained_runs(tok, r) -> list[str]:
    """trained_text of a RenderedExample; every trained label must be its own token id."""
    assert all(lab in (IGNORE, i) for i, lab in zip(r.input_ids, r.labels))
    return trained_text(tok, r.input_ids, r.labels)
