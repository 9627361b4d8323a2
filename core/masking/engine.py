"""The masking engine: every example rendered into ``input_ids`` + ``labels`` under a strategy, as TRL 1.16 does it.

The pipeline, one module per stage (each a small function over frozen dataclasses):

    1. render    rendering.render_batch  Example -> Rendering  the text TRL tokenizes (a batch at once)
    2. locate    layout.locate           -> Layout             where each message and part lies (spans)
    3. decide    decide.decide           -> Decision           the strategy's verdict per part (strategies)
       encode    encoding.encode_texts   texts -> tokens       a batch at once; repeated pieces tokenized once,
                                                               ASCII word by word (core.masking.words)
    4. labels    labels.build_labels     -> Labels             the ONLY place labels are built: base labels,
                                                               mask_tokens, loss weights, truncation
    5. findings  diagnose.diagnose       -> [Finding]          (all modules in core.masking)

Options: core.masking.options.MaskConfig. Results: core.masking.rendered.RenderedExample; why each token trains is
built only when the token view asks (core.masking.explain). To add a strategy, register it (core.masking.strategies).

Example: render_examples([ex], tok, MaskConfig("assistant_only"))[0].labels -> [-100, ..., 9690, 198, 2]
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

from ..data.formats import KIND_MESSAGES, KIND_PC_CONV, KIND_TOKENS, Example
from ..errors import MaskLensError
from ..findings import Finding
from ..gc_pause import gc_paused
from .decide import Decision, decide
from .diagnose import DiagnoseContext, diagnose
from .encoding import encode_batch, encode_texts
from .explain import segments
from .labels import IGNORE, LabelContext, LabelSource, build_labels
from .layout import Layout, locate
from .options import EOS_MODES, STRATEGIES, TRUNCATION_MODES, MaskConfig  # noqa: F401  (public names)
from .rendered import RenderedExample, Segment, TokenInfo  # noqa: F401  (public names)
from .rendering import Rendering, TemplatePlan, render_batch
from .response_template import OldCollator
from .spans import TemplateInfo
from ..data.content import join_text_parts
from ..data.example import message_weight
from .strategies import Strategy, StrategyKind, get_strategy  # noqa: F401  (Strategy: public)
from .template_info import analyze_template
from .user_code import collator_labels
from .vocab import marker_ids, pad_id_for, token_ids, vocab_id  # noqa: F401  (public names)


def render_examples(examples: list[Example], tokenizer, cfg: MaskConfig, errors: str = "raise", processor=None,
                    image_root=None) -> list[RenderedExample]:
    """Render many examples under one configuration (one batch of renderings, one batch tokenization).

    errors="raise": a template that fails on an example raises MaskLensError naming its row (the CLI's contract);
    errors="finding": that example comes back empty with a render_failed finding and the others render (the app).
    With cfg.split_turns, a messages row gives one result per trained assistant turn (RenderedExample.turn).
    Rows with images go through TRL's vision collator with `processor` (core.masking.vision; image paths inside
    `image_root`); without a processor they render as text, with the images_not_processed finding.
    """
    assert errors in ("raise", "finding"), errors
    if cfg.split_turns:
        examples = split_turns(examples, cfg)
    if cfg.content_parts == "join":
        examples = [join_parts(ex) for ex in examples]
    if any(ex.images for ex in examples):
        if processor is None:
            from .vision import processor_for  # noqa: PLC0415

            processor = processor_for(tokenizer)
        if processor is not None:
            return _with_images(examples, tokenizer, cfg, errors, processor, image_root)
    with gc_paused():  # a batch allocates ~2,000 containers a row that reference counting frees (core.gc_pause)
        return _render_text(examples, tokenizer, cfg, errors)


def _with_images(examples, tokenizer, cfg, errors, processor, image_root) -> list[RenderedExample]:
    """Rows with images through TRL's vision collator, the others through the text pipeline, in input order."""
    from .vision import render_vision_examples, trl_flags  # noqa: PLC0415  (transformers' image processing)

    vis = [k for k, ex in enumerate(examples) if ex.images]
    done = dict(zip(vis, render_vision_examples([examples[k] for k in vis], processor, **trl_flags(cfg.strategy),
                                                chat_template=cfg.chat_template, max_length=cfg.max_length,
                                                root=image_root, errors=errors)))
    rest = [k for k in range(len(examples)) if k not in done]
    done.update(zip(rest, _render_text([examples[k] for k in rest], tokenizer, cfg, errors)))
    return [done[k] for k in range(len(examples))]


