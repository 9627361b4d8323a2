"""The masking engine: every example rendered into ``input_ids`` + ``labels`` under a strategy, as TRL 1.16 does it.

Labels are unshifted and use -100 for ignored tokens (the Hugging Face convention: the model shifts them itself).
They are built in one place, :func:`_labels_from_char_spans`, from the character spans a strategy marks as trained.

Pipeline (fast path for whole datasets): render every example (jinja) -> one batch tokenization with offsets ->
per-example label building from a handful of character spans (no per-token Python work). Per-token details for the
token view (:meth:`RenderedExample.tokens`) are computed only when asked for.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from enum import Enum
from typing import NamedTuple

from .data import (KIND_MESSAGES, KIND_PC_CONV, KIND_PC_TEXT, KIND_TEXT, KIND_TOKENS, Example,
                   is_trained_flag_off)
from .errors import MaskLensError
from .findings import Finding
from .templates import (MessageSpan, TemplateInfo, analyze_template, get_template, has_generation_markers,
                        locate_messages, render)

IGNORE = -100


class Strategy(str, Enum):
    """Which tokens are trained. The string values are the canonical names used by the CLI, the app and exports."""

    FULL = "full"  # every token (TRL's default)
    COMPLETION_ONLY = "completion_only"  # TRL completion_only_loss=True, prompt/completion data
    ASSISTANT_ONLY = "assistant_only"  # TRL assistant_only_loss=True; every assistant turn
    LAST_ASSISTANT = "last_assistant"  # torchtune train_on_last, LLaMA-Factory mask_history
    RESPONSE_TEMPLATE = "response_template"  # TRL <= 0.19.1 DataCollatorForCompletionOnlyLM


STRATEGIES = [s.value for s in Strategy]
EOS_MODES = ("every_turn", "last_turn", "none")
TRUNCATION_MODES = ("keep_start", "keep_end")


@dataclass
class MaskConfig:
    """A masking configuration. Every field maps to a CLI flag and a UI control."""

    strategy: str = field(default="assistant_only", metadata={"help": "Which tokens are trained: " + ", ".join(STRATEGIES)})
    eos: str = field(default="every_turn", metadata={
        "help": "Assistant strategies: train each turn's end-of-turn marker on every turn, on the last, or none"})
    train_roles: tuple[str, ...] = field(default=("assistant",), metadata={
        "help": "Assistant strategies: roles whose messages are trained (e.g. assistant,tool)"})
    response_template: str | list[int] | None = field(default=None, metadata={
        "help": "response_template strategy: the text (or token ids) after which the old collator trains"})
    instruction_template: str | list[int] | None = field(default=None, metadata={
        "help": "response_template strategy: the text (or ids) that starts a human turn (multi-turn masking)"})
    max_length: int | None = field(default=None, metadata={"help": "Truncate to this many tokens (TRL's max_length)"})
    truncation: str = field(default="keep_start", metadata={"help": "keep_start or keep_end (TRL's truncation_mode)"})
    chat_template: str | None = field(default=None, metadata={"help": "A jinja chat template replacing the tokenizer's"})
    use_generation_markers: bool = field(default=True, metadata={
        "help": "assistant_only: when the template has {% generation %} markers, use them (exactly TRL)"})

    def __post_init__(self):
        try:
            self.strategy = Strategy(self.strategy).value
        except ValueError:
            raise MaskLensError(f"unknown strategy {self.strategy!r}", field="strategy",
                                fix=f"use one of {', '.join(STRATEGIES)}") from None
        if self.eos not in EOS_MODES:
            raise MaskLensError(f"unknown eos mode {self.eos!r}", field="eos", fix=f"use one of {', '.join(EOS_MODES)}")
        if self.truncation not in TRUNCATION_MODES:
            raise MaskLensError(f"unknown truncation {self.truncation!r}", field="truncation",
                                fix="use keep_start or keep_end")
        if self.max_length is not None and self.max_length < 1:
            raise MaskLensError("must be a positive number of tokens", field="max_length")
        self.train_roles = tuple(self.train_roles)
        if self.strategy == Strategy.RESPONSE_TEMPLATE and not self.response_template:
            raise MaskLensError("the response_template strategy needs a response template", field="response_template",
                                fix='pass --response-template "### Assistant:" or --response-template-ids 1,2,3')


class Segment(NamedTuple):
    """A span of the rendered text: which message and part it belongs to, and whether the strategy trains it."""

    start: int
    end: int
    message: int | None  # index into the example's messages; None for template text
    role: str | None
    part: str  # template, header, content, after_content, eot, prompt, completion, text, eos, tokens
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
        return len(self.labels) - self.labels.count(IGNORE)

    def to_json(self) -> dict:
        """The CLI/export record: one per input row."""
        return {"row": self.row, "input_ids": self.input_ids, "labels": self.labels,
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
            rule = self.token_rules.get(i)
            if rule is None and seg is not None:
                rule = seg.rule
                if (lab != IGNORE) != seg.trained:  # a token straddling a segment boundary
                    rule = ("trained: token overlaps a trained span (" if lab != IGNORE else
                            "not trained: token overlaps an untrained span (") + seg.rule + ")"
            out.append(TokenInfo(i, tid, txt, lab, seg.message if seg else None, seg.role if seg else None,
                                 seg.part if seg else "tokens", rule or "", tid in special_ids))
        return out


# ------------------------------------------------------------------------------------------------- tokenization
def _backend(tokenizer):
    be = getattr(tokenizer, "_tokenizer", None) or getattr(tokenizer, "backend_tokenizer", None)
    if be is None or not hasattr(be, "encode_batch"):
        raise MaskLensError(f"{type(tokenizer).__name__} is not a fast (Rust) tokenizer; MaskLens needs character "
                            "offsets", fix="load the tokenizer with use_fast=True (tokenizer.json)")
    return be


def encode_batch(tokenizer, texts: list[str], add_special_tokens: bool):
    """Tokenize many texts at once; identical ids to tokenizer(text, add_special_tokens=...)."""
    if not texts:
        return []
    return _backend(tokenizer).encode_batch(texts, add_special_tokens=add_special_tokens)


def common_prefix_length(a: list[int], b: list[int]) -> int:
    """Leading tokens two sequences share (TRL 1.16's completion start). Example: [1,2,3],[1,2,4] -> 2."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _token_range(enc, start: int, end: int) -> tuple[int, int] | None:
    """Tokens [a, b) covering any character of [start, end)."""
    if end <= start:
        return None
    a = None
    for c in range(start, end):
        a = enc.char_to_token(c)
        if a is not None:
            break
    if a is None:
        return None
    b = None
    for c in range(end - 1, start - 1, -1):
        b = enc.char_to_token(c)
        if b is not None:
            break
    return a, b + 1


def _labels_from_char_spans(enc, ids: list[int], spans: list[tuple[int, int]]) -> list[int]:
    """The one place labels are built: token ids where a trained character span covers the token, else -100."""
    labels = [IGNORE] * len(ids)
    for s, e in spans:
        r = _token_range(enc, s, e)
        if r:
            a, b = r
            labels[a:b] = ids[a:b]
    return labels


def _labels_from_generation(enc, ids: list[int], gen: list[tuple[int, int]]) -> list[int]:
    """Exactly transformers' assistant mask (apply_chat_template(return_assistant_tokens_mask=True)), as labels."""
    labels = [IGNORE] * len(ids)
    for s, e in gen:
        a = enc.char_to_token(s)
        b = enc.char_to_token(e - 1)
        if a is None:  # transformers stops at the first span it cannot place
            break
        stop = b + 1 if b else len(ids)  # transformers' quirk: an end token of 0/None runs to the end
        labels[a:stop] = ids[a:stop]
    return labels


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
    token_level: str | None = None  # "completion" | "response_template" | "given" | "not_applicable"
    decide: object = None  # conversational: decide(message_index, part) -> (trained, rule)
    enc: object = None
    prompt_enc: object = None


def _message_parts(sp: MessageSpan) -> list[tuple[str, int, int]]:
    """The parts of one located message, as (part, start, end): what both labels and the token view are cut from."""
    parts = [("header", sp.header_start, sp.content_start), ("content", sp.content_start, sp.content_end)]
    if sp.eot_start >= 0:
        parts += [("after_content", sp.content_end, sp.eot_start), ("eot", sp.eot_start, sp.eot_end)]
    if sp.eos_start >= 0:
        parts.append(("eos", sp.eos_start, sp.eos_end))
    return parts


def _message_segments(text: str, spans: list[MessageSpan], decide) -> list[Segment]:
    """Cut the rendered text into segments; decide(message_index, part) -> (trained, rule)."""
    cuts = [(a, b, sp.index, sp.role, part) for sp in spans if sp.found for part, a, b in _message_parts(sp)]
    cuts = [c for c in cuts if c[1] > c[0]]
    cuts.sort(key=lambda c: c[0])
    segs: list[Segment] = []
    pos = 0
    for s, e, idx, role, part in cuts:
        if s < pos:
            s = pos
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


def _assistant_decider(messages: list[dict], spans: list[MessageSpan], cfg: MaskConfig, only_last: bool):
    roles = set(cfg.train_roles)
    trainable = [sp.index for sp in spans if sp.found and messages[sp.index]["role"] in roles
                 and not is_trained_flag_off(messages[sp.index])]
    if only_last:
        last_asst = max((sp.index for sp in spans if messages[sp.index]["role"] in roles), default=None)
        trainable = [i for i in trainable if i == last_asst]
    trainable_set = set(trainable)
    last = trainable[-1] if trainable else None
    name = cfg.strategy

    def decide(idx, part):
        if idx is None:
            return False, "not trained: template text outside any message"
        m = messages[idx]
        role = m["role"]
        if idx not in trainable_set:
            if role in roles and is_trained_flag_off(m):
                return False, f"not trained: message {idx} is flagged off ({'weight 0' if 'weight' in m else 'train false'})"
            if role in roles and only_last:
                return False, f"not trained: {name} trains only the last {role} turn"
            return False, f"not trained: {role} message"
        if part == "header":
            return False, f"not trained: {role} role header"
        if part in ("content", "after_content"):
            return True, f"trained: {role} {'content' if part == 'content' else 'output after content (tool calls)'}"
        if part in ("eot", "eos"):
            what = "end-of-turn marker" if part == "eot" else "EOS the template appends after the last turn"
            if cfg.eos == "every_turn" or (cfg.eos == "last_turn" and idx == last):
                return True, f"trained: {what} (eos={cfg.eos})"
            return False, f"not trained: {what} (eos={cfg.eos})"
        return False, "not trained"

    return decide


def _full_decider(idx, part):
    return True, "trained: full trains every token"


# ------------------------------------------------------------------------------------------------- phase 1
def _plan(ex: Example, tokenizer, cfg: MaskConfig, template: str | None, eos_token: str, batch: dict) -> _Plan:
    plan = _Plan(ex=ex, findings=list(ex.notes))
    strat = cfg.strategy
    if ex.kind == KIND_TOKENS:
        if ex.labels is not None:
            plan.token_level = "given"
            plan.findings.append(Finding("labels_from_data", "labels come from the data row"))
        elif strat in (Strategy.FULL, Strategy.RESPONSE_TEMPLATE):
            plan.token_level = "full" if strat == Strategy.FULL else "response_template"
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
        if strat == Strategy.FULL or strat == Strategy.RESPONSE_TEMPLATE:
            rule = "trained: full trains every token" if strat == Strategy.FULL else "decided per token by the old collator"
            plan.segments = [Segment(s, e, None, None, p, strat == Strategy.FULL, rule) for s, e, p in parts if e > s]
            plan.token_level = None if strat == Strategy.FULL else "response_template"
        elif strat == Strategy.COMPLETION_ONLY and ex.kind == KIND_PC_TEXT:
            plan.segments = [Segment(s, e, None, None, p, p != "prompt",
                                     "not trained: prompt" if p == "prompt" else f"trained: {p} (completion_only)")
                             for s, e, p in parts if e > s]
            plan.token_level = "completion"
        else:
            plan.segments = [Segment(s, e, None, None, p, False, f"not trained: {strat} does not apply")
                             for s, e, p in parts if e > s]
            plan.token_level = "not_applicable"
            need = "prompt/completion data" if strat == Strategy.COMPLETION_ONLY else "conversational data (messages)"
            plan.findings.append(Finding("strategy_not_applicable", f"{strat} needs {need}; this row is {ex.kind}"))
        return plan

    # conversational: messages, or prompt+completion message lists
    assert template is not None
    msgs = ex.messages
    tpl_kwargs = ex.chat_template_kwargs
    use_gen = (strat == Strategy.ASSISTANT_ONLY and cfg.use_generation_markers and has_generation_markers(template))
    special_map = batch["special_map"]
    plan.text, gen = render(tokenizer, msgs, template, tools=ex.tools, return_generation=use_gen,
                            special_map=special_map, **tpl_kwargs)
    if use_gen:
        plan.gen = gen
    info = batch["info"]
    plan.info = info
    spans = locate_messages(plan.text, msgs, info, eos_token)
    plan.spans = spans
    for sp in spans:
        if not sp.found and (msgs[sp.index].get("content") or ""):
            plan.findings.append(Finding("content_not_rendered",
                                         f"message {sp.index} ({sp.role}): its content does not appear in the rendered text",
                                         location={"message": sp.index}))
    if strat in (Strategy.ASSISTANT_ONLY, Strategy.LAST_ASSISTANT):
        decide = _assistant_decider(msgs, spans, cfg, only_last=strat == Strategy.LAST_ASSISTANT)
        for sp in spans:
            m = msgs[sp.index]
            if m["role"] in cfg.train_roles and is_trained_flag_off(m):
                plan.findings.append(Finding("message_not_trained", f"message {sp.index} is flagged off",
                                             location={"message": sp.index}))
    elif strat == Strategy.FULL:
        decide = _full_decider
    elif strat == Strategy.COMPLETION_ONLY:
        if ex.kind != KIND_PC_CONV:
            plan.token_level = "not_applicable"
            plan.findings.append(Finding("strategy_not_applicable",
                                         "completion_only needs prompt/completion rows; use assistant_only or "
                                         "last_assistant for messages"))
            decide = lambda idx, part: (False, "not trained: completion_only does not apply to messages rows")  # noqa: E731
        else:
            n_prompt = len(ex.prompt)
            plan.prompt_text, _ = render(tokenizer, ex.prompt, template, tools=ex.tools, add_generation_prompt=True,
                                         special_map=special_map,
                                         **tpl_kwargs)
            plan.token_level = "completion"

            def decide(idx, part):
                if idx is None or idx < n_prompt:
                    return False, "not trained: prompt (completion_only)"
                return True, "trained: completion (completion_only)"
    else:  # response_template: labels decided per token by the old collator
        plan.token_level = "response_template"
        decide = lambda idx, part: (False, "decided per token by the old collator")  # noqa: E731
    plan.decide = decide
    return plan


def _trained_spans(spans: list[MessageSpan], decide) -> list[tuple[int, int]]:
    """Character spans an assistant strategy trains, straight from the message spans (no segment objects)."""
    out: list[tuple[int, int]] = []
    for sp in spans:
        if not sp.found:
            continue
        parts = _message_parts(sp)
        for part, a, b in parts:
            if b > a and decide(sp.index, part)[0]:
                if out and out[-1][1] >= a:
                    out[-1] = (out[-1][0], max(b, out[-1][1]))
                else:
                    out.append((a, b))
    return out


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
    else:
        enc = plan.enc
        ids = enc.ids
        text = plan.text
        if plan.spans is not None:  # conversational: segments built only if someone looks
            spans, decide = plan.spans, plan.decide
            builder = lambda: _message_segments(text, spans, decide)  # noqa: E731
            if plan.gen is not None:
                gen = plan.gen
                builder = lambda: _relabel_for_generation(_message_segments(text, spans, decide), gen)  # noqa: E731
        else:
            segs = plan.segments
            builder = lambda: segs  # noqa: E731
        if plan.gen is not None:
            labels = _labels_from_generation(enc, ids, _filter_generation(plan))
        elif plan.token_level in (None, "not_applicable"):
            if plan.spans is None:
                trained = _merge_trained(plan.segments)
            elif cfg.strategy == Strategy.FULL:
                trained = [(0, len(text))]
            else:
                trained = _trained_spans(plan.spans, plan.decide)
            labels = _labels_from_char_spans(enc, ids, trained)
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
        else:  # response_template
            labels = [IGNORE] * len(ids)
    if plan.token_level == "response_template":
        labels = _apply_response_template(ids, text, enc, tokenizer, cfg, findings, token_rules, ctx)

    # bos doubled
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
    return RenderedExample(row=ex.row, kind=ex.kind, input_ids=ids, labels=labels, text=text, findings=findings,
                           messages=ex.messages, token_rules=token_rules, n_before_truncation=n_before,
                           truncated_at_start=cut_start, strategy=cfg.strategy, _enc=enc, _keep=keep,
                           _segment_builder=builder)


def _filter_generation(plan: _Plan) -> list[tuple[int, int]]:
    """Generation spans, minus those of assistant messages flagged off (weight 0 / train false)."""
    msgs = plan.ex.messages
    off = [sp for sp in (plan.spans or []) if sp.found and is_trained_flag_off(msgs[sp.index])]
    if not off:
        return plan.gen
    keep = []
    for s, e in plan.gen:
        if any(s <= sp.content_start < e or (sp.content_start == sp.content_end and s <= sp.content_start <= e)
               for sp in off):
            continue
        keep.append((s, e))
    return keep


def _relabel_for_generation(segments: list[Segment], gen: list[tuple[int, int]]) -> list[Segment]:
    """Split segments at generation boundaries so the token view shows the template's own decision."""
    cuts = sorted({p for s, e in gen for p in (s, e)})
    out = []
    for seg in segments:
        pts = [seg.start] + [c for c in cuts if seg.start < c < seg.end] + [seg.end]
        for a, b in zip(pts, pts[1:]):
            inside = any(s <= a and b <= e for s, e in gen)
            rule = ("trained: inside {% generation %}" if inside else "not trained: outside {% generation %}")
            out.append(Segment(a, b, seg.message, seg.role, seg.part, inside, rule))
    return out


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
        findings.append(Finding("pad_is_eos" if pad_id == tokenizer.eos_token_id else "eos_not_trained",
                                f"{len(res.pad_masked)} token(s) equal to the pad id ({pad_id}) were masked by the old "
                                "collator", severity="warning", location={"tokens": res.pad_masked[:20]}))
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
    n = len(labels)
    if labels.count(IGNORE) == n:
        return None
    i = 0
    while i < n and labels[i] == IGNORE:  # typically a few hundred header tokens; fine
        i += 1
    return i


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
        # TRL 0.19.1's SFTTrainer set pad = eos when the tokenizer had none
        ctx["pad_id"] = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    markers = set()
    if tokenizer.eos_token_id is not None:
        markers.add(tokenizer.eos_token_id)
    if info is not None:
        for s in info.eot:
            tid = tokenizer.convert_tokens_to_ids(s)
            if isinstance(tid, int) and tid != tokenizer.unk_token_id:
                markers.add(tid)
    ctx["marker_ids"] = markers
    return ctx


def render_examples(examples: list[Example], tokenizer, cfg: MaskConfig, errors: str = "raise") -> list[RenderedExample]:
    """Render many examples under one configuration (the fast path: one batch tokenization).

    errors="raise": a template that fails on an example raises MaskLensError naming its row (the CLI's contract);
    errors="finding": that example comes back empty with a render_failed finding and the others render (the app).
    """
    assert errors in ("raise", "finding"), errors
    needs_template = any(e.kind in (KIND_MESSAGES, KIND_PC_CONV) for e in examples)
    template = get_template(tokenizer, cfg.chat_template) if needs_template else (cfg.chat_template or None)
    if template is None:
        t = getattr(tokenizer, "chat_template", None)
        template = t if isinstance(t, str) else None
    eos_token = tokenizer.eos_token or ""
    batch = {"special_map": dict(tokenizer.special_tokens_map),
             "info": analyze_template(tokenizer, template) if needs_template else None}
    plans = []
    failed: dict[int, RenderedExample] = {}
    for k, ex in enumerate(examples):
        try:
            plans.append(_plan(ex, tokenizer, cfg, template, eos_token, batch))
        except MaskLensError as e:
            if errors == "raise":
                raise MaskLensError(e.message, file=ex.source, row=ex.row, field=e.field, fix=e.fix) from None
            failed[k] = RenderedExample(row=ex.row, kind=ex.kind, input_ids=[], labels=[], messages=ex.messages,
                                        findings=[Finding("render_failed", str(e))], strategy=cfg.strategy)
    for add_special in (False, True):
        group = [p for p in plans if p.ex.kind != KIND_TOKENS and p.add_special == add_special]
        for p, enc in zip(group, encode_batch(tokenizer, [p.text for p in group], add_special)):
            p.enc = enc
        pgroup = [p for p in plans if p.prompt_text is not None and p.prompt_add_special == add_special]
        for p, enc in zip(pgroup, encode_batch(tokenizer, [p.prompt_text for p in pgroup], add_special)):
            p.prompt_enc = enc
    info = batch["info"] or (analyze_template(tokenizer, template) if template else None)
    ctx = _context(tokenizer, cfg, info)
    done = iter([_finish(p, tokenizer, cfg, ctx) for p in plans])
    return [failed[k] if k in failed else next(done) for k in range(len(examples))]


def render_example(example: Example, tokenizer, cfg: MaskConfig) -> RenderedExample:
    """Render one example. Example: render_example(ex, tok, MaskConfig("full")).labels == .input_ids."""
    return render_examples([example], tokenizer, cfg)[0]
