"""Inspect: one example at a time, every token with its label and the rule that decided it.

Where things are: the callbacks (here: module-level functions tests call directly; each takes the per-user Session
and UI values and returns InspectOut), what a view shows (app.inspect_view), the pickers and what follows the data
(app.pickers), the option controls generated from MaskConfig's metadata (app.controls), the HTML (app.render).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import gradio as gr

from core.data.formats import KIND_MESSAGES
from core.errors import MaskLensError
from core.masking.options import option

from . import render
from .controls import build_option_controls, option_control
from .inspect_view import DISPLAY_DEFAULTS, InspectOut, err_html, kept_data, kept_tokenizer, view
from .pickers import (EDITED_TEMPLATE, MARKED_PROOF_ROWS, MARKED_TEMPLATE, TOKENIZER_TEMPLATE, UPLOADED, data_kind,
                      data_value, fit_strategy, fit_template, marked_twin, read_template, template_choice,
                      template_choices, template_name, trl_cannot_patch, trl_inference_templates)
from .session import (DEFAULT_SAMPLE, EMBEDDED, SETTING_FIELDS, UPLOAD_TYPES, Session, Settings, coherent, escape,
                      get_tokenizer, load_dataset, load_sample, parse_example_json, sample_choices)

log = logging.getLogger(__name__)


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
            errors.append(err_html(e))
    try:
        session.data = load_dataset(data_path, str(data_path)) if data_path else load_sample(DEFAULT_SAMPLE)
    except Exception as e:  # noqa: BLE001
        errors.append(err_html(e))
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
        return (*view(session, err_html(e, kept_tokenizer(session))), _template_text(session),
                session.settings.response_template)
    except Exception as e:  # noqa: BLE001
        log.exception("tokenizer failed")
        return (*view(session, err_html(e, kept_tokenizer(session))), _template_text(session),
                session.settings.response_template)
    session.tokenizer_name = name
    session.chat_template = session.auto_template = None
    notice = fit_template(session)
    try:
        session.settings.response_template = _default_response_template(session)
    except Exception:  # noqa: BLE001 - a tokenizer without a chat template: keep the old default
        pass
    return (*view(session, notice=notice), _template_text(session), session.settings.response_template)


_PICKS: dict[int, threading.Lock] = {}  # id(session) -> the lock its pickers take (dropped with the session)
_PICKS_GUARD = threading.Lock()


def _one_pick_at_a_time(session: Session) -> threading.Lock:
    """A session's picker lock. Gradio's dropdown sends a pick twice, and the queue may run the two at once: the
    second must see what the first did (and skip), not load the data again beside it and send a view without the
    first's notice after it."""
    with _PICKS_GUARD:
        lock = _PICKS.get(id(session))
        if lock is None:
            lock = _PICKS[id(session)] = threading.Lock()
            weakref.finalize(session, _PICKS.pop, id(session), None)
        return lock


def on_sample(session: Session, choice: str):
    """The Data picker: a bundled sample, or the session's uploaded file again. The strategy and the chat template
    follow the data (fit_strategy, fit_template). Returns InspectOut + (chat template text)."""
    with _one_pick_at_a_time(session):
        return _on_sample(session, choice)


def _on_sample(session: Session, choice: str):
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
        return (*view(session, err_html(e, kept_data(session))), _template_text(session))
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
        return (*view(session, err_html(e, kept_data(session))), _template_text(session))
    except Exception as e:  # noqa: BLE001
        log.exception("upload failed")
        return (*view(session, err_html(e, kept_data(session))), _template_text(session))
    previous = data_kind(session.data)
    session.data = session.uploaded = data
    session.index, session.turn = 0, None
    if data.errors:
        gr.Warning(f"{data.name}: {len(data.errors)} of {data.n_rows} rows could not be read (listed under Data)",
                   duration=6)
    notice = _fit(session, previous)
    return (*view(session, notice=notice), _template_text(session))


def on_settings(session: Session, *values) -> InspectOut:
    """Any masking control changed: values in the order of Settings' fields (SETTING_FIELDS). A bad combination
    (split_turns with another strategy than assistant_only) is resolved as the controls show it: split_turns goes
    off."""
    s = coherent(Settings(*values))
    if trl_cannot_patch(session):  # the Template source radio was locked on the source in effect: not a choice
        s = dataclasses.replace(s, template_source=session.settings.template_source)
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
        return view(session, err_html(e))
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
    with _one_pick_at_a_time(session):
        return _on_pick_template(session, choice)


