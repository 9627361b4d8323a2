"""Templates: how the chat template in use renders and masks, checked (core.checks).

The template is the one the Inspect tab uses (the tokenizer's, or the edited one). Sections: checks with pass/fail,
the current example and a probe conversation rendered with message spans, the derived response/instruction templates
with their ids alone and in context, a template string's usage across the dataset, and a {% generation %}-marked
twin of the template with its proof and a download.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import gradio as gr

from core.masking.checks import PROBE_CONVERSATION, derive_templates, render_spans, template_checks, template_usage
from core.masking.engine import MaskConfig, render_examples
from core.errors import MaskLensError
from core.masking.trl_templates import SOURCE_TRL_TWIN, training_template, trl_version

from . import render
from .session import Session, unescape
from .pickers import MARKED_TEMPLATE, marked_twin, template_choice

log = logging.getLogger(__name__)


def _template(session: Session) -> str:
    t = session.template()
    if not t:
        raise MaskLensError("the tokenizer has no chat template",
                            fix="edit one in Inspect → Chat template, or load a chat model's tokenizer")
    return t


def _fail(e: Exception) -> str:
    if not isinstance(e, MaskLensError):
        log.exception("templates tab")
        return render.error_html(f"{type(e).__name__}: {e}", "Unexpected error")
    return render.error_html(str(e))


def template_source_text(session: Session) -> str:
    """Which template the tab checks: the tokenizer's, one of TRL's picked in Inspect, or one edited there."""
    if not session.chat_template:
        return f"the chat template of tokenizer <code>{render.esc(session.tokenizer_name)}</code>"
    picked = template_choice(session)
    if picked.startswith("trl:"):
        return f"TRL's <code>{render.esc(picked[4:])}</code>, picked in Inspect"
    if picked == MARKED_TEMPLATE:
        return "the tokenizer's own chat template with the {% generation %} markers picked in Inspect"
    return "the template edited in Inspect"


def _twin_note(tok, template: str) -> str:
    """A line when TRL swaps in its own training twin for this template (no markers of the user's needed)."""
    try:
        tt = training_template(tok, template)
    except Exception:  # noqa: BLE001 - the checks below report a template that fails
        return ""
    if tt.source != SOURCE_TRL_TWIN:
        return ""
    return (f'<div class="hint">TRL {trl_version()} knows this template: under <code>assistant_only_loss=True</code> '
            f"it swaps in its own <code>{render.esc(tt.name or '')}</code> training template "
            "(<code>{% generation %}</code>-marked), so the missing markers below do not stop TRL; Inspect's "
            "assistant strategies render with that twin.</div>")


def on_templates(session: Session):
    """(source line, checks, spans of the current example and of the probe, derived templates)."""
    try:
        tok = session.tokenizer()
        template = _template(session)
        head = f'<div class="caption">Checking {template_source_text(session)}.</div>' + _twin_note(tok, template)
        checks = render.checks_html(template_checks(tok, template))
        spans = []
        ex = session.example
        if ex is not None and ex.messages:
            session.check_rows([ex])
            text, sp = render_spans(tok, ex.messages, template)
            spans.append(render.spans_html(text, sp, f"current example (row {ex.row})"))
        elif ex is not None:
            spans.append(f'<div class="caption">The current example is {render.esc(ex.kind)}: no chat template '
                         "involved.</div>")
        text, sp = render_spans(tok, PROBE_CONVERSATION, template)
        spans.append(render.spans_html(text, sp, "probe conversation"))
        derived = render.derived_html(derive_templates(tok, template))
    except Exception as e:  # noqa: BLE001 - shown in the page
        err = _fail(e)
        return err, "", "", ""
    return head, checks, "".join(spans), derived


def rendered_texts(session: Session) -> list[str]:
    """The dataset's rendered texts (what the old collator searched), pre-tokenized rows left out."""
    if session.data is None:
        return []
    cfg = MaskConfig(strategy="full", chat_template=session.chat_template)
    examples = [e for e in session.data.examples if e.kind != "tokens"]
    session.check_template()
    session.check_rows(examples)  # an edited template renders every row in the sandbox first (bounded)
    return [r.text for r in render_examples(examples, session.tokenizer(), cfg, errors="finding",
                                            image_root=session.data.root) if r.text]


def on_usage(session: Session, string: str) -> str:
    """Where a template string occurs in the dataset, and how it tokenizes there."""
    s = unescape(string or "")
    if not s.strip():
        return render.error_html("Type a template string, e.g. <|im_start|>assistant\\n", "Nothing to look for")
    try:
        texts = rendered_texts(session)
        return render.usage_html(template_usage(session.tokenizer(), s, texts), len(texts))
    except Exception as e:  # noqa: BLE001
        return _fail(e)


def on_generate(session: Session):
    """A {% generation %}-marked twin of the template in use, proven on the dataset and probes.

    Returns (proof HTML, marked template text, path of a .jinja file to download or None)."""
    try:
        tok = session.tokenizer()
        original = _template(session)
        tt = training_template(tok, original)
        if tt.source == SOURCE_TRL_TWIN:  # TRL's own twin: shown, not re-derived (it is not render-identical)
            path = Path(tempfile.mkdtemp(prefix="masklens-")) / f"{tt.name or 'chat_template'}_training.jinja"
            path.write_text(tt.template, encoding="utf-8")
            return (f'<div class="ok">TRL {trl_version()} ships a <code>{{% generation %}}</code>-marked training '
                    f"template for this one (<code>{render.esc(tt.name or '')}</code>) and swaps it in by itself under "
                    "<code>assistant_only_loss=True</code>: here it is, to read, download or use in Inspect. It "
                    "is prefix-preserving rather than identical to the inference template (e.g. earlier turns keep "
                    "their reasoning), so no render-identity proof applies.</div>", tt.template, str(path))
        marked, proof = marked_twin(session)
    except Exception as e:  # noqa: BLE001
        return _fail(e), "", None
    path = Path(tempfile.mkdtemp(prefix="masklens-")) / "chat_template_training.jinja"
    path.write_text(marked, encoding="utf-8")
    return render.proof_html(proof), marked, str(path)


def _with_button(proof: str, marked: str, path: str | None):
    return proof, marked, gr.DownloadButton(value=path, interactive=path is not None)


def build_templates_tab(session: gr.State) -> dict:
    """The Templates tab (call inside a gr.Tab). Returns {"refresh": event kwargs, "marked": code, "use": button}."""
    head = gr.HTML()
    with gr.Row(equal_height=False):
        with gr.Column(scale=3, min_width=420):
            gr.Markdown("#### Rendering with message spans")
            gr.HTML('<div class="legend"><span class="lg"><span class="sw sh-sw"></span>header</span>'
                    '<span class="lg"><span class="sw sc-sw"></span>content</span>'
                    '<span class="lg"><span class="sw se-sw"></span>end-of-turn / EOS</span>'
                    '<span class="lg"><span class="sw st-sw"></span>template text</span>'
                    '<span class="lg">colour = role (system / user / assistant / tool)</span></div>')
            spans = gr.HTML(elem_id="template-spans")
        with gr.Column(scale=2, min_width=360):
            gr.Markdown("#### Checks")
            checks = gr.HTML(elem_id="template-checks")
            gr.Markdown("#### Derived templates (for the old collator / train_on_responses_only)")
            derived = gr.HTML(elem_id="template-derived")
            gr.Markdown("#### A template string across the dataset")
            with gr.Row():
                usage_in = gr.Textbox(value=r"<|im_start|>assistant\n", show_label=False, scale=4,
                                      placeholder=r"<|im_start|>assistant\n  (\n = newline)")
                usage_btn = gr.Button("Find", size="sm", scale=0, min_width=60)
            usage = gr.HTML(elem_id="template-usage")
    gr.Markdown("#### A `{% generation %}`-marked twin (what TRL's `assistant_only_loss=True` needs)")
    with gr.Row(elem_classes="bar"):
        gen_btn = gr.Button("Generate marked template", variant="primary", size="md", scale=0, min_width=210,
                            elem_id="generate-template")
        use_btn = gr.Button("Use it in Inspect", size="md", scale=0, min_width=150)
        download = gr.DownloadButton("Download .jinja", value=None, size="md", scale=0, min_width=150,
                                     interactive=False)
        gr.HTML('<div class="hint">Wraps each assistant message\'s content and end-of-turn marker in {% generation %}; '
                "the proof renders every conversation of the dataset (and probes) with both templates.</div>")
    proof = gr.HTML(elem_id="template-proof")
    marked = gr.Code(language="jinja2", label="Marked template", interactive=False, lines=6, max_lines=16,
                     wrap_lines=True)

    refresh = dict(fn=on_templates, inputs=[session], outputs=[head, checks, spans, derived])
    usage_btn.click(on_usage, [session, usage_in], [usage])
    usage_in.submit(on_usage, [session, usage_in], [usage])
    gen_btn.click(lambda s: _with_button(*on_generate(s)), [session], [proof, marked, download])
    return {"refresh": refresh, "marked": marked, "use": use_btn, "proof": proof}
