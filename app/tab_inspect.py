"""Inspect: one example at a time, every token with its label and the rule that decided it.

Callbacks are module-level functions (tests call them directly): they take the per-user Session and UI values, call
the engine through app.session, format with app.render, and return the outputs in a fixed order (InspectOut).
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import gradio as gr

from core.data.formats import (KIND_MESSAGES, KIND_PC_CONV, KIND_PC_TEXT, KIND_TEXT, KIND_TOKENS, ROLES,
                               normalize_row)
from core.errors import MaskLensError
from core.masking.checks import PROBE_CONVERSATION, add_generation_markers, verify_generation_template
from core.masking.engine import EOS_MODES, TRUNCATION_MODES, MaskConfig, RenderedExample, render_examples, vocab_id
from core.masking.options import TEMPLATE_SOURCES, TRAIN_MASK
from core.masking.spans import REASONING_FIELDS
from core.masking.strategies import get_strategy, strategy_names
from core.masking.trl_templates import SOURCE_CANNOT_PATCH, shipped_templates, training_template, trl_version

from . import render
from .session import (DEFAULT_SAMPLE, EMBEDDED, UPLOAD_TYPES, Session, Settings, escape, get_tokenizer,
                      load_dataset, load_sample, parse_example_json, sample_choices)

log = logging.getLogger(__name__)

# The token view's tooltip: one listener on the component, reading data-k from the hovered token and the view's
# data-info table (no per-token markup beyond id, label and key). Survives value updates: the listener sits on
# `element` itself. Nothing is remembered between hovers: Gradio patches a new value into the same elements (the
# .tv div and the spans stay, their attributes and children change), so a cache keyed on an element would describe
# an earlier view. Reading the table and the token list per hover costs well under a millisecond at 4,000 tokens.
TOKEN_VIEW_JS = r"""
const tip = document.getElementById('ml-tip') || Object.assign(document.createElement('div'), {id: 'ml-tip'});
if (!tip.parentNode) document.body.appendChild(tip);
element.addEventListener('mouseover', (e) => {
  const s = e.target.closest && e.target.closest('[data-token-id]');
  if (!s) { tip.style.display = 'none'; return; }
  const tv = s.closest('.tv'); if (!tv) return;
  const toks = tv.querySelectorAll('[data-token-id]');
  const pos = Array.prototype.indexOf.call(toks, s);
  const [msg, role, part, rule] = JSON.parse(tv.dataset.info || '[]')[+s.dataset.k] || [null, '', '', ''];
  const lab = s.dataset.label;
  const where = msg === null ? 'template text (no message)' : role ? `message ${msg} (${role})` : `example #${msg + 1}`;
  tip.className = lab === '-100' ? 'tip-n' : 'tip-y';
  const raw = (el) => el.textContent.replace(/·/g, ' ').replace(/→/g, '\t').replace(/↵/g, '\n').replace(/␍/g, '\r')
    .replace(/∅/g, '');
  const lit = (el) => '`' + JSON.stringify(raw(el)).slice(1, -1) + '`';
  // The label shift: labels are unshifted; the model predicts token i from position i-1 (it shifts them itself).
  let shift = '';
  if (lab !== '-100') shift = pos > 0 ? `\npredicted from ${lit(toks[pos - 1])} at ${pos - 1}` :
    '\nnever predicted: no token precedes position 0 (its label is dropped by the shift)';
  const nxt = toks[pos + 1];
  if (nxt && nxt.dataset.label !== '-100') shift += `\nthe output here is trained: it predicts #${pos + 1}`;
  tip.textContent = `#${pos}  id ${s.dataset.tokenId}  label ${lab}${lab === '-100' ? ' (ignored)' : ''}` +
    `${s.classList.contains('x') ? '  special' : ''}\n${where} · part: ${part}\n${rule}${shift}\n` +
    `text ${JSON.stringify(raw(s))}`;
  tip.style.display = 'block';
  const r = s.getBoundingClientRect();
  const x = Math.min(r.left, window.innerWidth - tip.offsetWidth - 8);
  const y = r.bottom + 6 + tip.offsetHeight > window.innerHeight ? r.top - tip.offsetHeight - 6 : r.bottom + 6;
  tip.style.left = Math.max(4, x) + 'px'; tip.style.top = Math.max(4, y) + 'px';
});
element.addEventListener('mouseleave', () => { tip.style.display = 'none'; });
"""


# A finding that names a token (location {"token": n}) scrolls the token view to it and flashes it.
FINDINGS_JS = r"""
element.addEventListener('click', (e) => {
  const f = e.target.closest && e.target.closest('[data-token]');
  if (!f) return;
  const t = document.querySelectorAll('#token-view [data-token-id]')[+f.dataset.token];
  if (!t) return;
  t.scrollIntoView({block: 'center', behavior: 'smooth'});
  t.classList.add('flash');
  setTimeout(() => t.classList.remove('flash'), 1800);
});
"""


def config_help(name: str) -> str:
    """The help text MaskConfig carries for a field (the UI shows it as the control's info)."""
    return next(f.metadata.get("help", "") for f in dataclasses.fields(MaskConfig) if f.name == name)


# Token view display options (Session.display): what the bar under each token shows, the label-shift markers, the
# tokenizer's own (inference) rendering beside the training one.
DISPLAY_DEFAULTS = {"underline": "part", "shift": False, "inference": False}
# The Rules tab registers rule sets as rules:<name>@<digest> (one per edit): the list shows only the session's own.
_APP_RULES_MARK = "@"


def display(session: Session) -> dict:
    return {**DISPLAY_DEFAULTS, **(session.display or {})}


def strategy_choices(current: str | None = None) -> list[str]:
    """The registry's strategies (core.strategies), without other sessions' rule sets from the Rules tab."""
    names = [n for n in strategy_names() if not (n.startswith("rules:") and _APP_RULES_MARK in n)]
    if current and current not in names and get_strategy(current) is not None:
        names.append(current)
    return names


def strategy_info(name: str) -> str:
    spec = get_strategy(name)
    return spec.help if spec is not None else ""


def template_source_choices() -> list[tuple[str, str]]:
    labels = {"trl": f"as TRL {trl_version()} (training template swap)",
              "own": "MaskLens's own masking on the inference template"}
    return [(labels[v], v) for v in TEMPLATE_SOURCES]


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


def source_update(session: Session) -> dict:
    """The Template source radio shows the source in effect: with a template TRL cannot patch, MaskLens's own
    masking, locked (there is no choice to make) and with a sentence saying why."""
    if trl_cannot_patch(session):
        return gr.update(value="own", interactive=False,
                         info=f"In effect: MaskLens's own masking. TRL {trl_version()} has no training template for "
                              "this chat template (its assistant_only_loss would stop with an error); 'Use a proven "
                              "{% generation %}-marked copy' above the tokens gives it the markers TRL needs.")
    return gr.update(value=session.settings.template_source, interactive=True, info=config_help("template_source"))


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
        if _read(path) == session.chat_template:
            return f"trl:{stem}"
    if session.chat_template == marked_template_of(session):
        return MARKED_TEMPLATE
    return EDITED_TEMPLATE


_TEXTS: dict[Path, str] = {}


def _read(path: Path) -> str:
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
                               errors="finding")
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
    qwen = _read(trl_inference_templates()[FEATURE_TEMPLATE])
    session.chat_template, session.auto_template = qwen, (qwen, base)
    if was_auto:
        return ""
    return (f"This data holds {' and '.join(missing)} that {render.esc(name)} does not render, so "
            f"Chat template is set to <b>TRL's {FEATURE_TEMPLATE}.jinja</b> (rendered with this tokenizer's "
            "vocabulary), which renders them. Pick <i>the tokenizer's own</i> under Chat template to see what your "
            "model's template does.")


