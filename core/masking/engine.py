"""The masking engine: every example rendered into ``input_ids`` + ``labels`` under a strategy, as TRL 1.16 does it.

Pipeline (fast path for whole datasets): plan every example (render the chat template, locate message parts) ->
one batch tokenization with offsets (core.encoding: pieces that repeat are tokenized once) -> labels per example (core.labels, the one place they are built) + findings.
Per-token details for the token view (:meth:`RenderedExample.tokens`) are computed only when asked for.

Where things live: which template renders (core.trl_templates: TRL's own training-twin swap), message parts
(core.spans), strategies (core.strategies registry), options (core.config.MaskConfig), labels (core.labels),
result types (core.rendered).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from itertools import compress, count

from .options import EOS_MODES, STRATEGIES, TRUNCATION_MODES, MaskConfig, Strategy  # noqa: F401  (public names)
from ..data.formats import KIND_MESSAGES, KIND_PC_CONV, KIND_PC_TEXT, KIND_TEXT, KIND_TOKENS, Example
from ..errors import MaskLensError
from ..findings import Finding
from .labels import (IGNORE, labels_from_char_spans, labels_from_generation, string_ranges, token_range,
                     unlabel_char_ranges)
from .rendered import RenderedExample, Segment, TokenInfo  # noqa: F401  (public names)
from .spans import MessageSpan, TemplateInfo, reasoning_of
from .strategies import Decider, StrategyContext, get_strategy
from .encoding import encode_batch, encode_texts  # noqa: F401  (encode_batch: re-exported)
from .templates import analyze_template, get_template, locate_messages, prerender, prerendered, render, special_regex
from .trl_templates import SOURCE_CANNOT_PATCH, SOURCE_TRL_TWIN, TrainingTemplate, training_template


# ------------------------------------------------------------------------------------------------- tokenization
def common_prefix_length(a: list[int], b: list[int]) -> int:
    """Leading tokens two sequences share (TRL 1.16's completion start). Example: [1,2,3],[1,2,4] -> 2."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


# --------------------------------------------------------------------------------------------------- the plan
@dataclass
class _Plan:
    """What phase 1 (rendering) hands to phase 3 (labels) for one example."""

    ex: Example
    text: str = ""
    add_special: bool = False
    segments: list[Segment] = field(default_factory=list)
    gen: list[tuple[int, int]] | None = None  # generation spans (exact TRL path)
    prompt_text: str | None = None  # completion_only: the prompt rendered alone
    prompt_add_special: bool = False
    spans: list[MessageSpan] | None = None
    info: TemplateInfo | None = None
    findings: list[Finding] = field(default_factory=list)
    token_level: str | None = None  # "completion" | "response_template" | "given" | "not_applicable" | "full"
    decide: Decider | None = None  # conversational: decide(message_index, part) -> (trained, rule)
    enc: object = None
    prompt_enc: object = None
    template_label: str = ""
    swapped: bool = False
    inference_text: str | None = None


def _message_segments(text: str, spans: list[MessageSpan], decide) -> list[Segment]:
    """Cut the rendered text into segments; decide(message_index, part) -> (trained, rule)."""
    cuts = [(a, b, sp.index, sp.role, part) for sp in spans for part, a, b in sp.parts]
    cuts.sort(key=lambda c: c[0])
    segs: list[Segment] = []
    pos = 0
    for s, e, idx, role, part in cuts:
        s = max(s, pos)
        if e <= s:
            continue
        if s > pos:
            tr, rule = decide(None, "template")
            segs.append(Segment(pos, s, None, None, "template", tr, rule))
        tr, rule = decide(idx, part)
        segs.append(Segment(s, e, idx, role, part, tr, rule))
        pos = e
    if pos < len(text):
        tr, rule = decide(None, "template")
        segs.append(Segment(pos, len(text), None, None, "template", tr, rule))
    return segs


def _trained_spans(spans: list[MessageSpan], decide) -> list[tuple[int, int]]:
    """Character spans a parts strategy trains, straight from the message parts (no segment objects)."""
    out: list[tuple[int, int]] = []
    for sp in spans:
        for part, a, b in sp.parts:
            if decide(sp.index, part)[0]:
                if out and out[-1][1] >= a:
                    out[-1] = (out[-1][0], max(b, out[-1][1]))
                else:
                    out.append((a, b))
    return out


def _option_masks(spans: list[MessageSpan], decide: Decider, gen: list[tuple[int, int]] = ()) -> tuple[list, list]:
    """On the generation-marker path: the ranges options take out of TRL's mask, and the ranges that stay trained.

    With default options nothing is taken out (labels are exactly TRL's). Header decisions never take anything out:
    TRL's families differ on whether the role header is trained (gpt-oss trains <|start|>assistant) and its choice stands.
    Text a generation block covers past its message's end (Qwen3's twin: the newline after <|im_end|>) goes with the
    message's end-of-turn: masked with it, or with the whole message.
    """
    masks, keep = [], []
    for sp in spans:
        if sp.role != "assistant" or not sp.found:
            continue
        end = max([sp.end] + [e for s, e in gen if sp.header_start <= s < sp.end])
        if sp.index not in decide.trainable:  # flagged off, or not the last turn for last_assistant
            masks.append((sp.header_start, end))
            continue
        for part, a, b in sp.parts:
            if part == "header":
                continue
            if part == "eot" and b == sp.end:
                b = end
            (keep if decide(sp.index, part)[0] else masks).append((a, b))
    return masks, keep


def _gen_rule(decide: Decider, masked_spans: list[MessageSpan]):
    def rule_for(seg: Segment, inside: bool) -> tuple[bool, str]:
        if inside and seg.message is not None and seg.role == "assistant":
            if seg.message not in decide.trainable or (seg.part != "header" and not decide(seg.message, seg.part)[0]):
                return decide(seg.message, seg.part)
        return inside, ("trained: inside {% generation %}" if inside else "not trained: outside {% generation %}")
    return rule_for


def _relabel_for_generation(segments: list[Segment], gen: list[tuple[int, int]], rule_for,
                            spans: list[MessageSpan] = ()) -> list[Segment]:
    """Split segments at generation boundaries so the token view shows the template's own decision.

    Text a generation block covers past its message's end (Qwen3's twin: the newline after <|im_end|>) is shown as that
    message's end-of-turn, not as the next message's header.
    """
    owners = []
    for s, e in gen:
        own = next((sp for sp in spans if sp.found and sp.role == "assistant" and sp.header_start <= s < sp.end), None)
        owners.append((s, e, own))
    cuts = sorted({p for s, e in gen for p in (s, e)})
    out = []
    for seg in segments:
        pts = [seg.start] + [c for c in cuts if seg.start < c < seg.end] + [seg.end]
        for a, b in zip(pts, pts[1:]):
            owner = next((o for s, e, o in owners if s <= a and b <= e), False)
            inside = owner is not False
            piece = Segment(a, b, seg.message, seg.role, seg.part, inside, "")
            if owner and seg.message != owner.index and a >= owner.end:
                piece = Segment(a, b, owner.index, owner.role, "eot", inside, "")
            tr, rule = rule_for(piece, inside)
            out.append(piece._replace(trained=tr, rule=rule))
    return out


# ------------------------------------------------------------------------------------------------- phase 1
def _plan(ex: Example, tokenizer, cfg: MaskConfig, template: str | None, eos_token: str, batch: dict) -> _Plan:
    plan = _Plan(ex=ex, findings=list(ex.notes))
    spec = get_strategy(cfg.strategy)
    strat = cfg.strategy
    if ex.kind == KIND_TOKENS:
        if ex.labels is not None:
            plan.token_level = "given"
            plan.findings.append(Finding("labels_from_data", "labels come from the data row"))
            shifted = _labels_look_shifted(ex.input_ids, ex.labels)
            if shifted:
                plan.findings.append(Finding("labels_shifted", shifted))
        elif spec.kind in ("full", "collator", "collator_fn"):
            plan.token_level = {"full": "full", "collator": "response_template", "collator_fn": "user_collator"}[spec.kind]
        else:
            plan.token_level = "not_applicable"
            plan.findings.append(Finding("strategy_not_applicable",
                                         f"{strat} needs messages; this row is pre-tokenized (input_ids only)"))
        return plan

    if ex.kind in (KIND_TEXT, KIND_PC_TEXT):
        # TRL 1.16 appends EOS to non-conversational data (to the text, or to the completion) unless present,
        # and tokenizes with the tokenizer's own special tokens (BOS for Llama-family tokenizers).
        plan.add_special = True
        if ex.kind == KIND_TEXT:
            body = ex.text
            eos_add = "" if body.endswith(eos_token) else eos_token
            plan.text = body + eos_add
            parts = [(0, len(body), "text"), (len(body), len(plan.text), "eos")]
        else:
            comp = ex.completion
            eos_add = "" if comp.endswith(eos_token) else eos_token
            plan.text = ex.prompt + comp + eos_add
            plan.prompt_text = ex.prompt
            plan.prompt_add_special = True
            lp, lc = len(ex.prompt), len(ex.prompt) + len(comp)
            parts = [(0, lp, "prompt"), (lp, lc, "completion"), (lc, len(plan.text), "eos")]
        if spec.kind in ("full", "collator", "collator_fn"):
            full = spec.kind == "full"
            rule = "trained: full trains every token" if full else "decided per token by the collator"
            plan.segments = [Segment(s, e, None, None, p, full, rule) for s, e, p in parts if e > s]
            plan.token_level = None if full else ("response_template" if spec.kind == "collator" else "user_collator")
        elif spec.kind == "completion" and ex.kind == KIND_PC_TEXT:
            plan.segments = [Segment(s, e, None, None, p, p != "prompt",
                                     "not trained: prompt" if p == "prompt" else f"trained: {p} (completion_only)")
                             for s, e, p in parts if e > s]
            plan.token_level = "completion"
        else:
            plan.segments = [Segment(s, e, None, None, p, False, f"not trained: {strat} does not apply")
                             for s, e, p in parts if e > s]
            plan.token_level = "not_applicable"
            need = "prompt/completion data" if spec.kind == "completion" else "conversational data (messages)"
            plan.findings.append(Finding("strategy_not_applicable", f"{strat} needs {need}; this row is {ex.kind}"))
        return plan

    # conversational: messages, or prompt+completion message lists
    assert template is not None
    msgs = ex.messages
    tpl_kwargs = ex.chat_template_kwargs
    special_map = batch["special_map"]
    split = ex.turn is not None  # split_turns: a prompt (history as at inference) + one assistant turn
    tt, use_gen, render_tpl = _render_choice(ex, cfg, spec, batch["tt"], template)
    plan.text, gen = render(tokenizer, msgs, render_tpl, tools=ex.tools, return_generation=use_gen,
                            special_map=special_map, **tpl_kwargs)
    if use_gen:
        plan.gen = gen
    info = batch["info"](render_tpl)
    plan.info = info
    spans = locate_messages(plan.text, msgs, info, eos_token)
    plan.spans = spans
    plan.template_label = tt.label if tt is not None and (use_gen or tt.source == SOURCE_CANNOT_PATCH) else (
        "the chat template given (as TRL renders it)" if cfg.chat_template else "the tokenizer's chat template")
    if tt is not None and tt.source == SOURCE_CANNOT_PATCH:
        plan.findings.append(Finding("trl_cannot_patch", f"TRL would raise: {tt.trl_error} MaskLens masks with its "
                                                         "own span finding instead (template_source=own)."))
    if use_gen and tt.source == SOURCE_TRL_TWIN:
        plan.swapped = True
        try:
            plain, _ = render(tokenizer, msgs, template, tools=ex.tools, special_map=special_map, **tpl_kwargs)
        except MaskLensError as e:  # the row trains (TRL renders it with the twin); only inference fails on it
            plain = None
            plan.findings.append(Finding("template_swapped", f"TRL swaps in its {tt.name or 'training'} training "
                                         "template, which renders this row; the tokenizer's own (inference) "
                                         f"template fails on it: {e}", severity="warning"))
        if plain is not None and plain != plan.text:
            plan.inference_text = plain
            plan.findings.append(Finding("template_swapped", _swap_difference(plain, plan.text, msgs, spans,
                                                                              batch["info"](template), eos_token, tt)))
    _rendering_findings(plan, msgs, spans)

    ctx = StrategyContext(messages=msgs, cfg=cfg, n_prompt=len(ex.prompt) if ex.kind == KIND_PC_CONV else 0)
    if split or spec.kind == "completion":
        if ex.kind != KIND_PC_CONV:
            plan.token_level = "not_applicable"
            plan.findings.append(Finding("strategy_not_applicable",
                                         "completion_only needs prompt/completion rows; use assistant_only or "
                                         "last_assistant for messages"))
            plan.decide = Decider(lambda idx, part: (False, "not trained: completion_only does not apply to messages rows"))
        else:
            plan.prompt_text, _ = render(tokenizer, ex.prompt, template, tools=ex.tools, add_generation_prompt=True,
                                         special_map=special_map, **tpl_kwargs)
            plan.token_level = "completion"
            plan.decide = get_strategy("completion_only").fn(ctx)
    elif spec.kind == "collator":
        plan.token_level = "response_template"
        plan.decide = spec.fn(ctx)
    elif spec.kind == "collator_fn":
        plan.token_level = "user_collator"
        plan.decide = Decider(lambda idx, part: (False, f"decided per token by the collator ({strat})"))
    else:
        plan.decide = spec.fn(ctx)
        if spec.kind == "full":
            plan.token_level = "full"
        for sp in spans:
            m = msgs[sp.index]
            if m.get("role") in cfg.train_roles and sp.index not in plan.decide.trainable and (
                    m.get("weight") in (0, 0.0, False) or m.get("train") is False):
                plan.findings.append(Finding("message_not_trained", f"message {sp.index} is flagged off",
                                             location={"message": sp.index}))
    return plan


def _render_choice(ex: Example, cfg: MaskConfig, spec, tt: TrainingTemplate | None, template: str):
    """(training template or None, whether TRL's {% generation %} labels are used, the template rendered)."""
    tt = tt if spec.trl_generation and ex.turn is None else None
    use_gen = (tt is not None and tt.uses_markers and cfg.use_generation_markers
               and tuple(cfg.train_roles) == ("assistant",))
    return tt, use_gen, (tt.template if use_gen else template)


def _render_jobs(examples: list[Example], cfg: MaskConfig, spec, tt, template: str) -> list[tuple]:
    """Every rendering _plan will ask for, as core.templates.prerender jobs (rendered in one bounded batch)."""
    jobs = []
    for ex in examples:
        if ex.kind not in (KIND_MESSAGES, KIND_PC_CONV):
            continue
        t, use_gen, tpl = _render_choice(ex, cfg, spec, tt, template)
        kw = ex.chat_template_kwargs
        jobs.append((ex.messages, tpl, ex.tools, False, use_gen, kw))
        if use_gen and t.source == SOURCE_TRL_TWIN:
            jobs.append((ex.messages, template, ex.tools, False, False, kw))
        if (ex.turn is not None or spec.kind == "completion") and ex.kind == KIND_PC_CONV:
            jobs.append((ex.prompt, template, ex.tools, True, False, kw))
    return jobs


def _rendering_findings(plan: _Plan, msgs: list[dict], spans: list[MessageSpan]) -> None:
    dropped = []
    for sp in spans:
        m = msgs[sp.index]
        if not sp.found and (reasoning_of(m)[1] if m.get("role") == "assistant" else (m.get("content") or "")):
            plan.findings.append(Finding("content_not_rendered",
                                         f"message {sp.index} ({sp.role}): its content does not appear in the rendered text",
                                         location={"message": sp.index}))
        if sp.has_reasoning and sp.reasoning is None:
            dropped.append(sp.index)
    if dropped:
        plan.findings.append(Finding("reasoning_not_rendered",
                                     f"message(s) {', '.join(map(str, dropped))} carry reasoning the template does not "
                                     "render, so it is neither shown to nor trained into the model",
                                     location={"messages": dropped}))


def _swap_difference(plain: str, twin: str, msgs, twin_spans: list[MessageSpan], plain_info, eos_token, tt) -> str:
    """How TRL's training twin renders this row differently from the tokenizer's own template, in words."""
    plain_spans = locate_messages(plain, msgs, plain_info, eos_token)
    kept = [t.index for t, p in zip(twin_spans, plain_spans) if t.reasoning is not None and p.reasoning is None]
    name = tt.name or "training"
    if kept:
        return (f"TRL swaps in its {name} training template: assistant message(s) {', '.join(map(str, kept))} keep "
                "their reasoning in training but lose it at inference (the tokenizer's own template drops it)")
    scaf = [t.index for t, p in zip(twin_spans, plain_spans) if t.scaffold is not None and p.scaffold is None]
    if scaf:
        return (f"TRL swaps in its {name} training template: assistant message(s) {', '.join(map(str, scaf))} get "
                "template text (e.g. an empty think block) the inference template does not render there")
    return (f"TRL swaps in its {name} training template, which renders this row differently from the tokenizer's own "
            f"template ({len(twin)} characters in training, {len(plain)} at inference)")


def _labels_look_shifted(ids: list[int], labels: list[int]) -> str:
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


# ------------------------------------------------------------------------------------------------- phase 3
def _finish(plan: _Plan, tokenizer, cfg: MaskConfig, ctx: dict) -> RenderedExample:
    ex = plan.ex
    findings = plan.findings
    token_rules: dict[int, str] = {}
    enc = None
    builder = None
    if ex.kind == KIND_TOKENS:
        ids = list(ex.input_ids)
        text = ""
        if plan.token_level == "given":
            labels = list(ex.labels)
            seg = Segment(0, 0, None, None, "tokens", False, "labels given in the data")
        elif plan.token_level == "full":
            labels = list(ids)
            seg = Segment(0, 0, None, None, "tokens", True, "trained: full trains every token")
        else:
            labels = [IGNORE] * len(ids)
            seg = Segment(0, 0, None, None, "tokens", False, f"not trained: {cfg.strategy} needs messages")
        builder = lambda: [seg]  # noqa: E731
        if cfg.mask_tokens and plan.token_level != "given":
            masked = ctx["mask_token_ids"]
            for i, t in enumerate(ids):
                if t in masked and labels[i] != IGNORE:
                    labels[i] = IGNORE
                    token_rules[i] = "not trained: mask_tokens"
    else:
        enc = plan.enc
        ids = enc.ids
        text = plan.text
        spans, decide = plan.spans, plan.decide
        if spans is not None:  # conversational: segments built only if someone looks
            if plan.gen is not None:
                gen, rule_for = plan.gen, _gen_rule(decide, spans)
                builder = lambda: _relabel_for_generation(_message_segments(text, spans, decide), gen, rule_for,  # noqa: E731
                                                          spans)
            else:
                builder = lambda: _message_segments(text, spans, decide)  # noqa: E731
        else:
            segs = plan.segments
            builder = lambda: segs  # noqa: E731
        if plan.gen is not None:
            labels = labels_from_generation(enc, ids, plan.gen)
            masks, keep = _option_masks(spans, decide, plan.gen)
            if masks:
                unlabel_char_ranges(enc, labels, masks, keep)
        elif plan.token_level in (None, "not_applicable", "full"):
            if plan.token_level == "full" or (spans is None and plan.token_level is None and
                                              all(s.trained for s in plan.segments)):
                labels = list(ids)
            elif spans is None:
                labels = labels_from_char_spans(enc, ids, _merge_trained(plan.segments))
            else:
                labels = labels_from_char_spans(enc, ids, _trained_spans(spans, decide))
        elif plan.token_level == "completion":
            prompt_ids = plan.prompt_enc.ids
            n = common_prefix_length(prompt_ids, ids)
            if n < len(prompt_ids):
                findings.append(Finding("prompt_not_prefix",
                                        f"the prompt's last {len(prompt_ids) - n} token(s) differ inside prompt+completion; "
                                        f"the completion starts at token {n}", location={"token": n}))
            labels = [IGNORE] * n + ids[n:]
            if n < len(ids):
                token_rules[n] = "trained: first completion token (where prompt and prompt+completion tokens diverge)"
        else:  # response_template / user_collator: decided per token below
            labels = [IGNORE] * len(ids)
        if cfg.mask_tokens and text:
            for s, e in string_ranges(text, cfg.mask_tokens):
                r = token_range(enc, s, e)
                if r:
                    for i in range(*r):
                        if labels[i] != IGNORE:
                            labels[i] = IGNORE
                            token_rules[i] = f"not trained: mask_tokens ({text[s:e]!r})"
        if spans is not None and plan.token_level != "response_template":
            _part_findings(plan, enc, labels, findings)
    if plan.token_level == "response_template":
        labels = _apply_response_template(ids, text, enc, tokenizer, cfg, findings, token_rules, ctx)
    elif plan.token_level == "user_collator":
        labels = ctx["collator_labels"][id(plan)]
        for i, lab in enumerate(labels):
            token_rules[i] = f"{'trained' if lab != IGNORE else 'not trained'}: the collator's label ({cfg.strategy})"

    bos = ctx["bos_id"]
    if bos is not None and len(ids) > 1 and ids[0] == bos and ids[1] == bos:
        findings.append(Finding("bos_doubled", "the sequence starts with two BOS tokens", location={"token": 1}))

    n_before = len(ids)
    n_trained_before = len(labels) - labels.count(IGNORE)
    cut_start = 0
    keep = None
    if cfg.max_length is not None and len(ids) > cfg.max_length:
        L = cfg.max_length
        if cfg.truncation == "keep_start":
            sl = slice(None, L)
        else:
            sl = slice(-L, None)
            cut_start = len(ids) - L
        ids, labels = ids[sl], labels[sl]
        keep = sl
        if cut_start:
            token_rules = {k - cut_start: v for k, v in token_rules.items() if k >= cut_start}
        else:
            token_rules = {k: v for k, v in token_rules.items() if k < L}
        lost = n_trained_before - (len(labels) - labels.count(IGNORE))
        if lost:
            findings.append(Finding("truncated_supervision",
                                    f"truncation ({cfg.truncation}, max_length={L}) removed {lost} of "
                                    f"{n_trained_before} trained tokens"))
    n_trained = len(labels) - labels.count(IGNORE)
    if n_trained == 0:
        why = " (TRL 1.16 drops it after truncation)" if cfg.max_length else ""
        findings.append(Finding("no_trained_tokens", f"0 of {len(ids)} tokens are trained{why}"))
    _check_eos(ids, labels, tokenizer, plan, findings, ctx)
    labels, weights = _prompt_weights(ids, labels, cfg.prompt_loss_weight)
    return RenderedExample(row=ex.row, kind=ex.kind, input_ids=ids, labels=labels, text=text, findings=findings,
                           weights=weights,
                           messages=ex.messages, token_rules=token_rules, n_before_truncation=n_before,
                           truncated_at_start=cut_start, strategy=cfg.strategy, turn=ex.turn,
                           template_label=plan.template_label, template_swapped=plan.swapped,
                           inference_text=plan.inference_text, _enc=enc, _keep=keep, _segment_builder=builder)


def _prompt_weights(ids: list[int], labels: list[int], w: float) -> tuple[list[int], list[float] | None]:
    """prompt_loss_weight: every token the strategy leaves untrained gets weight w (a label, weighted), the others 1.
    Example: ([5, 6], [-100, 6], 0.1) -> ([5, 6], [0.1, 1.0]); w == 0 changes nothing; w == 1 is `full`."""
    if w <= 0.0:
        return labels, None
    weights = [1.0 if lab != IGNORE else w for lab in labels]
    return list(ids), (None if w >= 1.0 else weights)


def _merge_trained(segs: list[Segment]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for s in segs:
        if not s.trained:
            continue
        if out and out[-1][1] == s.start:
            out[-1] = (out[-1][0], s.end)
        else:
            out.append((s.start, s.end))
    return out


def _part_findings(plan: _Plan, enc, labels: list[int], findings: list[Finding]) -> None:
    """empty_think_trained / tool_call_not_trained: read off the labels, per assistant message."""
    msgs, info = plan.ex.messages, plan.info
    empty = "".join((info.think_open + info.think_close).split()) if info and info.think_open else ""
    empty_trained, calls_untrained = [], []

    def trained(a, b):
        r = token_range(enc, a, b)
        return bool(r) and any(labels[i] != IGNORE for i in range(*r))

    for sp in plan.spans:
        if sp.role != "assistant" or not sp.found or sp.index not in plan.decide.trainable:
            continue
        if sp.scaffold and empty and "".join(plan.text[sp.scaffold[0]:sp.scaffold[1]].split()) == empty \
                and trained(*sp.scaffold):
            empty_trained.append(sp.index)
        if msgs[sp.index].get("tool_calls") and not (sp.tool_calls and trained(*sp.tool_calls)):
            calls_untrained.append(sp.index)
    if empty_trained:
        findings.append(Finding("empty_think_trained",
                                f"assistant message(s) {', '.join(map(str, empty_trained))}: the empty think block the "
                                "template inserts is trained", location={"messages": empty_trained}))
    if calls_untrained:
        findings.append(Finding("tool_call_not_trained",
                                f"assistant message(s) {', '.join(map(str, calls_untrained))} have tool calls that are "
                                "not rendered or not trained", location={"messages": calls_untrained}))


def _apply_response_template(ids, text, enc, tokenizer, cfg, findings, token_rules, ctx) -> list[int]:
    from .legacy_collator import legacy_completion_only_labels  # noqa: PLC0415

    resp_ids = ctx["response_ids"]
    instr_ids = ctx["instruction_ids"]
    pad_id = ctx["pad_id"]
    res = legacy_completion_only_labels(ids, list(resp_ids), list(instr_ids) if instr_ids else None,
                                        pad_token_id=pad_id)
    labels = list(res.labels)
    for i in range(len(ids)):
        if labels[i] != IGNORE:
            token_rules[i] = "trained: after the response template (old collator)"
    for a, b, reason in res.masked_spans:  # in the order the collator applied them: later reasons win
        for k in range(a, min(b, len(ids))):
            token_rules[k] = f"not trained: {reason} (old collator)"
    for p in res.pad_masked:
        token_rules[p] = "not trained: id equals the pad id (the old collator masks pad ids; pad == eos masks EOS)"
    if not res.response_found:
        findings.append(Finding("template_not_found",
                                f"response template ids {resp_ids} not found in the example; the old collator "
                                "masked all of it"))
    if instr_ids and not res.instruction_found:
        findings.append(Finding("template_not_found", f"instruction template ids {instr_ids} not found",
                                location={"template": "instruction"}))
    if res.pad_masked:
        assumed = ""
        if cfg.pad_token is None and tokenizer.pad_token_id is None:
            assumed = (f"; the tokenizer has no pad token, so its EOS {tokenizer.eos_token!r} is assumed (as TRL 0.19.1's "
                       "SFTTrainer set it) — pass --pad-token to name another")
        findings.append(Finding("pad_is_eos" if pad_id == tokenizer.eos_token_id else "eos_not_trained",
                                f"{len(res.pad_masked)} token(s) equal to the pad id ({pad_id}) were masked by the old "
                                f"collator{assumed}", severity="warning", location={"tokens": res.pad_masked[:20]}))
    for name, tmpl, t_ids, found in (("response", cfg.response_template, resp_ids, res.response_found),
                                     ("instruction", cfg.instruction_template, instr_ids, res.instruction_found)):
        if isinstance(tmpl, str) and tmpl and not found and enc is not None and tmpl in text:
            ctx_ids = _ids_in_context(text, enc.offsets, ids, tmpl)
            if ctx_ids and ctx_ids != t_ids:
                findings.append(Finding("template_ambiguous",
                                        f"{name} template {tmpl!r} is {t_ids} alone but {ctx_ids} in context; "
                                        f"pass --{name}-template-ids {','.join(map(str, ctx_ids))}",
                                        location={"template": name, "alone": t_ids, "in_context": ctx_ids}))
    return labels


def _ids_in_context(text, offsets, ids, tmpl) -> list[int]:
    p = text.find(tmpl)
    e = p + len(tmpl)
    toks = [i for i, (s, t) in enumerate(offsets) if s < e and t > p and t > s]
    # keep only tokens that lie inside the template text (a token merging text before it is not part of the match)
    inside = [i for i in toks if offsets[i][0] >= p and offsets[i][1] <= e]
    return [ids[i] for i in (inside or toks)]


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


def _first_trained(labels: list[int]) -> int | None:
    """Index of the first trained label, or None. (C iterators: the header before it may be thousands of tokens.)"""
    return next(compress(count(), map(IGNORE.__ne__, labels)), None)


def _check_eos(ids, labels, tokenizer, plan: _Plan, findings, ctx):
    """eos_not_trained: the marker that ends the trained text (end-of-turn or EOS) follows it but is never trained."""
    if any(f.code in ("eos_not_trained", "no_trained_tokens", "strategy_not_applicable") for f in findings):
        return
    marker_ids = ctx["marker_ids"]
    first = _first_trained(labels)
    if first is None:
        return
    occ = sorted(i for m in marker_ids for i in _positions(ids, m, first))
    if occ and all(labels[i] == IGNORE for i in occ):
        findings.append(Finding("eos_not_trained",
                                f"{len(occ)} end-of-turn/EOS token(s) follow trained tokens and none is trained",
                                location={"token": occ[-1]}))
    elif not occ and plan.info is not None and not plan.info.eot and plan.ex.kind in (KIND_MESSAGES, KIND_PC_CONV):
        findings.append(Finding("eos_not_trained", "the chat template has no end-of-turn marker after assistant turns, "
                                                   "so nothing teaches the model to stop"))


# ------------------------------------------------------------------------------------------------- public API
def _context(tokenizer, cfg: MaskConfig, info: TemplateInfo | None) -> dict:
    from .legacy_collator import encode_template  # noqa: PLC0415

    ctx: dict = {"bos_id": tokenizer.bos_token_id}
    if cfg.strategy == Strategy.RESPONSE_TEMPLATE:
        ctx["response_ids"] = encode_template(tokenizer, cfg.response_template)
        ctx["instruction_ids"] = encode_template(tokenizer, cfg.instruction_template) if cfg.instruction_template else None
        ctx["pad_id"] = pad_id_for(tokenizer, cfg.pad_token)
    markers = set()
    if tokenizer.eos_token_id is not None:
        markers.add(tokenizer.eos_token_id)
    if info is not None:
        rx = special_regex(tokenizer)
        for s in info.eot:  # a closing sequence (Cohere's <|END_RESPONSE|><|END_OF_TURN_TOKEN|>) counts each token
            for piece in (rx.findall(s) if rx is not None else []) or [s]:
                tid = tokenizer.convert_tokens_to_ids(piece)
                if isinstance(tid, int) and tid != tokenizer.unk_token_id:
                    markers.add(tid)
    ctx["marker_ids"] = markers
    ctx["mask_token_ids"] = {t for t in (tokenizer.convert_tokens_to_ids(s) for s in cfg.mask_tokens)
                             if isinstance(t, int) and t != tokenizer.unk_token_id}
    return ctx


def _run_collator(spec, tokenizer, plans: list[_Plan]) -> dict[int, list[int]]:
    """Call a user's collator (--collator FILE.py: make_collator(tokenizer)) on the batch, as a DataLoader would."""
    collate = _collators.get((spec.name, id(tokenizer)))
    if collate is None:
        collate = _collators[(spec.name, id(tokenizer))] = spec.fn(tokenizer)
    out: dict[int, list[int]] = {}
    for p in plans:  # one example per call: a collator pads a batch, and padding would change the sequence shown
        ids = list(p.ex.input_ids) if p.ex.kind == KIND_TOKENS else list(p.enc.ids)
        try:
            res = collate([{"input_ids": ids}])
            labels = res["labels"][0]
            labels = labels.tolist() if hasattr(labels, "tolist") else list(labels)
        except Exception as e:  # user code: any failure is reported with the row
            raise MaskLensError(f"the collator {spec.name!r} failed: {type(e).__name__}: {e}", row=p.ex.row,
                                fix="make_collator(tokenizer) must return a callable taking [{'input_ids': [...]}] "
                                    "and returning a dict with 'labels'") from None
        if len(labels) < len(ids):
            raise MaskLensError(f"the collator {spec.name!r} returned {len(labels)} labels for {len(ids)} tokens",
                                row=p.ex.row, fix="return one label per input token (-100 for ignored)")
        out[id(p)] = [int(x) for x in labels[: len(ids)]]
    return out


_collators: dict = {}


def vocab_id(tokenizer, token: str) -> int | None:
    """The id of a token string in the tokenizer's vocabulary (added tokens included), or None: a string that is not
    one token maps to the unk id (or None), which only the unk token itself may. Example: vocab_id(tok, "<|im_end|>")
    -> 2; vocab_id(tok, "notatoken_xyz") -> None."""
    tid = tokenizer.convert_tokens_to_ids(token)
    if not isinstance(tid, int) or (tid == tokenizer.unk_token_id and token != tokenizer.unk_token):
        return None
    return tid


def pad_id_for(tokenizer, pad_token: str | None = None) -> int | None:
    """The pad id the old collator masks: the one asked for, else the tokenizer's, else its EOS (TRL 0.19.1's
    SFTTrainer set pad = eos when the tokenizer had none, which masks every EOS)."""
    if pad_token:
        tid = vocab_id(tokenizer, pad_token)
        if tid is None:
            raise MaskLensError(f"pad token {pad_token!r} is not in the tokenizer's vocabulary", field="pad_token",
                                fix="name a token the tokenizer has (e.g. <|pad|>, or its unk token)")
        return tid
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


# ------------------------------------------------------------------------------------------------- public API
def split_turns(examples: list[Example], cfg: MaskConfig) -> list[Example]:
    """Each trained assistant turn of a messages row becomes a prompt (the history) + completion (that turn) example.

    Rendered like TRL's conversational prompt/completion data: the prompt with add_generation_prompt=True, exactly
    what the model sees at inference, so every trained token is one it would generate in that context.
    Example: [u, a1, u, a2] -> ([u] + [a1]), ([u, a1, u] + [a2]).
    """
    from ..data.formats import is_trained_flag_off  # noqa: PLC0415

    out = []
    for ex in examples:
        if ex.kind != KIND_MESSAGES:
            out.append(ex)
            continue
        msgs = ex.messages
        turns = [i for i, m in enumerate(msgs) if m.get("role") in cfg.train_roles and not is_trained_flag_off(m)
                 and i > 0]
        if not turns:
            out.append(ex)
            continue
        for i in turns:
            out.append(replace(ex, kind=KIND_PC_CONV, prompt=msgs[:i], completion=[msgs[i]], messages=msgs[:i + 1],
                               turn=i, notes=list(ex.notes)))
    return out


def render_examples(examples: list[Example], tokenizer, cfg: MaskConfig, errors: str = "raise") -> list[RenderedExample]:
    """Render many examples under one configuration (the fast path: one batch tokenization).

    errors="raise": a template that fails on an example raises MaskLensError naming its row (the CLI's contract);
    errors="finding": that example comes back empty with a render_failed finding and the others render (the app).
    With cfg.split_turns, a messages row gives one result per trained assistant turn (RenderedExample.turn).
    """
    assert errors in ("raise", "finding"), errors
    if cfg.split_turns:
        examples = split_turns(examples, cfg)
    needs_template = any(e.kind in (KIND_MESSAGES, KIND_PC_CONV) for e in examples)
    template = get_template(tokenizer, cfg.chat_template) if needs_template else (cfg.chat_template or None)
    if template is None:
        t = getattr(tokenizer, "chat_template", None)
        template = t if isinstance(t, str) else None
    eos_token = tokenizer.eos_token or ""
    spec = get_strategy(cfg.strategy)
    infos: dict[str, TemplateInfo] = {}

    def info_for(tpl: str) -> TemplateInfo:
        if tpl not in infos:
            infos[tpl] = analyze_template(tokenizer, tpl)
        return infos[tpl]

    tt = None
    if needs_template and spec.trl_generation:
        tt = training_template(tokenizer, template) if cfg.template_source == "trl" else TrainingTemplate(template, "own")
    batch = {"special_map": dict(tokenizer.special_tokens_map), "info": info_for, "tt": tt}
    plans = []
    failed: dict[int, RenderedExample] = {}
    # Untrusted templates render in the sandbox (core.templates): all of this call's renderings in one bounded batch.
    # A template past the sandbox's bounds on tiny probes fails the whole call at once.
    pre = prerender(tokenizer, _render_jobs(examples, cfg, spec, tt, template), special_map=batch["special_map"]) \
        if needs_template and template else {}
    with prerendered(pre):
        for k, ex in enumerate(examples):
            try:
                plans.append(_plan(ex, tokenizer, cfg, template, eos_token, batch))
            except MaskLensError as e:
                if errors == "raise":
                    raise MaskLensError(e.message, file=ex.source, row=ex.row, field=e.field, fix=e.fix) from None
                failed[k] = RenderedExample(row=ex.row, kind=ex.kind, input_ids=[], labels=[], messages=ex.messages,
                                            findings=[Finding("render_failed", str(e))], strategy=cfg.strategy,
                                            turn=ex.turn)
    for add_special in (False, True):
        group = [p for p in plans if p.ex.kind != KIND_TOKENS and p.add_special == add_special]
        for p, enc in zip(group, encode_texts(tokenizer, [p.text for p in group], add_special)):
            p.enc = enc
        pgroup = [p for p in plans if p.prompt_text is not None and p.prompt_add_special == add_special]
        for p, enc in zip(pgroup, encode_batch(tokenizer, [p.prompt_text for p in pgroup], add_special)):
            p.prompt_enc = enc
    info = info_for(template) if template and needs_template else (analyze_template(tokenizer, template) if template else None)
    ctx = _context(tokenizer, cfg, info)
    if spec.kind == "collator_fn":
        ctx["collator_labels"] = _run_collator(spec, tokenizer, plans)
    done = iter([_finish(p, tokenizer, cfg, ctx) for p in plans])
    return [failed[k] if k in failed else next(done) for k in range(len(examples))]


def render_example(example: Example, tokenizer, cfg: MaskConfig) -> RenderedExample:
    """Render one example. Example: render_example(ex, tok, MaskConfig("full")).labels == .input_ids."""
    return render_examples([example], tokenizer, cfg)[0]