def _on_pick_template(session: Session, choice: str):
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
            return (*view(session, err_html(MaskLensError(f"TRL ships no chat template {choice[4:]!r}",
                                                      field="chat template"))), gr.update())
        session.chat_template = read_template(path)
    # EDITED_TEMPLATE: keep what the Chat template box holds (Apply template sets it)
    return (*view(session), _template_text(session))


def on_use_marked(session: Session):
    """One click where TRL cannot patch the template: the template in use with {% generation %} markers added,
    proven on the data (its first MARKED_PROOF_ROWS conversations) and a probe before it is used: identical
    rendering, TRL's mask equal to assistant_only's. Returns InspectOut + (template text for the code box)."""
    try:
        marked, proof = marked_twin(session, MARKED_PROOF_ROWS)
    except MaskLensError as e:  # markers cannot be added to this template: say so in the page
        return (*view(session, err_html(e)), _template_text(session))
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
    """Handles other tabs need: the outputs of `view` (to open an example from Audit), the session, the Chat template
    code box (Templates' "use" sets it)."""

    session: gr.State
    outputs: list
    load_outputs: list
    chat_template: gr.Code


def _sources() -> SimpleNamespace:
    """Tokenizer, Chat template and Data pickers (the top of the controls column)."""
    with gr.Row(elem_classes="tok-row"):
        tok_name = gr.Textbox(value=EMBEDDED, label="Tokenizer", scale=4, elem_id="tokenizer-name",
                              placeholder="embedded | org/model | /path/to/dir")
        tok_btn = gr.Button("Load", scale=0, min_width=64, size="md", elem_id="tokenizer-load")
    tpl_pick = gr.Dropdown(choices=template_choices(), value=TOKENIZER_TEMPLATE, label="Chat template",
                           filterable=True, elem_id="template-pick",
                           info="the tokenizer's own, or one TRL ships (e.g. qwen3: TRL swaps in its training "
                                "twin), rendered with this tokenizer's vocabulary")
    with gr.Row(elem_classes="data-row"):
        sample = gr.Dropdown(choices=sample_choices(), value=DEFAULT_SAMPLE, label="Data", scale=4, elem_id="sample",
                             info="a bundled sample, or your file (Upload…)")
        upload = gr.UploadButton("Upload…", type="filepath", size="md", scale=0, min_width=80,
                                 file_types=UPLOAD_TYPES, elem_id="upload")
    return SimpleNamespace(tok_name=tok_name, tok_btn=tok_btn, tpl_pick=tpl_pick, sample=sample, upload=upload,
                           data_info=gr.HTML(elem_id="data-info"))


def _masking(s0: Settings):
    """The Strategy radio, the Options panel generated from MaskConfig's options (app.controls), the pad note and the
    Chat template code box. Returns (OptionControls with the strategy among them, pad note, code box, its buttons)."""
    strategy = option_control(option("strategy"), s0.strategy, "strategy")
    with gr.Accordion("Options", open=True, elem_classes=["opts", "fold-narrow"], elem_id="options"):
        opts = build_option_controls(s0, lambda name: name.replace("_", "-"))
        pad_note = gr.HTML(elem_id="pad-note")
    opts.controls["strategy"] = strategy
    with gr.Accordion("Chat template", open=False):
        code = gr.Code(language="jinja2", label="Chat template (edit, then Apply)", interactive=True, lines=10,
                       max_lines=30, elem_id="chat-template")
        with gr.Row():
            apply, reset = gr.Button("Apply template", size="sm", variant="primary"), gr.Button(
                "Tokenizer's template", size="sm")
    return opts, pad_note, code, apply, reset