class InspectOut(NamedTuple):
    """What every Inspect callback returns, in the order of InspectTab.outputs."""

    session: Session
    view: str
    stats: str
    findings: str
    raw: str
    number: int
    caption: str
    error: str
    data_info: str
    strategy: dict  # gr.update: the registry's strategies, the session's one, its help
    template_line: str  # which template produced the tokens
    legend: str
    turns: dict  # gr.update: split_turns' examples of this row ("row 3, turn 5")
    inference: str  # the tokenizer's own (inference) rendering beside the training one, when asked for
    rt_options: dict  # gr.update: the response_template controls, visible for that strategy
    split: dict  # gr.update: split_turns, only with assistant_only
    pad_note: str  # which pad token the old collator masks
    template_pick: dict  # gr.update: the chat template picker's entry for the session's template
    mask_tokens: dict  # gr.update: the session's mask_tokens (the Rules tab may set them)
    parts_options: dict  # gr.update: the options of strategies that decide per message part, visible for those
    source: dict  # gr.update: the Template source radio, showing the source in effect (source_update)
    use_marked: dict  # gr.update: the "use a proven marked template" button, visible where TRL cannot patch
    data_pick: dict  # gr.update: the Data picker: the samples, the uploaded file, the session's data selected
    notice: str  # what the app just set by itself (strategy, template) and why; a clamped example number


