"""Stage 1 — render: each example becomes the exact text TRL 1.16 tokenizes, with the template that produced it.

Conversations render through the chat template TRL would use for this strategy (core.masking.trl_templates: its
{% generation %}-marked training twin under assistant_only_loss, when it knows the template); text and
prompt/completion strings get TRL's EOS. All of a batch's renderings go through core.masking.templates.render_many
at once (one jinja call for the plain rows, one bounded sandbox batch for untrusted templates).

Example: render_batch([ex], tok, MaskConfig("assistant_only"), plan)[0].text -> "<|im_start|>system\\n..."
"""

from __future__ import annotations

from dataclasses import dataclass

from ..data.formats import KIND_MESSAGES, KIND_PC_CONV, KIND_PC_TEXT, KIND_TEXT, Example
from ..errors import MaskLensError
from ..findings import Finding
from .strategies import StrategyKind, StrategySpec
from .templates import RenderJob, get_template, render_many
from .trl_templates import SOURCE_CANNOT_PATCH, SOURCE_OWN, SOURCE_TRL_TWIN, TrainingTemplate, training_template

CONVERSATIONAL = (KIND_MESSAGES, KIND_PC_CONV)


@dataclass(frozen=True)
class TemplatePlan:
    """Which templates a call renders with: the inference template and, for the assistant strategies, TRL's choice."""

    inference: str | None  # the tokenizer's own template (or the one given); None: no conversational rows
    training: TrainingTemplate | None  # TRL's (or MaskLens's own) choice for trl_generation strategies
    spec: StrategySpec
    use_markers: bool  # use_generation_markers and only the assistant role trains (TRL's markers cover no other)
    given: bool  # cfg.chat_template was given

    @classmethod
    def build(cls, examples: list[Example], tokenizer, cfg, spec: StrategySpec) -> TemplatePlan:
        conversational = any(e.kind in CONVERSATIONAL for e in examples)
        template = get_template(tokenizer, cfg.chat_template) if conversational else (cfg.chat_template or None)
        if template is None and isinstance(getattr(tokenizer, "chat_template", None), str):
            template = tokenizer.chat_template
        training = None
        if conversational and spec.trl_generation:
            training = (training_template(tokenizer, template) if cfg.template_source == "trl"
                        else TrainingTemplate(template, SOURCE_OWN))
        return cls(template, training, spec, cfg.use_generation_markers and tuple(cfg.train_roles) == ("assistant",),
                   bool(cfg.chat_template))

    def choice(self, ex: Example) -> tuple[TrainingTemplate | None, bool, str]:
        """(the training template or None, whether TRL's {% generation %} labels are used, the template to render).
        split_turns rows are prompt/completion data: TRL renders them with the tokenizer's own template."""
        tt = self.training if ex.turn is None else None
        use_gen = tt is not None and tt.uses_markers and self.use_markers
        return tt, use_gen, (tt.template if use_gen else self.inference)

    def label(self, tt: TrainingTemplate | None, use_gen: bool) -> str:
        """Which template produced the tokens, in words (the token view shows it)."""
        if tt is not None and (use_gen or tt.source == SOURCE_CANNOT_PATCH):
            return tt.label
        return "the chat template given (as TRL renders it)" if self.given else "the tokenizer's chat template"


@dataclass(frozen=True, slots=True)
class Rendering:
    """An example's text as TRL tokenizes it, and how it came to be."""

    text: str
    add_special: bool = False  # tokenized with the tokenizer's own special tokens (BOS): text rows, as TRL does
    generation: tuple | None = None  # {% generation %} character spans, when TRL's markers decide the labels
    prompt_text: str | None = None  # completion strategies: the prompt rendered alone
    template: str | None = None  # the template that rendered `text` (None: not a conversation)
    label: str = ""
    swapped: bool = False  # rendered with TRL's training twin, not the tokenizer's own template
    inference_text: str | None = None  # the tokenizer's own rendering, when the twin renders differently
    inference_template: str | None = None  # the template of inference_text
    findings: tuple[Finding, ...] = ()
    training: TrainingTemplate | None = None


def render_batch(examples: list[Example], tokenizer, plan: TemplatePlan) -> list[Rendering | MaskLensError]:
    """Stage 1 for a batch: per example its Rendering, or the MaskLensError its template raised."""
    eos = tokenizer.eos_token or ""
    jobs, wants = _jobs(examples, plan)
    results = render_many(tokenizer, jobs, special_map=dict(tokenizer.special_tokens_map)) if jobs else []
    out: list[Rendering | MaskLensError] = []
    for ex, want in zip(examples, wants):
        if ex.kind in CONVERSATIONAL:
            out.append(_conversation(ex, plan, {k: results[j] for k, j in want.items()}))
        elif ex.kind in (KIND_TEXT, KIND_PC_TEXT):
            out.append(_string_row(ex, eos))
        else:  # pre-tokenized: nothing to render
            out.append(Rendering("", findings=tuple(ex.notes)))
    return out


