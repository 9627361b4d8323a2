"""Stage 3 — decide: the strategy's verdict on an example, as data for the label stage.

`decide` picks where labels come from (a LabelSource) and, for the per-part strategies, asks the registered strategy
(core.masking.strategies) about every message part: the trained character spans, the ones trained with a weight
below 1, and — on TRL's {% generation %} path — what the options take out of TRL's own mask. No tokens here.

Example: decide(ex, rendering, layout, cfg, spec).source -> LabelSource.SPANS; .trained -> [(52, 61), (70, 83)]
"""

from __future__ import annotations

from dataclasses import dataclass

from ..data.formats import KIND_PC_CONV, KIND_PC_TEXT, KIND_TOKENS, Example
from ..findings import Finding
from .labels import IGNORE, LabelSource
from .layout import Layout
from .rendering import Rendering
from .spans import MessageSpan
from ..data.example import message_weight
from .strategies import Decider, StrategyContext, StrategyKind, StrategySpec


_NOT_APPLICABLE = Decider(lambda idx, part: (False, "not trained: the strategy does not apply to this row"))


@dataclass(frozen=True, slots=True)
class Decision:
    source: LabelSource
    decider: Decider = _NOT_APPLICABLE  # per part: (trained, rule[, weight]); the token view explains with it
    trained: tuple[tuple[int, int], ...] = ()  # SPANS: trained character spans, merged, in order
    weighted: tuple[tuple[int, int, float], ...] = ()  # trained spans whose weight is below 1
    masks: tuple[tuple[int, int], ...] = ()  # GENERATION: ranges the options take out of TRL's mask ...
    keep: tuple[tuple[int, int], ...] = ()  # ... and the ranges that stay trained (trained wins on a shared token)
    findings: tuple[Finding, ...] = ()


def decide(ex: Example, rendering: Rendering, layout: Layout, cfg, spec: StrategySpec) -> Decision:
    """Stage 3 for one example."""
    if ex.kind == KIND_TOKENS:
        return _pretokenized(ex, spec, cfg.strategy)
    if layout.spans is None:
        return _string_row(ex, spec, cfg.strategy)
    return _conversation(ex, rendering, layout.spans, cfg, spec)


def _pretokenized(ex: Example, spec: StrategySpec, name: str) -> Decision:
    if ex.labels is not None:
        findings = [Finding("labels_from_data", "labels come from the data row")]
        shifted = labels_look_shifted(ex.input_ids, ex.labels)
        if shifted:
            findings.append(Finding("labels_shifted", shifted))
        return Decision(LabelSource.GIVEN, findings=tuple(findings))
    source = _TOKEN_LEVEL.get(spec.kind)
    if source is not None:
        return Decision(source, _FULL if source is LabelSource.ALL else _BY_COLLATOR)
    if spec.kind is StrategyKind.COMPLETION:
        return _completion_trains_all(ex)
    return Decision(LabelSource.NONE, findings=(Finding(
        "strategy_not_applicable", f"{name} needs messages; this row is pre-tokenized (input_ids only)"),))


_TOKEN_LEVEL = {StrategyKind.FULL: LabelSource.ALL, StrategyKind.OLD_COLLATOR: LabelSource.OLD_COLLATOR,
                StrategyKind.USER_COLLATOR: LabelSource.USER_COLLATOR}
_FULL = Decider(lambda idx, part: (True, "trained: full trains every token"))
_BY_COLLATOR = Decider(lambda idx, part: (False, "decided per token by the collator"))


_NO_COMPLETION_MASK = Decider(lambda idx, part: (
    True, "trained: no completion mask on this row, so TRL's completion_only_loss trains every token"))


def _completion_trains_all(ex: Example) -> Decision:
    """completion_only on a row without a prompt/completion split (messages, text): TRL 1.16 finds no completion_mask
    column and builds labels = input_ids (every token trains, silently); shown as it trains, with an error."""
    return Decision(LabelSource.ALL, _NO_COMPLETION_MASK, findings=(Finding(
        "completion_only_trains_all", f"completion_only on a {ex.kind} row: TRL has no completion mask here and "
        "trains every token, prompt included; use assistant_only or last_assistant (messages) or prompt/completion "
        "rows"),))


def _string_row(ex: Example, spec: StrategySpec, name: str) -> Decision:
    """Text and prompt/completion strings: no messages, so the strategy's kind decides."""
    source = _TOKEN_LEVEL.get(spec.kind)
    if source is not None:
        return Decision(source, _FULL if source is LabelSource.ALL else _BY_COLLATOR)
    if spec.kind is StrategyKind.COMPLETION and ex.kind == KIND_PC_TEXT:
        return Decision(LabelSource.COMPLETION, Decider(
            lambda idx, part: (part != "prompt", "not trained: prompt" if part == "prompt"
                               else f"trained: {part} (completion_only)")))
    if spec.kind is StrategyKind.COMPLETION:
        return _completion_trains_all(ex)
    return Decision(LabelSource.NONE, Decider(lambda idx, part: (False, f"not trained: {name} does not apply")),
                    findings=(Finding("strategy_not_applicable",
                                      f"{name} needs conversational data (messages); this row is {ex.kind}"),))