def pad_note_html(session: Session) -> str:
    """Which pad token the old collator (response_template) masks, and how to change it."""
    s = session.settings
    if s.strategy != "response_template":
        return ""
    try:
        tok = session.tokenizer()
    except Exception:  # noqa: BLE001 - the tokenizer error is shown elsewhere
        return ""
    eos = tok.eos_token
    if (s.pad_token or "").strip():
        pad = s.pad_token.strip()
        tid = tok.convert_tokens_to_ids(pad)
        same = " — the same id as EOS, so every EOS is masked" if tid == tok.eos_token_id else ""
        return (f'<div class="hint pad-note">The old collator masks every token equal to pad token '
                f"<code>{render.esc(pad)}</code> (id {render.esc(tid)}){same}.</div>")
    if tok.pad_token_id is None:
        return (f'<div class="note pad-note">The tokenizer has no pad token: its EOS <code>{render.esc(eos)}</code> '
                f"(id {tok.eos_token_id}) is assumed, as TRL 0.19.1's SFTTrainer set it — so the old collator masks "
                "every EOS. Type another pad token above (one the tokenizer has, e.g. its unk token) to change "
                "it.</div>")
    same = tok.pad_token_id == tok.eos_token_id
    return (f'<div class="{"note" if same else "hint"} pad-note">Pad token: the tokenizer\'s '
            f"<code>{render.esc(tok.pad_token)}</code> (id {tok.pad_token_id})"
            + (" — the same as its EOS, so the old collator masks every EOS. Type another pad token above to change "
               "it." if same else ".") + "</div>")


def _turn_choices(rendered: list[RenderedExample]) -> list[tuple[str, str]]:
    return [(f"row {r.row}, turn {r.turn}", str(r.turn)) for r in rendered if r.turn is not None]


def _controls(session: Session, rendered: list[RenderedExample] | None = None,
              shown: RenderedExample | None = None) -> dict:
    """The updates every view returns besides the token view: strategy list, visibility, split_turns' turns."""
    s = session.settings
    turns = _turn_choices(rendered or [])
    locked = trl_cannot_patch(session)
    return dict(
        strategy=gr.update(choices=strategy_choices(s.strategy), value=s.strategy, info=strategy_info(s.strategy)),
        turns=gr.update(choices=turns, value=str(shown.turn) if shown is not None and shown.turn is not None else None,
                        visible=bool(turns)),
        rt_options=gr.update(visible=s.strategy == "response_template"),
        parts_options=gr.update(visible=_decides_parts(s.strategy)),
        split=gr.update(value=bool(s.split_turns), interactive=s.strategy == "assistant_only"),
        pad_note=pad_note_html(session),
        template_pick=gr.update(value=template_choice(session)),
        legend=render.legend_html(display(session)["underline"], display(session)["shift"]),
        mask_tokens=gr.update(value=s.mask_tokens if isinstance(s.mask_tokens, str) else
                              ", ".join(escape(t) for t in s.mask_tokens),
                              info=mask_tokens_info(session, shown)),
        source=source_update(session),
        use_marked=gr.update(visible=locked and marked_template_of(session) is not None),
        data_pick=gr.update(choices=data_choices(session), value=data_value(session)),
    )


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


MASK_TOKENS_INFO = config_help("mask_tokens") + "; comma-separated, Enter to apply"


def mask_tokens_info(session: Session, shown: RenderedExample | None) -> str:
    """The mask-tokens box's help, plus a warning for strings that can mask nothing here: not one token of this
    tokenizer and absent from the example shown (a typo masks nothing, silently, otherwise).
    Example: "... ⚠ not a token of this tokenizer and not in this example: notatoken_xyz"."""
    try:
        wanted = session.settings.mask_token_list()
        tok = session.tokenizer() if wanted else None
    except Exception:  # noqa: BLE001 - errors are shown in the error box
        return MASK_TOKENS_INFO
    text = (shown.text or "") if shown is not None else ""
    idle = [t for t in wanted if vocab_id(tok, t) is None and t not in text]
    return MASK_TOKENS_INFO + (" ⚠ not a token of this tokenizer and not in this example: " + ", ".join(idle)
                               if idle else "")


def _decides_parts(name: str) -> bool:
    """Whether a strategy decides per message part (the assistant strategies, rules, registered ones)."""
    spec = get_strategy(name)
    return spec is not None and spec.kind == "parts"


def template_name(session: Session) -> str:
    """The chat template in use, in words. Example: "TRL's qwen3.jinja"."""
    pick = template_choice(session)
    if pick == TOKENIZER_TEMPLATE:
        return "the tokenizer's own chat template"
    if pick == MARKED_TEMPLATE:
        return "the tokenizer's own chat template with {% generation %} markers"
    return f"TRL's {pick[4:]}.jinja" if pick.startswith("trl:") else "the edited chat template"


def template_line(session: Session, r: RenderedExample) -> str:
    """The line above the tokens: which template produced them, in plain words where TRL has no training template."""
    if trl_cannot_patch(session):
        return render.cannot_patch_line_html(template_name(session), trl_version())
    if template_choice(session) == MARKED_TEMPLATE and r.template_label:
        return render.template_line_html(r, label="the tokenizer's own chat template with the {% generation %} "
                                                  f"markers MaskLens added (proven): TRL {trl_version()} trains on "
                                                  "these markers as they are")
    return render.template_line_html(r)


