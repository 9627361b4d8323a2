"""Inspect's pickers and what follows them: the Chat template picker (the tokenizer's own, its proven
{% generation %}-marked copy, an edited one, TRL's shipped ones), the Data picker (samples and the session's upload),
and what the app sets by itself when the data or the tokenizer changes (fit_strategy, fit_template), each time saying
so in the notice line above the tokens. No gradio here: plain functions over a Session.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

from core.data.formats import KIND_MESSAGES, KIND_PC_CONV, KIND_PC_TEXT, KIND_TEXT, KIND_TOKENS, normalize_row
from core.errors import MaskLensError
from core.masking.checks import PROBE_CONVERSATION, add_generation_markers, verify_generation_template
from core.masking.engine import MaskConfig, render_examples
from core.masking.spans import REASONING_FIELDS
from core.masking.strategies import get_strategy
from core.masking.trl_templates import SOURCE_CANNOT_PATCH, shipped_templates, training_template

from . import render
from .session import Session, sample_choices


# ------------------------------------------------------------------------------------------------------ templates
TOKENIZER_TEMPLATE = "tokenizer"
MARKED_TEMPLATE = "marked"
EDITED_TEMPLATE = "edited"
# Vision-language templates iterate over content parts; MaskLens takes string content.
_VLM_TEMPLATES = {"idefics3", "llava_next", "qwen2_5_vl", "qwen3_vl", "smolvlm", "lfm2_2_5_vl"}
# The template the app switches to when the data holds what the tokenizer's own template does not render (reasoning,
# tool calls): TRL's qwen3 renders both, and TRL swaps in its training twin for it.
FEATURE_TEMPLATE = "qwen3"
# The one-click marked template is proven on this many of the data's conversations (and a probe).
MARKED_PROOF_ROWS = 256


def trl_inference_templates() -> dict[str, Path]:
    """TRL's shipped chat templates that a model's tokenizer carries (not the *_training twins), by stem."""
    return {name[:-len(".jinja")]: path for name, path in shipped_templates().items()
            if not name.endswith("_training.jinja") and name[:-len(".jinja")] not in _VLM_TEMPLATES}


def template_choices() -> list[tuple[str, str]]:
    return ([("the tokenizer's own", TOKENIZER_TEMPLATE),
             ("the tokenizer's own + {% generation %} markers (proven)", MARKED_TEMPLATE),
             ("edited in the Chat template box", EDITED_TEMPLATE)]
            + [(f"TRL {stem}.jinja", f"trl:{stem}") for stem in trl_inference_templates()])


def template_choice(session: Session) -> str:
    """Which picker entry the session's chat template is."""
    if not session.chat_template:
        return TOKENIZER_TEMPLATE
    for stem, path in trl_inference_templates().items():
        if read_template(path) == session.chat_template:
            return f"trl:{stem}"
    if session.chat_template == marked_template_of(session):
        return MARKED_TEMPLATE
    return EDITED_TEMPLATE


_TEXTS: dict[Path, str] = {}


def read_template(path: Path) -> str:
    """A shipped template file's text (read once: every view compares against them)."""
    if path not in _TEXTS:
        _TEXTS[path] = path.read_text(encoding="utf-8")
    return _TEXTS[path]


_MARKED: dict[tuple[int, str], tuple[object, str | None]] = {}


def marked_template_of(session: Session) -> str | None:
    """The tokenizer's own chat template with {% generation %} markers added (core.masking.checks),
    or None when they cannot be added. Cached per tokenizer and template: every view asks."""
    try:
        tok = session.tokenizer()
        own = session.tokenizer_template()
    except Exception:  # noqa: BLE001 - the tokenizer error is shown elsewhere
        return None
    hit = _MARKED.get((id(tok), own))
    if hit is None or hit[0] is not tok:
        try:
            marked = add_generation_markers(tok, own) if own else None
        except MaskLensError:
            marked = None
        if len(_MARKED) > 32:
            _MARKED.clear()
        hit = _MARKED[(id(tok), own)] = (tok, marked)
    return hit[1]


def marked_twin(session: Session, limit: int | None = None):
    """(marked template, proof): the chat template in use with {% generation %} markers added (core.masking.checks),
    proven on the dataset's conversations (the first `limit` of them) plus a probe. Raises MaskLensError when there
    is no chat template or markers cannot be added to it."""
    tok = session.tokenizer()
    original = session.template()
    if not original:
        raise MaskLensError("the tokenizer has no chat template",
                            fix="pick one under Chat template, or load a chat model's tokenizer")
    marked = add_generation_markers(tok, original)
    examples = [e for e in (session.data.examples if session.data else []) if e.kind == KIND_MESSAGES][:limit]
    session.check_rows(examples)  # an edited template renders every row in the sandbox first (bounded)
    examples.append(normalize_row({"messages": PROBE_CONVERSATION}, len(examples)))
    return marked, verify_generation_template(tok, original, marked, examples)


# ------------------------------------------------------------------------------------------------------ fitting
# What the app sets by itself when the data changes (and says so in the notice line above the tokens): a strategy
# that fits the data's format, and a chat template that renders what the data holds.
_PROMPT_COMPLETION = ("completion_only", "TRL's default for prompt/completion data (completion_only_loss): the "
                                          "completion trains, the prompt does not")
KIND_STRATEGY = {
    KIND_PC_TEXT: _PROMPT_COMPLETION,
    KIND_PC_CONV: _PROMPT_COMPLETION,
    KIND_TEXT: ("full", "plain text has no prompt or turns: TRL trains every token"),
    KIND_TOKENS: ("full", "pre-tokenized rows: TRL uses a labels column as it is, else trains every token"),
    KIND_MESSAGES: ("assistant_only", "conversations: every assistant turn trains (TRL's assistant_only_loss=True; "
                                      "without it TRL trains every token)"),
}