def join_parts(ex: Example) -> Example:
    """content_parts=join: every all-text part list of the row as one string (core.data.content.join_text_parts)."""
    if ex.messages is None or not any(isinstance(m.get("content"), list) for m in ex.messages):
        return ex
    msgs = join_text_parts(ex.messages)
    if ex.kind != KIND_PC_CONV:
        return replace(ex, messages=msgs)
    n = len(ex.prompt)
    return replace(ex, messages=msgs, prompt=msgs[:n], completion=msgs[n:])


def _render_text(examples: list[Example], tokenizer, cfg: MaskConfig, errors: str) -> list[RenderedExample]:
    """Stages 1-5 for rows without images processed (see the module docstring)."""
    spec = get_strategy(cfg.strategy)
    batch = _Batch.start(examples, tokenizer, cfg, spec)
    staged = _stages_1_to_3(examples, tokenizer, batch, errors)
    live = [s for s in staged if isinstance(s, _Staged)]
    _encode(tokenizer, live)  # one batch call per kind (core.parallel overlaps chunks: README Performance)
    lctx = batch.label_context(tokenizer, live)
    return [s if isinstance(s, RenderedExample) else _finish(s, k, lctx, batch) for k, s in enumerate(staged)]


def _stages_1_to_3(examples: list[Example], tokenizer, batch: _Batch, errors: str) -> list:
    """Render (one batch), locate and decide; a row its template fails on becomes its error (or render_failed)."""
    cfg, spec = batch.cfg, batch.spec
    staged: list[_Staged | RenderedExample] = []
    for ex, rendering in zip(examples, render_batch(examples, tokenizer, batch.plan)):
        try:
            if isinstance(rendering, MaskLensError):
                raise rendering
            layout = locate(ex, rendering, batch.info_for, batch.eos)
            staged.append(_Staged(ex, rendering, layout, decide(ex, rendering, layout, cfg, spec)))
        except MaskLensError as e:
            if errors == "raise":
                raise MaskLensError(e.message, file=ex.source, row=ex.row, field=e.field, fix=e.fix) from None
            staged.append(RenderedExample(row=ex.row, kind=ex.kind, input_ids=[], labels=[], messages=ex.messages,
                                          findings=[Finding("render_failed", str(e))], strategy=cfg.strategy,
                                          turn=ex.turn))
    return staged


def render_example(example: Example, tokenizer, cfg: MaskConfig) -> RenderedExample:
    """Render one example. Example: render_example(ex, tok, MaskConfig("full")).labels == .input_ids."""
    return render_examples([example], tokenizer, cfg)[0]


def split_turns(examples: list[Example], cfg: MaskConfig) -> list[Example]:
    """Each trained assistant turn of a messages row becomes a prompt (the history) + completion (that turn) example.

    Rendered like TRL's conversational prompt/completion data: the prompt with add_generation_prompt=True, exactly
    what the model sees at inference, so every trained token is one it would generate in that context.
    Example: [u, a1, u, a2] -> ([u] + [a1]), ([u, a1, u] + [a2]).
    """
    out = []
    for ex in examples:
        msgs = ex.messages
        turns = [i for i, m in enumerate(msgs) if m.get("role") in cfg.train_roles and message_weight(m) > 0
                 and i > 0] if ex.kind == KIND_MESSAGES else []
        if not turns:
            out.append(ex)
            continue
        for i in turns:
            out.append(replace(ex, kind=KIND_PC_CONV, prompt=msgs[:i], completion=[msgs[i]], messages=msgs[:i + 1],
                               turn=i, notes=list(ex.notes)))
    return out


# ------------------------------------------------------------------------------------------------------ internals
@dataclass
class _Staged:
    """One example between the stages: what stages 1-3 made of it, then its tokens."""

    ex: Example
    rendering: Rendering
    layout: Layout
    decision: Decision
    enc: object = None
    prompt_enc: object = None