def _jobs(examples: list[Example], plan: TemplatePlan) -> tuple[list[RenderJob], list[dict]]:
    """Every rendering the batch needs, and per example where its ones are: {"main"|"inference"|"prompt": job}."""
    jobs: list[RenderJob] = []
    wants: list[dict] = []
    completion = plan.spec.kind is StrategyKind.COMPLETION
    for ex in examples:
        want: dict = {}
        if ex.kind in CONVERSATIONAL:
            tt, use_gen, template = plan.choice(ex)
            kw = ex.chat_template_kwargs
            want["main"] = len(jobs)
            jobs.append(RenderJob(ex.messages, template, ex.tools, False, use_gen, kw))
            if use_gen and tt.source == SOURCE_TRL_TWIN:
                want["inference"] = len(jobs)
                jobs.append(RenderJob(ex.messages, plan.inference, ex.tools, False, False, kw))
            if (ex.turn is not None or completion) and ex.kind == KIND_PC_CONV:
                want["prompt"] = len(jobs)
                jobs.append(RenderJob(ex.prompt, plan.inference, ex.tools, True, False, kw))
        wants.append(want)
    return jobs, wants


def _conversation(ex: Example, plan: TemplatePlan, got: dict) -> Rendering | MaskLensError:
    main = got["main"]
    if isinstance(main, MaskLensError):
        return main
    prompt = got.get("prompt")
    if isinstance(prompt, MaskLensError):
        return prompt
    tt, use_gen, template = plan.choice(ex)
    findings = list(ex.notes)
    if ex.images:
        findings.append(Finding("images_not_processed", f"the row has {len(ex.images)} image(s); without the model's "
                                "processor each is shown as its placeholder, not the run of image tokens TRL's vision "
                                "collator inserts"))
    if tt is not None and tt.source == SOURCE_CANNOT_PATCH:
        findings.append(Finding("trl_cannot_patch", f"TRL would raise: {tt.trl_error} MaskLens masks with its own span "
                                                    "finding instead (template_source=own)."))
    inference = got.get("inference")
    if isinstance(inference, MaskLensError):  # the row trains (TRL renders it with the twin); only inference fails
        findings.append(Finding("template_swapped", f"TRL swaps in its {tt.name or 'training'} training template, "
                                "which renders this row; the tokenizer's own (inference) template fails on it: "
                                f"{inference}", severity="warning"))
        inference = None
    inference_text = inference[0] if inference is not None and inference[0] != main[0] else None
    return Rendering(main[0], generation=tuple(main[1]) if use_gen else None,
                     prompt_text=prompt[0] if prompt is not None else None, template=template,
                     label=plan.label(tt, use_gen), swapped=use_gen and tt.source == SOURCE_TRL_TWIN,
                     inference_text=inference_text, inference_template=plan.inference if inference_text else None,
                     findings=tuple(findings), training=tt)


def _string_row(ex: Example, eos: str) -> Rendering:
    """TRL 1.16 appends EOS to non-conversational data (to the text, or to the completion) unless present, and
    tokenizes with the tokenizer's own special tokens (BOS for Llama-family tokenizers)."""
    if ex.kind == KIND_TEXT:
        text = ex.text + ("" if ex.text.endswith(eos) else eos)
        return Rendering(text, add_special=True, findings=tuple(ex.notes))
    comp = ex.completion + ("" if ex.completion.endswith(eos) else eos)
    return Rendering(ex.prompt + comp, add_special=True, prompt_text=ex.prompt, findings=tuple(ex.notes))


def string_pieces(ex: Example, rendering: Rendering) -> tuple[tuple[int, int, str], ...]:
    """The parts of a text or prompt/completion row's rendering: (start, end, part). Example: a text row ->
    ((0, 11, "text"), (11, 24, "eos"))."""
    n = len(rendering.text)
    if ex.kind == KIND_TEXT:
        cut = len(ex.text)
        pieces = ((0, cut, "text"), (cut, n, "eos"))
    else:
        lp, lc = len(ex.prompt), len(ex.prompt) + len(ex.completion)
        pieces = ((0, lp, "prompt"), (lp, lc, "completion"), (lc, n, "eos"))
    return tuple(p for p in pieces if p[1] > p[0])
