"""Stage 5 — findings read off the finished labels: turns whose end-of-turn never trains, template-inserted think
blocks that train, tool calls that do not, a doubled BOS, no trained token at all. Explanations and fixes of every
finding code live in core.findings.

Example: diagnose(ex, layout, decision, labels, enc, ctx) -> [Finding("eos_not_trained", "2 end-of-turn/EOS ...")]
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import compress, count

from ..data.formats import KIND_MESSAGES, KIND_PC_CONV, Example
from ..findings import Finding
from .decide import Decision
from .labels import IGNORE, LabelSource, Labels, token_range
from .layout import Layout


@dataclass(frozen=True)
class DiagnoseContext:
    bos_id: int | None
    marker_ids: frozenset  # ids that end a turn: EOS and the template's end-of-turn tokens (core.masking.vocab)
    max_length: int | None


def diagnose(ex: Example, text: str, layout: Layout, decision: Decision, labels: Labels, enc,
             ctx: DiagnoseContext, earlier: list[Finding]) -> list[Finding]:
    """Stage 5 for one example: the findings after the earlier stages' (`earlier`), in a stable order."""
    out: list[Finding] = []
    if layout.spans is not None and decision.source not in (LabelSource.OLD_COLLATOR, LabelSource.USER_COLLATOR):
        out += part_findings(ex.messages, text, layout, decision, labels.untruncated, enc)
    # the untruncated sequence's first two tokens: the kept ones where truncation left them (no .ids list built)
    ids = labels.input_ids if labels.cut_start == 0 and len(labels.input_ids) > 1 else (
        enc.ids if enc is not None else ex.input_ids)
    if ctx.bos_id is not None and len(ids) > 1 and ids[0] == ctx.bos_id and ids[1] == ctx.bos_id:
        out.append(Finding("bos_doubled", "the sequence starts with two BOS tokens", location={"token": 1}))
    out += labels.truncation
    if labels.labels.count(IGNORE) == len(labels.labels):
        why = " (TRL 1.16 drops it after truncation)" if ctx.max_length else ""
        out.append(Finding("no_trained_tokens", f"0 of {len(labels.labels)} tokens are trained{why}"))
    return out + eos_findings(ex, layout, labels, earlier + out, ctx)


def eos_findings(ex: Example, layout: Layout, labels: Labels, earlier: list[Finding], ctx: DiagnoseContext) -> list:
    """eos_not_trained: the marker that ends the trained text (end-of-turn or EOS) follows it but is never trained."""
    if any(f.code in ("eos_not_trained", "no_trained_tokens", "strategy_not_applicable") for f in earlier):
        return []
    ids, lab = labels.input_ids, labels.labels
    first = next(compress(count(), map(IGNORE.__ne__, lab)), None)  # C iterators: headers can be long
    if first is None:
        return []
    occ = sorted(i for m in ctx.marker_ids for i in _positions(ids, m, first))
    if occ and all(lab[i] == IGNORE for i in occ):
        return [Finding("eos_not_trained", f"{len(occ)} end-of-turn/EOS token(s) follow trained tokens and none is "
                                           "trained", location={"token": occ[-1]})]
    if not occ and layout.info is not None and not layout.info.eot and ex.kind in (KIND_MESSAGES, KIND_PC_CONV):
        return [Finding("eos_not_trained", "the chat template has no end-of-turn marker after assistant turns, so "
                                           "nothing teaches the model to stop")]
    return []


def part_findings(msgs, text: str, layout: Layout, decision: Decision, labels: list[int], enc) -> list[Finding]:
    """empty_think_trained / tool_call_not_trained: read off the labels, per assistant message."""
    info = layout.info
    empty = "".join((info.think_open + info.think_close).split()) if info and info.think_open else ""
    empty_trained, calls_untrained = [], []

    def trained(a, b):
        r = token_range(enc, a, b)
        return bool(r) and any(labels[i] != IGNORE for i in range(*r))

    for sp in layout.spans:
        if sp.role != "assistant" or not sp.found or sp.index not in decision.decider.trainable:
            continue
        if sp.scaffold and empty and "".join(text[sp.scaffold[0]:sp.scaffold[1]].split()) == empty \
                and trained(*sp.scaffold):
            empty_trained.append(sp.index)
        if msgs[sp.index].get("tool_calls") and not (sp.tool_calls and trained(*sp.tool_calls)):
            calls_untrained.append(sp.index)
    out = []
    if empty_trained:
        out.append(Finding("empty_think_trained", f"assistant message(s) {', '.join(map(str, empty_trained))}: the "
                           "empty think block the template inserts is trained", location={"messages": empty_trained}))
    if calls_untrained:
        out.append(Finding("tool_call_not_trained", f"assistant message(s) {', '.join(map(str, calls_untrained))} have "
                           "tool calls that are not rendered or not trained", location={"messages": calls_untrained}))
    return out


def _positions(seq: list[int], value: int, start: int) -> list[int]:
    """Every index of value in seq from start on (list.index runs in C)."""
    out = []
    try:
        while True:
            start = seq.index(value, start)
            out.append(start)
            start += 1
    except ValueError:
        return out