def data_kind(data) -> str | None:
    """The format most of the dataset's examples have. Example: prompt_completion.jsonl -> "prompt_completion_text"."""
    kinds = Counter(ex.kind for ex in (data.examples if data is not None else []))
    return kinds.most_common(1)[0][0] if kinds else None


def fit_strategy(session: Session, previous_kind: str | None) -> str:
    """New data of another format: switch to that format's strategy (KIND_STRATEGY). Returns the notice, or ""."""
    kind = data_kind(session.data)
    if kind is None or kind == previous_kind or kind not in KIND_STRATEGY:
        return ""
    strategy, why = KIND_STRATEGY[kind]
    if session.settings.strategy == strategy:
        return ""
    session.settings = dataclasses.replace(session.settings, strategy=strategy, split_turns=False)
    session.turn = None
    return f"Strategy set to <b>{render.esc(strategy)}</b> for this data: {render.esc(why)}."


def unrendered_features(session: Session, limit: int = 8) -> list[str]:
    """What the data holds that the session's chat template does not render, among "reasoning" and "tool calls",
    judged on the first `limit` conversations that have them. Example: reasoning.jsonl + SmolLM2 -> ["reasoning"]."""
    examples = [ex for ex in session.data.examples if ex.messages and any(
        m.get("tool_calls") or (m.get("role") == "assistant" and any(m.get(f) for f in REASONING_FIELDS))
        for m in ex.messages)][:limit]
    if not examples:
        return []
    session.check_rows(examples)
    rendered = render_examples(examples, session.tokenizer(), MaskConfig("full", chat_template=session.chat_template),
                               errors="finding", image_root=session.data.root)
    missing = []
    if any(f.code == "reasoning_not_rendered" for r in rendered for f in r.findings):
        missing.append("reasoning")
    for ex, r in zip(examples, rendered):
        calls = {i for i, m in enumerate(ex.messages) if m.get("tool_calls")}
        if calls - {s.message for s in r.segments if s.part == "tool_calls"}:
            missing.append("tool calls")
            break
    return missing


def fit_template(session: Session) -> str:
    """New data (or tokenizer): when it holds reasoning or tool calls that the tokenizer's own template (or its marked
    copy) does not render, render with TRL's qwen3 template instead, with this tokenizer's vocabulary; back to the
    template it replaced when the data no longer needs it. A template the user picked or edited stays. Returns the
    notice, or ""."""
    auto = session.auto_template
    was_auto = auto is not None and session.chat_template == auto[0]
    base = auto[1] if was_auto else session.chat_template
    if session.data is None or base not in (None, marked_template_of(session)) or \
            not any(ex.messages for ex in session.data.examples):  # no conversation: the template does not matter
        return ""
    session.chat_template, session.auto_template = base, None
    name = template_name(session)
    try:
        missing = unrendered_features(session)
    except Exception:  # noqa: BLE001 - the view reports rendering errors
        return ""
    if not missing:
        return (f"Chat template back to <b>{render.esc(name)}</b>: it renders everything this data "
                "holds." if was_auto else "")
    qwen = read_template(trl_inference_templates()[FEATURE_TEMPLATE])
    session.chat_template, session.auto_template = qwen, (qwen, base)
    if was_auto:
        return ""
    return (f"This data holds {' and '.join(missing)} that {render.esc(name)} does not render, so "
            f"Chat template is set to <b>TRL's {FEATURE_TEMPLATE}.jinja</b> (rendered with this tokenizer's "
            "vocabulary), which renders them. Pick <i>the tokenizer's own</i> under Chat template to see what your "
            "model's template does.")


# ------------------------------------------------------------------------------------------------------ in effect
def trl_cannot_patch(session: Session) -> bool:
    """Whether the session asks for TRL's behaviour where TRL has none: an assistant strategy under
    template_source=trl on a chat template without {% generation %} markers that TRL has no training template for
    (the embedded SmolLM2's). MaskLens's own masking is then what is in effect (TRL would raise)."""
    spec = get_strategy(session.settings.strategy)
    if spec is None or not spec.trl_generation or session.settings.template_source != "trl":
        return False
    try:
        template = session.template()
        return bool(template) and training_template(session.tokenizer(), template).source == SOURCE_CANNOT_PATCH
    except Exception:  # noqa: BLE001 - a tokenizer or template error is shown in the error box
        return False


def template_name(session: Session) -> str:
    """The chat template in use, in words. Example: "TRL's qwen3.jinja"."""
    pick = template_choice(session)
    if pick == TOKENIZER_TEMPLATE:
        return "the tokenizer's own chat template"
    if pick == MARKED_TEMPLATE:
        return "the tokenizer's own chat template with {% generation %} markers"
    return f"TRL's {pick[4:]}.jinja" if pick.startswith("trl:") else "the edited chat template"


# ------------------------------------------------------------------------------------------------------ data
UPLOADED = "uploaded:"  # the Data picker's value for the session's uploaded file


def data_choices(session: Session) -> list[tuple[str, str]]:
    """The Data picker: the bundled samples, then the file this session uploaded last."""
    up = session.uploaded
    return sample_choices() + ([(f"{up.name} — your file", UPLOADED + up.name)] if up is not None else [])


def data_value(session: Session) -> str | None:
    """The picker entry of the session's data: its upload, a sample, or none (a pasted example)."""
    d = session.data
    if d is None:
        return None
    if d is session.uploaded:
        return UPLOADED + d.name
    return d.name if d.name in {n for _, n in sample_choices()} else None