def _view_column() -> SimpleNamespace:
    """Navigation, the lines above the tokens, display options, legend, token view, inference rendering."""
    with gr.Row(elem_classes="nav"):
        prev_btn = gr.Button("◀ Prev", size="sm", min_width=70, scale=0, elem_id="prev")
        number = gr.Number(value=1, label="Example", precision=0, min_width=90, scale=0, elem_id="example-number",
                           show_label=False, container=False)
        next_btn = gr.Button("Next ▶", size="sm", min_width=70, scale=0, elem_id="next")
        caption = gr.HTML(elem_id="caption")
    turns = gr.Radio(choices=[], label="split_turns: examples of this row", visible=False, elem_id="turn-pick")
    error, notice, template_line = (gr.HTML(elem_id=i) for i in ("inspect-error", "inspect-notice", "template-line"))
    use_marked = gr.Button("Use a proven {% generation %}-marked copy: TRL trains on it the same way", visible=False,
                           size="sm", variant="primary", elem_id="use-marked")
    with gr.Row(elem_classes="tv-tools", elem_id="tv-tools"):
        gr.HTML('<span class="tools-label">bar under each token:</span>', padding=False)
        underline = gr.Radio(choices=list(render.UNDERLINES), value=DISPLAY_DEFAULTS["underline"],
                             label="bar under tokens", container=False, scale=0, min_width=160, elem_id="underline")
        shift = gr.Checkbox(value=DISPLAY_DEFAULTS["shift"], label="label shift", container=False, scale=0,
                            min_width=110, elem_id="shift-toggle")
        inference = gr.Checkbox(value=DISPLAY_DEFAULTS["inference"], label="inference rendering", container=False,
                                scale=0, min_width=160, elem_id="inference-toggle")
    legend = gr.HTML(render.legend_html(), elem_id="legend")
    token_view = gr.HTML(render.token_view_html([], empty="Loading the embedded tokenizer and a sample…"),
                         js_on_load=render.TOKEN_VIEW_JS, elem_id="token-view-box", elem_classes="tvbox")
    return SimpleNamespace(prev=prev_btn, number=number, next=next_btn, caption=caption, turns=turns, error=error,
                           notice=notice, template_line=template_line, use_marked=use_marked, underline=underline,
                           shift=shift, inference=inference, legend=legend, token_view=token_view,
                           inference_view=gr.HTML(elem_id="inference-view"))


def _side_column() -> SimpleNamespace:
    """Stats, findings and the example's JSON (editable)."""
    stats = gr.HTML(elem_id="stats")
    findings = gr.HTML(elem_id="findings", js_on_load=render.FINDINGS_JS)
    with gr.Accordion("Example JSON", open=True, elem_classes="fold-narrow"):
        raw = gr.Code(language="json", interactive=True, lines=12, max_lines=40, show_label=False, wrap_lines=True,
                      elem_id="example-json")
        apply_json = gr.Button("Render edited JSON", size="sm", elem_id="apply-json")
    return SimpleNamespace(stats=stats, findings=findings, raw=raw, apply_json=apply_json)


def build_inspect_tab(session: gr.State) -> InspectTab:
    """The Inspect tab's components and events (call inside a gr.Tab)."""
    with gr.Row(equal_height=False, elem_classes="inspect-row"):
        with gr.Column(scale=1, min_width=300, elem_classes="controls"):
            src = _sources()
            opts, pad_note, tpl_code, tpl_apply, tpl_reset = _masking(Settings())
        with gr.Column(scale=4, min_width=420, elem_classes="viewcol"):
            v = _view_column()
        with gr.Column(scale=2, min_width=300, elem_classes="sidecol"):
            side = _side_column()
    c = opts.controls
    outputs = [session, v.token_view, side.stats, side.findings, side.raw, v.number, v.caption, v.error, src.data_info,
               c["strategy"], v.template_line, v.legend, v.turns, v.inference_view, opts.groups["response_template"],
               c["split_turns"], pad_note, src.tpl_pick, c["mask_tokens"], opts.groups["assistant"],
               c["template_source"], v.use_marked, src.sample, v.notice]
    assert len(outputs) == len(InspectOut._fields)
    with_code = outputs + [tpl_code]

    tok_args = dict(fn=on_tokenizer, inputs=[session, src.tok_name], outputs=with_code + [c["response_template"]])
    src.tok_btn.click(**tok_args)
    src.tok_name.submit(**tok_args)
    src.tpl_pick.input(on_pick_template, [session, src.tpl_pick], with_code)
    src.sample.input(on_sample, [session, src.sample], with_code)
    src.upload.upload(on_upload, [session, src.upload], with_code)
    v.use_marked.click(on_use_marked, [session], with_code)
    opts.wire(on_settings, [session, *opts.inputs(SETTING_FIELDS)], outputs)
    for d in (v.underline, v.shift, v.inference):
        d.input(on_display, [session, v.underline, v.shift, v.inference], outputs)
    v.turns.input(on_turn, [session, v.turns], outputs)
    v.prev.click(on_prev, [session], outputs)
    v.next.click(on_next, [session], outputs)
    v.number.submit(on_jump, [session, v.number], outputs)
    side.apply_json.click(on_apply_json, [session, side.raw], outputs)
    tpl_apply.click(on_apply_template, [session, tpl_code], outputs)
    tpl_reset.click(on_reset_template, [session], with_code)
    return InspectTab(session=session, outputs=outputs, chat_template=tpl_code,
                      load_outputs=outputs + [src.tok_name, tpl_code, c["response_template"]])
