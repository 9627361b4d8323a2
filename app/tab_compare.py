"""Compare: 2-4 configurations side by side on the Inspect tab's current example; differing labels outlined and counted.

Each configuration sets a strategy, an EOS mode, a response template and a chat template; everything else (train
roles, max_length, truncation...) comes from the Inspect tab's settings.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import gradio as gr

from core.engine import EOS_MODES, STRATEGIES, render_examples
from core.errors import MaskLensError

from . import render
from .session import Session, unescape
from .tab_inspect import TOKEN_VIEW_JS

log = logging.getLogger(__name__)

MAX_CONFIGS = 4
TOKENIZER_TEMPLATE = "tokenizer"
INSPECT_TEMPLATE = "inspect"
# (strategy, eos, response template as typed, chat template choice): full vs assistant_only vs the old collator
DEFAULTS = [("full", "every_turn", "", TOKENIZER_TEMPLATE),
            ("assistant_only", "every_turn", "", TOKENIZER_TEMPLATE),
            ("response_template", "every_turn", r"<|im_start|>assistant\n", TOKENIZER_TEMPLATE),
            ("last_assistant", "every_turn", "", TOKENIZER_TEMPLATE)]
FIELDS = 4  # UI values per configuration


def trl_templates() -> dict[str, Path]:
    """TRL's bundled chat templates by file name (plain and *_training twins with {% generation %})."""
    try:
        import trl  # noqa: PLC0415
    except ImportError:
        return {}
    d = Path(trl.__file__).parent / "chat_templates"
    return {p.name: p for p in sorted(d.glob("*.jinja"))}


def template_choices() -> list[tuple[str, str]]:
    return ([("tokenizer's template", TOKENIZER_TEMPLATE), ("Inspect's edited template", INSPECT_TEMPLATE)]
            + [(f"TRL {name}", f"trl:{name}") for name in trl_templates()])


def resolve_template(session: Session, choice: str) -> tuple[str | None, str]:
    """(template text or None for the tokenizer's, short name for the summary)."""
    if not choice or choice == TOKENIZER_TEMPLATE:
        return None, ""
    if choice == INSPECT_TEMPLATE:
        return session.chat_template, "Inspect's template" if session.chat_template else ""
    if choice.startswith("trl:"):
        name = choice[4:]
        path = trl_templates().get(name)
        if path is None:
            raise MaskLensError(f"TRL ships no chat template {name!r}", field="chat template")
        return path.read_text(), name
    raise MaskLensError(f"unknown chat template choice {choice!r}", field="chat template")


def config_name(strategy: str, eos: str, resp: str, tpl_name: str) -> str:
    name = strategy
    if strategy == "response_template" and resp:
        name += f" {resp!r}"
    if eos != "every_turn" and strategy in ("assistant_only", "last_assistant"):
        name += f" eos={eos}"
    if tpl_name:
        name += f" · {tpl_name}"
    return name