def view(session: Session, error: str = "", notice: str = "") -> InspectOut:
    """Render the session's current example. Never raises: a problem becomes the in-page error box. `notice` says
    what the app just set by itself and why (shown above the tokens)."""
    data_info = render.data_info_html(session.data)
    notice = render.notice_html(notice)
    ex = session.example
    if ex is None:
        why = "No valid example in this dataset: see the rows skipped." if session.data is not None else \
            "No data yet: choose a sample, upload a file or paste an example."
        return InspectOut(session, render.token_view_html([], empty=why), "", "", "", 0, "", error, data_info,
                          template_line="", inference="", notice=notice, **_controls(session))
    session.index = max(0, min(session.index, len(session.data.examples) - 1))
    n = len(session.data.examples)
    raw = render.raw_json(ex)
    opts = display(session)
    try:
        tok = session.tokenizer()
        rendered = session.render_row()
        r = next((x for x in rendered if x.turn is not None and x.turn == session.turn), rendered[0])
        infos = r.tokens(tok)
    except Exception as e:  # a bug or an exotic tokenizer/template: report it in the page, keep the server up
        if isinstance(e, MaskLensError):
            msg, title = str(e), "Error"
        else:
            log.exception("rendering failed")
            msg, title = f"{type(e).__name__}: {e}", "Unexpected error"
        return InspectOut(session, render.token_view_html([], empty="Nothing rendered: see the error above."), "",
                          "", raw, session.index + 1, render.example_caption(ex, session.index, n),
                          error + render.error_html(msg, title), data_info, template_line="", inference="",
                          notice=notice, **_controls(session))
    caption = render.example_caption(ex, session.index, n, turn=r.turn,
                                     turns=[x.turn for x in rendered] if r.turn is not None else None)
    tv = render.token_view_html(infos, truncated_at_start=r.truncated_at_start, underline=opts["underline"],
                                shift=opts["shift"])
    return InspectOut(session, tv, render.stats_html(r, infos), render.findings_html(r.findings), raw,
                      session.index + 1, caption, error, data_info, template_line=template_line(session, r),
                      inference=render.inference_html(r) if opts["inference"] else "", notice=notice,
                      **_controls(session, rendered, r))


def _err(e: Exception) -> str:
    """The in-page error box (no toast: the box is where the user looks, and a toast outlives the problem)."""
    return render.error_html(str(e))


# ------------------------------------------------------------------------------------------------------ callbacks
def on_load(data_path: str | None = None, tokenizer_name: str | None = None):
    """Page load: the embedded tokenizer (or tokenizer_name) and the default sample (or data_path), with the strategy
    and chat template fitted to the data (fit_strategy, fit_template). Returns InspectOut + (tokenizer name, chat
    template text, response template)."""
    session = Session()
    errors = []
    if tokenizer_name and tokenizer_name.strip() != EMBEDDED:
        try:
            get_tokenizer(tokenizer_name)
            session.tokenizer_name = tokenizer_name.strip()
        except Exception as e:  # noqa: BLE001 - shown in the page; the embedded tokenizer is used instead
            errors.append(_err(e))
    try:
        session.data = load_dataset(data_path, str(data_path)) if data_path else load_sample(DEFAULT_SAMPLE)
    except Exception as e:  # noqa: BLE001
        errors.append(_err(e))
    if data_path and session.data is not None:
        session.uploaded = session.data  # the picker lists it like an upload
    notice = _fit(session, KIND_MESSAGES)
    try:
        session.settings.response_template = _default_response_template(session)
    except Exception:  # noqa: BLE001 - no chat template: keep the default text
        pass
    out = view(session, "".join(errors), notice)
    return (*out, session.tokenizer_name, _template_text(session), session.settings.response_template)


def _fit(session: Session, previous_kind: str | None) -> str:
    """fit_strategy + fit_template after new data: their notices, one per line."""
    return "<br>".join(n for n in (fit_strategy(session, previous_kind), fit_template(session)) if n)


def make_loader(data_path: str | None = None, tokenizer_name: str | None = None):
    """The demo.load callback for a CLI's --data / --tokenizer."""

    def load():
        return on_load(data_path, tokenizer_name)

    return load


def _template_text(session: Session) -> str:
    try:
        return session.template() or ""
    except Exception:  # noqa: BLE001 - the tokenizer failed; the error is shown elsewhere
        return ""


def _default_response_template(session: Session) -> str:
    """The chat template's generation prompt (e.g. '<|im_start|>assistant\\n'), escaped for the one-line box."""
    from core.masking.template_info import analyze_template  # noqa: PLC0415

    tpl = session.template()
    if not tpl:
        return session.settings.response_template
    gp = analyze_template(session.tokenizer(), tpl).generation_prompt
    return escape(gp) if gp else session.settings.response_template


