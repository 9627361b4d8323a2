"""Rules: declarative masking rules (JSON or YAML, core.rules) edited in a code box, validated, and rendered beside it
on the Inspect tab's current example; Apply makes them the session's strategy (Inspect, Compare, Audit, Export).

Rules are data, never code: nothing typed here is imported or run (Python strategy and collator files are CLI
start-up flags only, core.user_code). The registry is shared by every user of a server, so the app registers rules
under ``rules:<name>@<digest of the rules>``: two users' rules of the same name never replace each other's, and only
the most recent MAX_APP_RULES rule sets stay registered.

Callbacks are module-level functions (tests call them directly) returning RulesOut.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import replace
from typing import NamedTuple

import gradio as gr

from core.masking.options import MaskConfig, option
from core.masking.engine import render_examples
from core.errors import MaskLensError
from core.masking.rules import PARTS, Rules, parse_rules, register_rules
from core.masking.strategies import unregister

from . import render
from .session import DEFAULT_SAMPLE, Session, load_sample, ui_value

log = logging.getLogger(__name__)

EXAMPLE_RULES = """\
# Which parts of which turns are trained. JSON works too.
# role:  system | user | assistant | tool | developer        (default assistant)
# turns: all | first | last | index among that role's messages, 0-based (-1 = last)   (default all)
# parts: header, reasoning, content, tool_calls, eot, scaffold
#        (default reasoning, content, tool_calls, eot)
# mask_tokens: token strings never trained, wherever they occur
name: first_turn
train:
  - role: assistant
    turns: first
    parts: [content, eot]
mask_tokens: ["</think>"]
"""
MAX_APP_RULES = 64
_registered: OrderedDict[str, None] = OrderedDict()
_lock = threading.Lock()


class RulesOut(NamedTuple):
    """What the Rules callbacks return, in the order of the tab's outputs."""

    session: Session
    view: str
    stats: str
    findings: str
    error: str
    status: str


def register_for_app(rules: Rules) -> str:
    """Register rules under a name unique to their content, keeping at most MAX_APP_RULES app-registered sets."""
    with _lock:
        name = register_rules(rules, unique=True)
        _registered[name] = None
        _registered.move_to_end(name)
        while len(_registered) > MAX_APP_RULES:
            old, _ = _registered.popitem(last=False)
            unregister(old)
    return name


def rules_mask_config(session: Session, rules: Rules, name: str) -> MaskConfig:
    """The session's options (max_length, truncation, chat template, eos...) with the rules registered as `name`
    deciding the labels (MaskConfig.with_rules: their mask_tokens after the session's, their roles)."""
    try:
        base = replace(session.settings, strategy="full", split_turns=False).to_config(session.chat_template)
    except MaskLensError:  # a bad value in an Inspect box (e.g. a response template) does not concern the rules
        base = MaskConfig("full", chat_template=session.chat_template)
    return base.with_rules(rules, name)


def _ensure_data(session: Session) -> None:
    if session.data is None:  # the tab used before Inspect loaded anything: the default sample, as Inspect opens with
        session.data = load_sample(DEFAULT_SAMPLE)


def preview(session: Session, text: str) -> RulesOut:
    """Validate the rules and render the current example with them; the session's strategy is left as it is."""
    return _run(session, text, apply=False)


def apply(session: Session, text: str) -> RulesOut:
    """Validate, render, and make the rules the session's strategy (their mask_tokens too)."""
    return _run(session, text, apply=True)