@dataclass(frozen=True)
class _Batch:
    """What a call decides once for all its examples."""

    cfg: MaskConfig
    spec: object  # StrategySpec
    plan: TemplatePlan
    eos: str
    info_for: Callable[[str], TemplateInfo]
    diagnose: DiagnoseContext

    @classmethod
    def start(cls, examples, tokenizer, cfg, spec) -> _Batch:
        plan = TemplatePlan.build(examples, tokenizer, cfg, spec)
        infos: dict[str, TemplateInfo] = {}

        def info_for(template: str) -> TemplateInfo:
            if template not in infos:
                infos[template] = analyze_template(tokenizer, template)
            return infos[template]

        eot = info_for(plan.inference).eot if plan.inference else ()  # the inference template's end-of-turn markers
        dctx = DiagnoseContext(tokenizer.bos_token_id, marker_ids(tokenizer, eot), cfg.max_length)
        return cls(cfg, spec, plan, tokenizer.eos_token or "", info_for, dctx)

    def label_context(self, tokenizer, live: list[_Staged]) -> LabelContext:
        cfg, kind = self.cfg, self.spec.kind
        old = OldCollator.for_config(tokenizer, cfg) if kind is StrategyKind.OLD_COLLATOR else None
        users = {}
        if kind is StrategyKind.USER_COLLATOR:
            seqs = [s.enc.ids if s.enc is not None else s.ex.input_ids for s in live]
            users = dict(zip(map(id, live), collator_labels(self.spec, tokenizer, seqs, [s.ex.row for s in live])))
        return LabelContext(cfg, token_ids(tokenizer, cfg.mask_tokens) if cfg.mask_tokens else frozenset(), old,
                            users)


def _encode(tokenizer, live: list[_Staged]) -> None:
    """Tokenize every rendering (and prompt rendering) of the batch, grouped by whether special tokens are added."""
    for add_special in (False, True):
        group = [s for s in live if s.ex.kind != KIND_TOKENS and s.rendering.add_special == add_special]
        for s, enc in zip(group, encode_texts(tokenizer, [s.rendering.text for s in group], add_special)):
            s.enc = enc
        group = [s for s in group if s.rendering.prompt_text is not None]
        for s, enc in zip(group, encode_batch(tokenizer, [s.rendering.prompt_text for s in group], add_special)):
            s.prompt_enc = enc


def _finish(s: _Staged, k: int, lctx: LabelContext, batch: _Batch) -> RenderedExample:
    """Stages 4 and 5 for one example, and the result."""
    labels = build_labels(s.ex, s.rendering, s.decision, s.enc, s.prompt_enc, lctx, id(s))
    findings = [*s.rendering.findings, *s.layout.findings, *s.decision.findings, *labels.findings]
    findings += diagnose(s.ex, s.rendering.text, s.layout, s.decision, labels, s.enc, batch.diagnose, findings)
    return result(s, labels, findings, batch.cfg.strategy)


def result(s: _Staged, labels, findings: list[Finding], strategy: str) -> RenderedExample:
    """The RenderedExample of a finished example (why each token trains is explained only when asked)."""
    ex, rendering, layout, decision = s.ex, s.rendering, s.layout, s.decision
    return RenderedExample(
        row=ex.row, kind=ex.kind, input_ids=labels.input_ids, labels=labels.train_labels, weights=labels.weights,
        text=rendering.text, findings=findings, messages=ex.messages, token_rules=labels.token_rules,
        n_before_truncation=labels.n_before_truncation, truncated_at_start=labels.cut_start, strategy=strategy,
        turn=ex.turn, template_label=rendering.label, template_swapped=rendering.swapped,
        inference_text=rendering.inference_text, _enc=s.enc, _keep=labels.keep,
        _segment_builder=lambda: segments(ex, rendering, layout, decision, strategy))


__all__ = ["EOS_MODES", "IGNORE", "STRATEGIES", "TRUNCATION_MODES", "LabelSource", "MaskConfig", "RenderedExample",
           "Segment", "Strategy", "TokenInfo", "pad_id_for", "render_example", "render_examples", "split_turns",
           "vocab_id"]