def on_tokenizer(session: Session, name: str):
    """Switch tokenizer. Returns InspectOut + (chat template text, response template)."""
    name = (name or "").strip() or EMBEDDED
    try:
        get_tokenizer(name)
    except MaskLensError as e:
        return (*view(session, _err(e)), _template_text(session), session.settings.response_template)
    except Exception as e:  # noqa: BLE001
        log.exception("tokenizer failed")
        return (*view(session, _err(e)), _template_text(session), session.settings.response_template)
    session.tokenizer_name = name
    session.chat_template = session.auto_template = None
    notice = fit_template(session)
    try:
        session.settings.response_template = _default_response_template(session)
    except Exception:  # noqa: BLE001 - a tokenizer without a chat template: keep the old default
        pass
    return (*view(session, notice=notice), _template_text(session), session.settings.response_template)


def on_sample(session: Session, choice: str):
    """The Data picker: a bundled sample, or the session's uploaded file again. The strategy and the chat template
    follow the data (fit_strategy, fit_template). Returns InspectOut + (chat template text)."""
    if choice == data_value(session) and session.index == 0 and session.turn is None:
        return _unchanged()  # Gradio's dropdown sends a pick twice: the second must not wipe the first's notice
    previous = data_kind(session.data)
    try:
        up = session.uploaded
        if up is not None and choice == UPLOADED + up.name:
            session.data = up
        else:
            session.data = load_sample(choice)
        session.index, session.turn = 0, None
    except Exception as e:  # noqa: BLE001
        return (*view(session, _err(e)), _template_text(session))
    notice = _fit(session, previous)
    return (*view(session, notice=notice), _template_text(session))


def _unchanged() -> tuple:
    """Nothing to update: InspectOut's outputs and the template text, all skipped."""
    return tuple(gr.skip() for _ in range(len(InspectOut._fields) + 1))


def on_upload(session: Session, path: str | None):
    """An uploaded file: valid rows are shown, bad rows listed; a file that cannot be read at all is an error box.
    The Data picker selects it; the strategy and chat template follow it. Returns InspectOut + (chat template text)."""
    if not path:
        return (*view(session), _template_text(session))
    try:
        data = load_dataset(path, Path(path).name)
    except MaskLensError as e:
        return (*view(session, _err(e)), _template_text(session))
    except Exception as e:  # noqa: BLE001
        log.exception("upload failed")
        return (*view(session, _err(e)), _template_text(session))
    previous = data_kind(session.data)
    session.data = session.uploaded = data
    session.index, session.turn = 0, None
    if data.errors:
        gr.Warning(f"{data.name}: {len(data.errors)} of {data.n_rows} rows could not be read (listed under Data)",
                   duration=6)
    notice = _fit(session, previous)
    return (*view(session, notice=notice), _template_text(session))


def on_settings(session: Session, *values) -> InspectOut:
    """Any masking control changed: values in the order of Settings' fields. A bad combination (split_turns with
    another strategy than assistant_only) is resolved as the controls show it: split_turns goes off."""
    s = Settings(*values)
    s.train_roles = tuple(s.train_roles or ())
    s.max_length = int(s.max_length or 0)
    s.split_turns = bool(s.split_turns) and s.strategy == "assistant_only"
    if trl_cannot_patch(session):  # the Template source radio was locked on the source in effect: not a choice
        s.template_source = session.settings.template_source
    if not s.split_turns:
        session.turn = None
    session.settings = s
    return view(session)


def on_display(session: Session, underline: str, shift: bool, inference: bool) -> InspectOut:
    """A token view display option changed (bar colour, label-shift markers, inference rendering)."""
    session.display = {"underline": underline if underline in render.UNDERLINES else "part", "shift": bool(shift),
                       "inference": bool(inference)}
    return view(session)


def on_turn(session: Session, turn) -> InspectOut:
    """split_turns: show the example of another assistant turn of the current row."""
    try:
        session.turn = int(turn) if turn not in (None, "") else None
    except (TypeError, ValueError):
        session.turn = None
    return view(session)


def on_nav(session: Session, step: int) -> InspectOut:
    session.index += step
    session.turn = None
    if session.data is not None and session.data.examples:
        session.index %= len(session.data.examples)
    return view(session)


def on_prev(session: Session) -> InspectOut:
    return on_nav(session, -1)


def on_next(session: Session) -> InspectOut:
    return on_nav(session, 1)


def on_jump(session: Session, number) -> InspectOut:
    """Jump to example `number` (1-based, as shown); a number out of range opens the first / last example and says
    so."""
    notice = ""
    try:
        n = len(session.data.examples) if session.data is not None else 1
        wanted = int(number or 1)
        session.index = max(0, min(wanted - 1, n - 1))  # 0, -3 or 99 open the first / last example
        session.turn = None
        if wanted != session.index + 1:
            notice = (f"There is no example {wanted}: this data has {n} example{'s' if n != 1 else ''}, so example "
                      f"{session.index + 1} (the {'first' if wanted < 1 else 'last'}) is shown.")
    except (TypeError, ValueError):
        pass
    return view(session, notice=notice)


def open_row(session: Session, position: int, turn: int | None = None) -> InspectOut:
    """Open the example at a position of the dataset (used by Audit's 'open in Inspect'); `turn` with split_turns."""
    session.index = int(position)
    session.turn = turn
    return view(session)


