"""Inspect: one example at a time, every token with its label and the rule that decided it.

Callbacks are module-level functions (tests call them directly): they take the per-user Session and UI values, call
the engine through app.session, format with app.render, and return the outputs in a fixed order (InspectOut).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import gradio as gr

from core.data import ROLES
from core.engine import EOS_MODES, STRATEGIES, TRUNCATION_MODES, MaskConfig
from core.errors import MaskLensError

from . import render
from .session import (DEFAULT_SAMPLE, EMBEDDED, Session, Settings, escape, get_tokenizer, load_dataset,
                      load_sample, parse_example_json, sample_choices)

log = logging.getLogger(__name__)

# The token view's tooltip: one listener on the component, reading data-k from the hovered token and the view's
# data-info table (no per-token markup beyond id, label and key). Survives value updates: gradio swaps innerHTML
# below `element`, and the listener sits on `element` itself.
TOKEN_VIEW_JS = r"""
const tip = document.getElementById('ml-tip') || Object.assign(document.createElement('div'), {id: 'ml-tip'});
if (!tip.parentNode) document.body.appendChild(tip);
const cache = new WeakMap();
const info = (tv) => {
  let v = cache.get(tv);
  if (!v) {
    v = {t: JSON.parse(tv.dataset.info || '[]'), toks: tv.querySelectorAll('[data-token-id]')};
    cache.set(tv, v);
  }
  return v;
};
element.addEventListener('mouseover', (e) => {
  const s = e.target.closest && e.target.closest('[data-token-id]');
  if (!s) { tip.style.display = 'none'; return; }
  const tv = s.closest('.tv'); if (!tv) return;
  const v = info(tv);
  const pos = Array.prototype.indexOf.call(v.toks, s);
  const [msg, role, part, rule] = v.t[+s.dataset.k] || [null, '', '', ''];
  const lab = s.dataset.label;
  const where = msg === null ? 'template text (no message)' : role ? `message ${msg} (${role})` : `example #${msg + 1}`;
  tip.className = lab === '-100' ? 'tip-n' : 'tip-y';
  const text = s.textContent.replace(/·/g, ' ').replace(/→/g, '\t').replace(/↵/g, '\n').replace(/␍/g, '\r');
  tip.textContent = `#${pos}  id ${s.dataset.tokenId}  label ${lab}${lab === '-100' ? ' (ignored)' : ''}` +
    `${s.classList.contains('x') ? '  special' : ''}\n${where} · ${part}\n${rule}\ntext ${JSON.stringify(text)}`;
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


def view(session: Session, error: str = "") -> InspectOut:
    """Render the session's current example. Never raises: a problem becomes the in-page error box."""
    data_info = render.data_info_html(session.data)
    ex = session.example
    if ex is None:
        why = "No valid example in this dataset: see the rows skipped." if session.data is not None else \
            "No data yet: choose a sample, upload a file or paste an example."
        return InspectOut(session, render.token_view_html([], empty=why), "", "", "", 0, "", error, data_info)
    session.index = max(0, min(session.index, len(session.data.examples) - 1))
    n = len(session.data.examples)
    caption = render.example_caption(ex, session.index, n)
    raw = render.raw_json(ex)
    try:
        tok = session.tokenizer()
        r = session.render_current()
        infos = r.tokens(tok)
    except MaskLensError as e:
        msg = str(e)
        gr.Warning(msg)
        return InspectOut(session, render.token_view_html([], empty="Nothing rendered: see the error above."), "",
                          "", raw, session.index + 1, caption, error + render.error_html(msg), data_info)
    except Exception as e:  # a bug or an exotic tokenizer/template: report it in the page, keep the server up
        log.exception("rendering failed")
        msg = f"{type(e).__name__}: {e}"
        gr.Warning(msg)
        return InspectOut(session, render.token_view_html([], empty="Nothing rendered: see the error above."), "",
                          "", raw, session.index + 1, caption, error + render.error_html(msg, "Unexpected error"),
                          data_info)
    return InspectOut(session, render.token_view_html(infos, truncated_at_start=r.truncated_at_start),
                      render.stats_html(r, infos), render.findings_html(r.findings), raw, session.index + 1, caption,
                      error, data_info)


def _err(e: Exception) -> str:
    msg = str(e)
    gr.Warning(msg)
    return render.error_html(msg)


# ------------------------------------------------------------------------------------------------------ callbacks
def on_load(data_path: str | None = None, tokenizer_name: str | None = None):
    """Page load: the embedded tokenizer (or tokenizer_name) and the default sample (or data_path) under
    assistant_only. Returns InspectOut + (tokenizer name, sample, chat template text, response template)."""
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
    try:
        session.settings.response_template = _default_response_template(session)
    except Exception:  # noqa: BLE001 - no chat template: keep the default text
        pass
    out = view(session, "".join(errors))
    sample = DEFAULT_SAMPLE if not data_path else None
    return (*out, session.tokenizer_name, sample, _template_text(session), session.settings.response_template)


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
    from core.templates import analyze_template  # noqa: PLC0415

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
    session.chat_template = None
    try:
        session.settings.response_template = _default_response_template(session)
    except Exception:  # noqa: BLE001 - a tokenizer without a chat template: keep the old default
        pass
    return (*view(session), _template_text(session), session.settings.response_template)


def on_sample(session: Session, file_name: str) -> InspectOut:
    try:
        session.data = load_sample(file_name)
        session.index = 0
    except Exception as e:  # noqa: BLE001
        return view(session, _err(e))
    return view(session)


def on_upload(session: Session, path: str | None) -> InspectOut:
    """An uploaded file: valid rows are shown, bad rows listed; a file that cannot be read at all is an error box."""
    if not path:
        return view(session)
    try:
        data = load_dataset(path, Path(path).name)
    except MaskLensError as e:
        return view(session, _err(e))
    except Exception as e:  # noqa: BLE001
        log.exception("upload failed")
        return view(session, _err(e))
    session.data, session.index = data, 0
    if data.errors:
        gr.Warning(f"{data.name}: {len(data.errors)} of {data.n_rows} rows could not be read (listed under Data)")
    return view(session)


def on_settings(session: Session, *values) -> InspectOut:
    """Any masking control changed: values in the order of Settings' fields."""
    s = Settings(*values)
    s.train_roles = tuple(s.train_roles or ())
    s.max_length = int(s.max_length or 0)
    session.settings = s
    return view(session)


def on_nav(session: Session, step: int) -> InspectOut:
    session.index += step
    if session.data is not None and session.data.examples:
        session.index %= len(session.data.examples)
    return view(session)


def on_prev(session: Session) -> InspectOut:
    return on_nav(session, -1)


def on_next(session: Session) -> InspectOut:
    return on_nav(session, 1)


def on_jump(session: Session, number) -> InspectOut:
    """Jump to example `number` (1-based, as shown)."""
    try:
        session.index = int(number or 1) - 1
    except (TypeError, ValueError):
        pass
    return view(session)


def open_row(session: Session, position: int) -> InspectOut:
    """Open the example at a position of the dataset (used by Audit's 'open in Inspect')."""
    session.index = int(position)
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
        session.data = dataclasses.replace(session.data, examples=examples)
    return view(session)


def on_apply_template(session: Session, text: str) -> InspectOut:
    text = text or ""
    own = _template_text_of_tokenizer(session)
    session.chat_template = None if (not text.strip() or text == own) else text
    return view(session)


def on_use_template(session: Session, text: str):
    """Use a template from another tab (Templates' marked twin) and switch to Inspect.
    Returns InspectOut + (template text, Tabs update)."""
    if not (text or "").strip():
        return (*view(session, render.error_html("Generate a marked template first.", "No template")), gr.update(),
                gr.Tabs())
    session.chat_template = text
    return (*view(session), text, gr.Tabs(selected="inspect"))


def on_reset_template(session: Session):
    session.chat_template = None
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


def build_inspect_tab(session: gr.State) -> InspectTab:
    """The Inspect tab's components and events (call inside a gr.Tab)."""
    s0 = Settings()
    with gr.Row(equal_height=False, elem_classes="inspect-row"):
        with gr.Column(scale=1, min_width=300, elem_classes="controls"):
            with gr.Row(elem_classes="tok-row"):
                tok_name = gr.Textbox(value=EMBEDDED, label="Tokenizer", scale=4, elem_id="tokenizer-name",
                                      placeholder="embedded | org/model | /path/to/dir")
                tok_btn = gr.Button("Load", scale=0, min_width=64, size="md", elem_id="tokenizer-load")
            with gr.Row(elem_classes="data-row"):
                sample = gr.Dropdown(choices=sample_choices(), value=DEFAULT_SAMPLE, label="Data", scale=4,
                                     elem_id="sample")
                upload = gr.UploadButton("Upload…", type="filepath", size="md", scale=0, min_width=80,
                                         file_types=[".jsonl", ".json", ".parquet", ".csv"], elem_id="upload")
            data_info = gr.HTML(elem_id="data-info")
            strategy = gr.Radio(choices=STRATEGIES, value=s0.strategy, label="Strategy", elem_id="strategy")
            with gr.Accordion("Options", open=True, elem_classes="opts"):
                eos = gr.Radio(choices=list(EOS_MODES), value=s0.eos, label="EOS / end-of-turn",
                               info=config_help("eos"))
                roles = gr.CheckboxGroup(choices=list(ROLES), value=list(s0.train_roles), label="Train roles",
                                         info=config_help("train_roles"))
                resp = gr.Textbox(value=s0.response_template, label="Response template",
                                  info=config_help("response_template") + r" (\n = newline)",
                                  elem_id="response-template")
                instr = gr.Textbox(value=s0.instruction_template, label="Instruction template",
                                   info=config_help("instruction_template"), placeholder=r"e.g. <|im_start|>user\n")
                as_ids = gr.Checkbox(value=s0.templates_as_ids, label="Templates are token ids (comma-separated)")
                with gr.Row():
                    max_len = gr.Number(value=s0.max_length, label="max_length (0 = none)", precision=0, minimum=0,
                                        min_width=100)
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
                number = gr.Number(value=1, label="Example", precision=0, minimum=1, min_width=90, scale=0,
                                   elem_id="example-number", show_label=False, container=False)
                next_btn = gr.Button("Next ▶", size="sm", min_width=70, scale=0, elem_id="next")
                caption = gr.HTML(elem_id="caption")
            error = gr.HTML(elem_id="inspect-error")
            gr.HTML(render.legend_html())
            token_view = gr.HTML(render.token_view_html([], empty="Loading the embedded tokenizer and a sample…"),
                                 js_on_load=TOKEN_VIEW_JS, elem_id="token-view-box", elem_classes="tvbox")
        with gr.Column(scale=2, min_width=300, elem_classes="sidecol"):
            stats = gr.HTML(elem_id="stats")
            findings = gr.HTML(elem_id="findings", js_on_load=FINDINGS_JS)
            with gr.Accordion("Example JSON", open=True):
                raw = gr.Code(language="json", interactive=True, lines=12, max_lines=40, show_label=False,
                              wrap_lines=True, elem_id="example-json")
                apply_json = gr.Button("Render edited JSON", size="sm", elem_id="apply-json")

    outputs = [session, token_view, stats, findings, raw, number, caption, error, data_info]
    settings_inputs = [strategy, eos, roles, resp, instr, as_ids, max_len, trunc, gen]
    assert [f.name for f in dataclasses.fields(Settings)] == ["strategy", "eos", "train_roles", "response_template",
                                                              "instruction_template", "templates_as_ids", "max_length",
                                                              "truncation", "use_generation_markers"]

    tok_args = dict(fn=on_tokenizer, inputs=[session, tok_name], outputs=outputs + [tpl_code, resp])
    tok_btn.click(**tok_args)
    tok_name.submit(**tok_args)
    sample.input(on_sample, [session, sample], outputs)
    upload.upload(lambda s, p: (*on_upload(s, p), None), [session, upload], outputs + [sample])
    for c in (strategy, eos, roles, as_ids, trunc, gen):
        c.input(on_settings, [session, *settings_inputs], outputs)
    for c in (resp, instr, max_len):
        c.submit(on_settings, [session, *settings_inputs], outputs)
        c.blur(on_settings, [session, *settings_inputs], outputs)
    prev_btn.click(on_prev, [session], outputs)
    next_btn.click(on_next, [session], outputs)
    number.submit(on_jump, [session, number], outputs)
    apply_json.click(on_apply_json, [session, raw], outputs)
    tpl_apply.click(on_apply_template, [session, tpl_code], outputs)
    tpl_reset.click(on_reset_template, [session], outputs + [tpl_code])

    return InspectTab(session=session, outputs=outputs, load_outputs=outputs + [tok_name, sample, tpl_code, resp],
                      controls={"strategy": strategy, "number": number, "token_view": token_view, "error": error,
                                "chat_template": tpl_code})