def on_compare(session: Session, n: int, *values):
    """Render the current example under n configurations. values: MAX_CONFIGS x (strategy, eos, response template,
    chat template choice). Returns (summary HTML, one token view HTML per configuration slot)."""
    n = max(2, min(MAX_CONFIGS, int(n or 2)))
    views = [""] * MAX_CONFIGS
    ex = session.example
    if ex is None:
        return (render.error_html("No example: choose data in the Inspect tab first.", "Nothing to compare"), *views)
    try:
        tok = session.tokenizer()
    except MaskLensError as e:
        return (render.error_html(str(e)), *views)
    names, rendered, slots = [], [], []
    for i in range(n):
        strategy, eos, resp, tpl_choice = values[i * FIELDS:(i + 1) * FIELDS]
        try:
            template, tpl_name = resolve_template(session, tpl_choice)
            settings = replace(session.settings, strategy=strategy, eos=eos,
                               response_template=resp if strategy == "response_template" else
                               session.settings.response_template)
            cfg = settings.to_config(template or session.chat_template)
            r = render_examples([ex], tok, cfg)[0]
        except MaskLensError as e:
            views[i] = render.error_html(str(e), f"Configuration {chr(65 + i)}")
            continue
        except Exception as e:  # noqa: BLE001 - one bad configuration must not hide the others
            log.exception("compare failed")
            views[i] = render.error_html(f"{type(e).__name__}: {e}", f"Configuration {chr(65 + i)}")
            continue
        names.append(config_name(strategy, eos, unescape(resp) if strategy == "response_template" else "", tpl_name))
        rendered.append(r)
        slots.append(i)
    if len(rendered) < 2:
        return (render.error_html("At least two configurations must render to compare.", "Nothing to compare"),
                *views)
    same_ids = all(r.input_ids == rendered[0].input_ids for r in rendered)
    diff: set[int] = set()
    per_config = [0] * len(rendered)
    if same_ids:
        diff = render.label_diff_positions([r.labels for r in rendered])
        ref = rendered[0].labels
        per_config = [sum(1 for a, b in zip(ref, r.labels) if a != b) for r in rendered]
    summary = render.compare_summary_html(names, rendered, same_ids, len(diff), per_config)
    for k, (i, r) in enumerate(zip(slots, rendered)):
        infos = r.tokens(tok)
        views[i] = (f'<div class="cmp-title"><b>{chr(65 + i)}</b> {render.esc(names[k])} · '
                    f"{r.n_trained}/{r.n_tokens} trained</div>"
                    + render.token_view_html(infos, elem_id=f"cmp-view-{chr(97 + i)}", diff=diff))
    caption = render.example_caption(ex, session.index, len(session.data.examples))
    return (caption + summary, *views)


def on_count(n: int):
    n = int(n or 2)
    return [gr.update(visible=i < n) for i in range(MAX_CONFIGS)]


def build_compare_tab(session: gr.State) -> dict:
    """The Compare tab (call inside a gr.Tab). Returns its components; `refresh` re-runs the comparison."""
    with gr.Row(elem_classes="bar"):
        count = gr.Radio(choices=[2, 3, 4], value=3, label="Configurations", scale=0, min_width=200)
        run = gr.Button("Compare", variant="primary", size="md", scale=0, min_width=120, elem_id="compare-run")
        gr.HTML('<div class="hint">The example, train roles, max_length and truncation come from the Inspect tab. '
                "Tokens whose labels differ between the configurations have a red top edge.</div>")
    summary = gr.HTML(elem_id="compare-summary")
    inputs, cols, views = [], [], []
    tchoices = template_choices()
    with gr.Row(equal_height=False):
        for i in range(MAX_CONFIGS):
            strat, eos, resp, tpl = DEFAULTS[i]
            L = chr(65 + i)
            with gr.Column(visible=i < 3, min_width=260, elem_classes="cmpcol") as col:
                with gr.Group(elem_classes="cmp-cfg"):
                    with gr.Row():
                        s = gr.Dropdown(choices=STRATEGIES, value=strat, label=f"{L} · strategy", min_width=150,
                                        elem_id=f"cmp-strategy-{L.lower()}")
                        e = gr.Dropdown(choices=list(EOS_MODES), value=eos, label="EOS", min_width=100)
                    with gr.Row():
                        r = gr.Textbox(value=resp, label="response template", min_width=150,
                                       placeholder=r"<|im_start|>assistant\n")
                        t = gr.Dropdown(choices=tchoices, value=tpl, label="chat template", filterable=True,
                                        min_width=150)
                v = gr.HTML(js_on_load=TOKEN_VIEW_JS, elem_id=f"cmp-box-{L.lower()}", elem_classes="tvbox")
            inputs += [s, e, r, t]
            cols.append(col)
            views.append(v)
    outputs = [summary, *views]
    count.change(on_count, [count], cols)
    args = dict(fn=on_compare, inputs=[session, count, *inputs], outputs=outputs)
    run.click(**args)
    count.change(**args)
    for c in inputs:
        if isinstance(c, gr.Textbox):
            c.submit(**args)
        else:
            c.input(**args)
    return {"run": run, "args": args}