def on_apply_json(session: Session, text: str) -> InspectOut:
    """Replace the current example with the edited JSON (or start a one-example dataset)."""
    from .session import Dataset  # noqa: PLC0415

    row = session.example.row if session.example is not None else 0
    try:
        ex = parse_example_json(text or "", row)
    except MaskLensError as e:
        return view(session, _err(e))
    ex.source = "edited"
    if session.data is None or not session.data.examples:
        session.data = Dataset("pasted example", [ex], list(session.data.errors) if session.data else [], 1)
        session.index = 0
    else:
        examples = list(session.data.examples)
        examples[session.index] = ex
        was_upload = session.data is session.uploaded
        session.data = dataclasses.replace(session.data, examples=examples)
        if was_upload:
            session.uploaded = session.data
    return view(session)


def on_apply_template(session: Session, text: str) -> InspectOut:
    text = text or ""
    own = _template_text_of_tokenizer(session)
    session.chat_template = None if (not text.strip() or text == own) else text
    session.auto_template = None
    return view(session)


def on_pick_template(session: Session, choice: str):
    """The chat template picker: the tokenizer's own, or one of TRL's shipped templates (as a model's tokenizer
    carries it, so TRL's training-template swap shows), or the tokenizer's own with proven {% generation %} markers
    (on_use_marked). Returns InspectOut + (template text for the code box)."""
    if choice == template_choice(session) and choice != EDITED_TEMPLATE:
        return _unchanged()  # a pick sent twice (see on_sample)
    session.auto_template = None
    if choice == MARKED_TEMPLATE:
        return on_use_marked(session)
    if choice == TOKENIZER_TEMPLATE:
        session.chat_template = None
    elif choice and choice.startswith("trl:"):
        path = trl_inference_templates().get(choice[4:])
        if path is None:
            return (*view(session, _err(MaskLensError(f"TRL ships no chat template {choice[4:]!r}",
                                                      field="chat template"))), gr.update())
        session.chat_template = _read(path)
    # EDITED_TEMPLATE: keep what the Chat template box holds (Apply template sets it)
    return (*view(session), _template_text(session))


def on_use_marked(session: Session):
    """One click where TRL cannot patch the template: the template in use with {% generation %} markers added,
    proven on the data (its first MARKED_PROOF_ROWS conversations) and a probe before it is used: identical
    rendering, TRL's mask equal to assistant_only's. Returns InspectOut + (template text for the code box)."""
    try:
        marked, proof = marked_twin(session, MARKED_PROOF_ROWS)
    except MaskLensError as e:  # markers cannot be added to this template: say so in the page
        return (*view(session, _err(e)), _template_text(session))
    except Exception as e:  # noqa: BLE001 - a bug: reported in the page, the server keeps serving
        log.exception("marking the template failed")
        return (*view(session, render.error_html(f"{type(e).__name__}: {e}", "Unexpected error")),
                _template_text(session))
    if not proof.ok:
        return (*view(session, render.proof_html(proof)), _template_text(session))
    session.chat_template, session.auto_template = marked, None
    notice = (f"Chat template: <b>{render.esc(template_name(session))}</b>, proven on {proof.n_conversations} "
              "conversations (this data's and a probe): it renders them byte for byte as before, and TRL's "
              "<code>assistant_only_loss</code> mask on it equals MaskLens's assistant_only. Download it from the "
              "Templates tab.")
    return (*view(session, notice=notice), _template_text(session))


def on_use_template(session: Session, text: str):
    """Use a template from another tab (Templates' marked twin) and switch to Inspect.
    Returns InspectOut + (template text, Tabs update, the Templates tab's message)."""
    if not (text or "").strip():
        msg = render.error_html("Generate a marked template first (the button on the left).", "No template")
        return (*view(session), gr.update(), gr.Tabs(), msg)
    session.chat_template, session.auto_template = text, None
    return (*view(session), text, gr.Tabs(selected="inspect"), gr.update())


def on_reset_template(session: Session):
    session.chat_template = session.auto_template = None
    return (*view(session), _template_text(session))


def _template_text_of_tokenizer(session: Session) -> str:
    try:
        return session.tokenizer_template()
    except Exception:  # noqa: BLE001
        return ""


# ------------------------------------------------------------------------------------------------------ layout
@dataclass
class InspectTab:
    """Handles other tabs need: the outputs of `view` (to open an example from Audit) and the session."""

    session: gr.State
    outputs: list
    load_outputs: list
    controls: dict


SETTING_FIELDS = ["strategy", "eos", "train_roles", "response_template", "instruction_template", "templates_as_ids",
                  "max_length", "truncation", "use_generation_markers", "template_source", "reasoning", "empty_think",
                  "mask_tokens", "split_turns", "pad_token"]