def _conversation(ex: Example, rendering: Rendering, spans: list[MessageSpan], cfg, spec: StrategySpec) -> Decision:
    msgs = ex.messages
    ctx = StrategyContext(messages=msgs, cfg=cfg, n_prompt=len(ex.prompt) if ex.kind == KIND_PC_CONV else 0)
    if ex.turn is not None or spec.kind is StrategyKind.COMPLETION:
        if ex.kind != KIND_PC_CONV:
            return _completion_trains_all(ex)
        from .strategies import get_strategy  # noqa: PLC0415  (the registered completion_only decider)

        return Decision(LabelSource.COMPLETION, get_strategy("completion_only").fn(ctx))
    if spec.kind in (StrategyKind.OLD_COLLATOR, StrategyKind.USER_COLLATOR):
        rule = ("decided per token by the old collator" if spec.kind is StrategyKind.OLD_COLLATOR
                else f"decided per token by the collator ({cfg.strategy})")
        return Decision(_TOKEN_LEVEL[spec.kind], Decider(lambda idx, part: (False, rule)))
    decider = spec.fn(ctx)
    findings = tuple(_flagged_off(msgs, spans, decider, cfg.train_roles))
    if spec.kind is StrategyKind.FULL:
        return Decision(LabelSource.ALL, decider, findings=findings)
    trained, weighted = part_spans(spans, decider)
    if rendering.generation is not None:
        masks, keep = option_masks(spans, decider, rendering.generation)
        return Decision(LabelSource.GENERATION, decider, weighted=weighted, masks=tuple(masks), keep=tuple(keep),
                        findings=findings)
    return Decision(LabelSource.SPANS, decider, trained=trained, weighted=weighted, findings=findings)


def _flagged_off(msgs, spans, decider: Decider, roles) -> list[Finding]:
    return [Finding("message_not_trained", f"message {sp.index} is flagged off", location={"message": sp.index})
            for sp in spans if msgs[sp.index].get("role") in roles and sp.index not in decider.trainable
            and message_weight(msgs[sp.index]) == 0]


def part_spans(spans: list[MessageSpan], decider: Decider) -> tuple[tuple, tuple]:
    """(trained character spans merged where they touch, the trained ones whose weight is below 1), one question per
    part. Example: -> (((52, 61), (70, 83)), ((70, 83, 0.5),))"""
    trained: list[tuple[int, int]] = []
    weighted: list[tuple[int, int, float]] = []
    decide = decider.decide
    for sp in spans:
        idx = sp.index
        for part, a, b in sp.parts:
            v = decide(idx, part)
            if not v[0]:
                continue
            if trained and trained[-1][1] >= a:
                trained[-1] = (trained[-1][0], max(b, trained[-1][1]))
            else:
                trained.append((a, b))
            if len(v) > 2 and v[2] < 1:
                weighted.append((a, b, float(v[2])))
    return tuple(trained), tuple(weighted)


def option_masks(spans: list[MessageSpan], decider: Decider, gen) -> tuple[list, list]:
    """On the generation-marker path: the ranges options take out of TRL's mask, and the ranges that stay trained.

    With default options nothing is taken out (labels are exactly TRL's). Header decisions never take anything out:
    TRL's families differ on whether the role header is trained (gpt-oss trains <|start|>assistant) and its choice
    stands. Text a generation block covers past its message's end (Qwen3's twin: the newline after <|im_end|>) goes
    with the message's end-of-turn: masked with it, or with the whole message.
    """
    masks, keep = [], []
    for sp in spans:
        if sp.role != "assistant" or not sp.found:
            continue
        end = max([sp.end] + [e for s, e in gen if sp.header_start <= s < sp.end])
        if sp.index not in decider.trainable:  # flagged off, or not the last turn for last_assistant
            masks.append((sp.header_start, end))
            continue
        for part, a, b in sp.parts:
            if part == "header":
                continue
            if part == "eot" and b == sp.end:
                b = end
            (keep if decider(sp.index, part)[0] else masks).append((a, b))
    return masks, keep


def labels_look_shifted(ids: list[int], labels: list[int]) -> str:
    """Labels already shifted by hand (labels[i] == input_ids[i+1] on most trained positions): say so, else ''."""
    trained = [i for i, lab in enumerate(labels[:-1]) if lab != IGNORE]
    if len(trained) < 2:
        return ""
    same = sum(labels[i] == ids[i] for i in trained)
    nxt = sum(labels[i] == ids[i + 1] for i in trained)
    if nxt > len(trained) * 0.8 and nxt > same:
        return (f"on {nxt} of {len(trained)} trained positions the label is the NEXT token; Hugging Face models "
                "shift labels themselves, so these rows would train each position on the token two ahead")
    return ""