def _run(session: Session, text: str, apply: bool) -> RulesOut:
    status = _status(session)
    try:
        rules = parse_rules(text or "")
    except MaskLensError as e:
        stale = ('<div class="hint">The token view below still shows the last valid rules, not these.</div>'
                 if session.data is not None else "")
        return RulesOut(session, gr.update(), gr.update(), gr.update(),
                        render.error_html(str(e), "Invalid rules") + stale, status)
    try:
        _ensure_data(session)
        name = register_for_app(rules)
        cfg = rules_mask_config(session, rules, name)
        ex = session.example
        if ex is None:
            return RulesOut(session, render.token_view_html([], elem_id="rules-token-view",
                                                            empty="No valid example in this dataset."), "", "", "",
                            status)
        tok = session.tokenizer()
        r = render_examples([ex], tok, cfg, errors="finding", image_root=session.data.root)[0]
        infos = r.tokens(tok)
    except MaskLensError as e:
        return RulesOut(session, gr.update(), gr.update(), gr.update(), render.error_html(str(e)), status)
    except Exception as e:  # noqa: BLE001 - a bug or an exotic template: in the page, the server stays up
        log.exception("rules rendering failed")
        return RulesOut(session, gr.update(), gr.update(), gr.update(),
                        render.error_html(f"{type(e).__name__}: {e}", "Unexpected error"), status)
    if apply:  # the Mask tokens box then shows the rules' tokens too (the user may take them out there)
        session.settings = replace(session.settings, strategy=name,
                                   mask_tokens=ui_value(option("mask_tokens"), cfg.mask_tokens))
        status = _status(session)
    where = f"example {session.index + 1} of {len(session.data.examples)} (row {ex.row})"
    summary = (f'<div class="rules-summary"><b>{render.esc(name)}</b> on {render.esc(where)}'
               f'<pre>{render.esc(rules.summary())}</pre></div>')
    return RulesOut(session, render.token_view_html(infos, elem_id="rules-token-view",
                                                    truncated_at_start=r.truncated_at_start),
                    summary + render.stats_html(r, infos), render.findings_html(r.findings), "", status)


def _status(session: Session) -> str:
    s = session.settings.strategy
    applied = s.startswith("rules:")
    return (f'<div class="{"ok" if applied else "hint"}" data-strategy="{render.esc(s)}">The session\'s strategy: '
            f"<b>{render.esc(s)}</b>" + ("" if applied else " (Apply to use these rules in Inspect, Compare, Audit "
                                                            "and Export)") + "</div>")


def build_rules_tab(session: gr.State) -> dict:
    """The Rules tab (call inside a gr.Tab). Returns {"refresh": event kwargs re-rendering the preview (wire it to the
    tab's select), "applied": the Apply event (chain .then() to refresh Inspect), "code", "apply"}."""
    with gr.Row(equal_height=False, elem_classes="rules-row"):
        with gr.Column(scale=2, min_width=320):
            code = gr.Code(value=EXAMPLE_RULES, language="yaml", label="Rules (YAML or JSON)", interactive=True,
                           lines=16, max_lines=40, elem_id="rules-code")
            with gr.Row():
                check = gr.Button("Validate", size="sm", elem_id="rules-validate")
                go = gr.Button("Apply", size="sm", variant="primary", elem_id="rules-apply")
            error = gr.HTML(elem_id="rules-error")
            status = gr.HTML(elem_id="rules-status")
            gr.HTML(f'<div class="hint">Parts: {", ".join(PARTS)}. Rules render with the chat template and '
                    "MaskLens's own span finding; they are not a TRL option, so export them as pre-tokenized data "
                    "(input_ids + labels).</div>")
        with gr.Column(scale=4, min_width=420, elem_classes="viewcol"):
            gr.HTML(render.legend_html())
            view = gr.HTML(render.token_view_html([], elem_id="rules-token-view", empty="Apply rules to see them."),
                           js_on_load=render.TOKEN_VIEW_JS, elem_id="rules-view-box", elem_classes="tvbox")
        with gr.Column(scale=2, min_width=300, elem_classes="sidecol"):
            stats = gr.HTML(elem_id="rules-stats")
            findings = gr.HTML(elem_id="rules-findings")
    outputs = [session, view, stats, findings, error, status]
    check.click(preview, [session, code], outputs)
    applied = go.click(apply, [session, code], outputs)
    return {"refresh": dict(fn=preview, inputs=[session, code], outputs=outputs), "applied": applied, "code": code,
            "apply": go}