def build_inspect_tab(session: gr.State) -> InspectTab:
    """The Inspect tab's components and events (call inside a gr.Tab)."""
    s0 = Settings()
    with gr.Row(equal_height=False, elem_classes="inspect-row"):
        with gr.Column(scale=1, min_width=300, elem_classes="controls"):
            with gr.Row(elem_classes="tok-row"):
                tok_name = gr.Textbox(value=EMBEDDED, label="Tokenizer", scale=4, elem_id="tokenizer-name",
                                      placeholder="embedded | org/model | /path/to/dir")
                tok_btn = gr.Button("Load", scale=0, min_width=64, size="md", elem_id="tokenizer-load")
            tpl_pick = gr.Dropdown(choices=template_choices(), value=TOKENIZER_TEMPLATE, label="Chat template",
                                   filterable=True, elem_id="template-pick",
                                   info="the tokenizer's own, or one TRL ships (e.g. qwen3: TRL swaps in its training "
                                        "twin), rendered with this tokenizer's vocabulary")
            with gr.Row(elem_classes="data-row"):
                sample = gr.Dropdown(choices=sample_choices(), value=DEFAULT_SAMPLE, label="Data", scale=4,
                                     elem_id="sample", info="a bundled sample, or your file (Upload…)")
                upload = gr.UploadButton("Upload…", type="filepath", size="md", scale=0, min_width=80,
                                         file_types=UPLOAD_TYPES, elem_id="upload")
            data_info = gr.HTML(elem_id="data-info")
            strategy = gr.Radio(choices=strategy_choices(s0.strategy), value=s0.strategy, label="Strategy",
                                info=strategy_info(s0.strategy), elem_id="strategy")
            with gr.Accordion("Options", open=True, elem_classes=["opts", "fold-narrow"], elem_id="options"):
                with gr.Column(visible=_decides_parts(s0.strategy), elem_id="parts-options") as parts_options:
                    source = gr.Radio(choices=template_source_choices(), value=s0.template_source,
                                      label="Template source", info=config_help("template_source"),
                                      elem_id="template-source")
                    with gr.Row(elem_classes="pair"):
                        reasoning = gr.Radio(choices=list(TRAIN_MASK), value=s0.reasoning, label="Reasoning",
                                             info="think blocks: train, or mask (rendered, not trained)",
                                             elem_id="reasoning", min_width=120)
                        empty_think = gr.Radio(choices=list(TRAIN_MASK), value=s0.empty_think, label="Empty think",
                                               info="think blocks / scaffolding the template inserts",
                                               elem_id="empty-think", min_width=120)
                    split = gr.Checkbox(value=s0.split_turns, label="split_turns (only with assistant_only)",
                                        info=config_help("split_turns"), elem_id="split-turns")
                    eos = gr.Radio(choices=list(EOS_MODES), value=s0.eos, label="EOS / end-of-turn",
                                   info=config_help("eos"))
                    roles = gr.CheckboxGroup(choices=list(ROLES), value=list(s0.train_roles), label="Train roles",
                                             info=config_help("train_roles"))
                mask_tokens = gr.Textbox(value="", label="Never train these tokens",
                                         info=MASK_TOKENS_INFO,
                                         placeholder="</think>", elem_id="mask-tokens")
                with gr.Group(visible=s0.strategy == "response_template", elem_id="rt-options") as rt_options:
                    resp = gr.Textbox(value=s0.response_template, label="Response template",
                                      info=config_help("response_template") + r" (\n = newline)",
                                      elem_id="response-template")
                    instr = gr.Textbox(value=s0.instruction_template, label="Instruction template",
                                       info=config_help("instruction_template"),
                                       placeholder=r"e.g. <|im_start|>user\n")
                    as_ids = gr.Checkbox(value=s0.templates_as_ids,
                                         label="Templates are token ids (comma-separated)")
                    pad = gr.Textbox(value=s0.pad_token, label="Pad token", info=config_help("pad_token"),
                                     placeholder="default: the tokenizer's pad token, else its EOS",
                                     elem_id="pad-token")
                    pad_note = gr.HTML(elem_id="pad-note")
                with gr.Row():
                    max_len = gr.Number(value=s0.max_length, label="max_length (0 = none)", precision=0,
                                        elem_id="inspect-max-length", min_width=100)
                    trunc = gr.Radio(choices=list(TRUNCATION_MODES), value=s0.truncation, label="Truncation",
                                     min_width=120)
                gen = gr.Checkbox(value=s0.use_generation_markers, label="Use {% generation %} markers",
                                  info=config_help("use_generation_markers"))
            with gr.Accordion("Chat template", open=False):
                tpl_code = gr.Code(language="jinja2", label="Chat template (edit, then Apply)", interactive=True,
                                   lines=10, max_lines=30, elem_id="chat-template")
                with gr.Row():
                    tpl_apply = gr.Button("Apply template", size="sm", variant="primary")
                    tpl_reset = gr.Button("Tokenizer's template", size="sm")
        with gr.Column(scale=4, min_width=420, elem_classes="viewcol"):
            with gr.Row(elem_classes="nav"):
                prev_btn = gr.Button("◀ Prev", size="sm", min_width=70, scale=0, elem_id="prev")
                number = gr.Number(value=1, label="Example", precision=0, min_width=90, scale=0,
                                   elem_id="example-number", show_label=False, container=False)
                next_btn = gr.Button("Next ▶", size="sm", min_width=70, scale=0, elem_id="next")
                caption = gr.HTML(elem_id="caption")
            turns = gr.Radio(choices=[], label="split_turns: examples of this row", visible=False,
                             elem_id="turn-pick")
            error = gr.HTML(elem_id="inspect-error")
            notice = gr.HTML(elem_id="inspect-notice")
            template_line = gr.HTML(elem_id="template-line")
            use_marked = gr.Button("Use a proven {% generation %}-marked copy: TRL trains on it the same way",
                                   visible=False, size="sm", variant="primary", elem_id="use-marked")
            with gr.Row(elem_classes="tv-tools", elem_id="tv-tools"):
                gr.HTML('<span class="tools-label">bar under each token:</span>', padding=False)
                underline = gr.Radio(choices=list(render.UNDERLINES), value=DISPLAY_DEFAULTS["underline"],
                                     label="bar under tokens", container=False, scale=0, min_width=160,
                                     elem_id="underline")
                shift = gr.Checkbox(value=DISPLAY_DEFAULTS["shift"], label="label shift", container=False, scale=0,
                                    min_width=110, elem_id="shift-toggle")
                inference = gr.Checkbox(value=DISPLAY_DEFAULTS["inference"], label="inference rendering",
                                        container=False, scale=0, min_width=160, elem_id="inference-toggle")
            legend = gr.HTML(render.legend_html(), elem_id="legend")
            token_view = gr.HTML(render.token_view_html([], empty="Loading the embedded tokenizer and a sample…"),
                                 js_on_load=TOKEN_VIEW_JS, elem_id="token-view-box", elem_classes="tvbox")
            inference_view = gr.HTML(elem_id="inference-view")
        with gr.Column(scale=2, min_width=300, elem_classes="sidecol"):
            stats = gr.HTML(elem_id="stats")
            findings = gr.HTML(elem_id="findings", js_on_load=FINDINGS_JS)
            with gr.Accordion("Example JSON", open=True, elem_classes="fold-narrow"):
                raw = gr.Code(language="json", interactive=True, lines=12, max_lines=40, show_label=False,
                              wrap_lines=True, elem_id="example-json")
                apply_json = gr.Button("Render edited JSON", size="sm", elem_id="apply-json")

    outputs = [session, token_view, stats, findings, raw, number, caption, error, data_info, strategy, template_line,
               legend, turns, inference_view, rt_options, split, pad_note, tpl_pick, mask_tokens, parts_options,
               source, use_marked, sample, notice]
    assert len(outputs) == len(InspectOut._fields)
    settings_inputs = [strategy, eos, roles, resp, instr, as_ids, max_len, trunc, gen, source, reasoning, empty_think,
                       mask_tokens, split, pad]
    assert [f.name for f in dataclasses.fields(Settings)] == SETTING_FIELDS

    tok_args = dict(fn=on_tokenizer, inputs=[session, tok_name], outputs=outputs + [tpl_code, resp])
    tok_btn.click(**tok_args)
    tok_name.submit(**tok_args)
    tpl_pick.input(on_pick_template, [session, tpl_pick], outputs + [tpl_code])
    sample.input(on_sample, [session, sample], outputs + [tpl_code])
    upload.upload(on_upload, [session, upload], outputs + [tpl_code])
    use_marked.click(on_use_marked, [session], outputs + [tpl_code])
    for c in (strategy, eos, roles, as_ids, trunc, gen, source, reasoning, empty_think, split):
        c.input(on_settings, [session, *settings_inputs], outputs)
    # Enter applies a text box; no blur event: a click on another control blurs the box first, and the blur's pending
    # render would cover that control (Gradio's progress overlay) and swallow the click. The clicked control's own
    # event sends every box's current text anyway.
    for c in (resp, instr, max_len, mask_tokens, pad):
        c.submit(on_settings, [session, *settings_inputs], outputs)
    for c in (underline, shift, inference):
        c.input(on_display, [session, underline, shift, inference], outputs)
    turns.input(on_turn, [session, turns], outputs)
    prev_btn.click(on_prev, [session], outputs)
    next_btn.click(on_next, [session], outputs)
    number.submit(on_jump, [session, number], outputs)
    apply_json.click(on_apply_json, [session, raw], outputs)
    tpl_apply.click(on_apply_template, [session, tpl_code], outputs)
    tpl_reset.click(on_reset_template, [session], outputs + [tpl_code])

    return InspectTab(session=session, outputs=outputs, load_outputs=outputs + [tok_name, tpl_code, resp],
                      controls={"strategy": strategy, "number": number, "token_view": token_view, "error": error,
                                "chat_template": tpl_code, "settings": settings_inputs})
