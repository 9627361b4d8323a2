"""Compare: 2-4 configurations side by side on the Inspect tab's current example; tokens labelled or weighted
differently outlined and counted.

Each configuration sets a strategy, a chat template and every masking option but FROM_INSPECT (the controls are
generated from MaskConfig's options by app.controls, as Inspect's are); the example, train roles, max_length and
truncation come from the Inspect tab.
"""

from __future__ import annotations

import logging
from collections import namedtuple
from dataclasses import replace

import gradio as gr

from core.errors import MaskLensError
from core.masking.engine import render_examples
from core.masking.options import option
from core.masking.trl_templates import shipped_templates

from . import render
from .controls import applies, build_option_controls, option_control, strategy_choices
from .pickers import MARKED_TEMPLATE, template_choice
from .session import TEMPLATES_AS_IDS, Session, coherent, setting_options, ui_value

log = logging.getLogger(__name__)

MAX_CONFIGS = 4
TOKENIZER_TEMPLATE = "tokenizer"
INSPECT_TEMPLATE = "inspect"
# What every configuration takes from the Inspect tab instead of setting its own (the hint above the columns says so).
FROM_INSPECT = ("train_roles", "max_length", "truncation")
_OPTIONS = [o for o in setting_options() if o.name not in FROM_INSPECT]
# One configuration as its controls hold it (UI values, in the order of the UI's inputs): every option of _OPTIONS
# (each defaulting to MaskConfig's default), then its chat template (a template_choices() value) and whether its
# response / instruction templates are token ids.
Cfg = namedtuple("Cfg", [o.name for o in _OPTIONS] + ["chat_template", TEMPLATES_AS_IDS],
                 defaults=[ui_value(o, o.default) for o in _OPTIONS] + [INSPECT_TEMPLATE, False])
# full vs assistant_only vs the old collator vs the last turn only
DEFAULTS = [Cfg("full"), Cfg("assistant_only"), Cfg("response_template", response_template=r"<|im_start|>assistant\n"),
            Cfg("last_assistant")]
FIELDS = len(Cfg._fields)  # UI values per configuration


def template_choices() -> list[tuple[str, str]]:
    return ([("as in Inspect", INSPECT_TEMPLATE), ("tokenizer's own template", TOKENIZER_TEMPLATE)]
            + [(f"TRL {name}", f"trl:{name}") for name in shipped_templates()])


def resolve_template(session: Session, choice: str) -> tuple[str | None, str]:
    """(template text or None for the tokenizer's own, short name for the summary). "as in Inspect" is the template
    Inspect renders with (one picked or edited there, else the tokenizer's); "tokenizer's own" ignores Inspect's."""
    if choice == TOKENIZER_TEMPLATE:
        return None, "tokenizer's template" if session.chat_template else ""
    if not choice or choice == INSPECT_TEMPLATE:
        if not session.chat_template:
            return None, ""
        picked = template_choice(session)
        name = picked[4:] if picked.startswith("trl:") else \
            "marked template" if picked == MARKED_TEMPLATE else "Inspect's template"
        return session.chat_template, name
    if choice.startswith("trl:"):
        name = choice[4:]
        path = shipped_templates().get(name)
        if path is None:
            raise MaskLensError(f"TRL ships no chat template {name!r}", field="chat template")
        return path.read_text(), name
    raise MaskLensError(f"unknown chat template choice {choice!r}", field="chat template")


def config_name(c: Cfg, tpl_name: str) -> str:
    """A configuration in a few words: its strategy, the options it sets away from their defaults that concern that
    strategy, its chat template. Example: "assistant_only reasoning=mask split_turns=on · qwen3.jinja"."""
    name = c.strategy
    for o in _OPTIONS:
        v = getattr(c, o.name)
        if o.name != "strategy" and v != Cfg._field_defaults[o.name] and applies(o.scope, c.strategy):
            name += f" {o.name}=" + ({True: "on", False: "off"}[v] if isinstance(v, bool) else str(v).strip())
    return name + (f" · {tpl_name}" if tpl_name else "")


def _pick(rendered: list, turn: int | None):
    """With split_turns one row gives one example per turn: the Inspect tab's turn, else the last (whole history)."""
    if len(rendered) == 1:
        return rendered[0]
    return next((r for r in rendered if r.turn == turn), rendered[-1])


def on_compare(session: Session, n: int, *values):
    """Render the current example under n configurations. values: MAX_CONFIGS x Cfg fields. Returns (summary HTML,
    one token view HTML per configuration slot, one strategy-list update per slot: the registry as it is now)."""
    n = max(2, min(MAX_CONFIGS, int(n or 2)))
    views = [""] * MAX_CONFIGS
    lists = [gr.update(choices=strategy_choices(session.settings.strategy)) for _ in range(MAX_CONFIGS)]
    ex = session.example
    if ex is None:
        return (render.error_html("No example: choose data in the Inspect tab first.", "Nothing to compare"), *views,
                *lists)
    try:
        tok = session.tokenizer()
    except MaskLensError as e:
        return (render.error_html(str(e)), *views, *lists)
    names, rendered, slots = [], [], []
    for i in range(n):
        c = Cfg(*values[i * FIELDS:(i + 1) * FIELDS])
        try:
            template, tpl_name = resolve_template(session, c.chat_template)
            own = {k: v for k, v in c._asdict().items() if k != "chat_template"}
            cfg = coherent(replace(session.settings, **own)).to_config(template)
            r = _pick(render_examples([ex], tok, cfg, image_root=session.data.root), session.turn)
        except MaskLensError as e:
            views[i] = render.error_html(str(e), f"Configuration {chr(65 + i)}")
            continue
        except Exception as e:  # noqa: BLE001 - one bad configuration must not hide the others
            log.exception("compare failed")
            views[i] = render.error_html(f"{type(e).__name__}: {e}", f"Configuration {chr(65 + i)}")
            continue
        names.append(config_name(c, tpl_name) + (f" (turn {r.turn})" if r.turn is not None else ""))
        rendered.append(r)
        slots.append(i)
    if len(rendered) < 2:
        return (render.error_html("At least two configurations must render to compare.", "Nothing to compare"),
                *views, *lists)
    # a token differs when its loss weight does (0 = label -100): a label, or a weight between 0 and 1
    same_ids = all(r.input_ids == rendered[0].input_ids for r in rendered)
    weights = [render.loss_weights(r) for r in rendered]
    diff = render.diff_positions(weights) if same_ids else set()
    per_config = [sum(a != b for a, b in zip(weights[0], w)) for w in weights] if same_ids else [0] * len(rendered)
    summary = render.compare_summary_html(names, rendered, same_ids, len(diff), per_config)
    for k, (i, r) in enumerate(zip(slots, rendered)):
        weighted = f", {r.n_weighted} weighted" if r.n_weighted else ""
        views[i] = (f'<div class="cmp-title"><b>{chr(65 + i)}</b> {render.esc(names[k])} · '
                    f"{r.n_trained}/{r.n_tokens} trained{weighted}</div>"
                    + render.token_view_html(r.tokens(tok), elem_id=f"cmp-view-{chr(97 + i)}", diff=diff))
    caption = render.example_caption(ex, session.index, len(session.data.examples))
    return (caption + summary, *views, *lists)


def on_count(n: int):
    n = int(n or 2)
    return [gr.update(visible=i < n) for i in range(MAX_CONFIGS)]


def _column(i: int, d: Cfg, tchoices: list):
    """One configuration's controls (strategy and chat template on top, the options folded) and its token view.
    Returns (column, its OptionControls with the strategy and chat template among them, token view)."""
    low = chr(97 + i)

    def elem_id(name: str) -> str:
        return f"cmp-{name.replace('_', '-')}-{low}"

    with gr.Column(visible=i < 2, min_width=260, elem_classes="cmpcol") as col:
        with gr.Group(elem_classes="cmp-cfg"), gr.Row():
            s = option_control(option("strategy"), d.strategy, elem_id("strategy"), compact=True,
                               label=f"{chr(65 + i)} · strategy")
            t = gr.Dropdown(choices=tchoices, value=d.chat_template, label="chat template", filterable=True,
                            min_width=150, elem_id=elem_id("chat_template"))
        with gr.Accordion("options", open=False, elem_classes="cmp-opts", elem_id=f"cmp-opts-{low}"):
            opts = build_option_controls(d, elem_id, compact=True, skip=("strategy", *FROM_INSPECT))
        s.change(opts.visibility, [s], list(opts.groups.values()))
        v = gr.HTML(js_on_load=render.TOKEN_VIEW_JS, elem_id=f"cmp-box-{low}", elem_classes="tvbox")
    opts.controls.update(strategy=s, chat_template=t)
    return col, opts, v


def build_compare_tab(session: gr.State) -> dict:
    """The Compare tab (call inside a gr.Tab). Returns its components; `args` re-runs the comparison."""
    with gr.Row(elem_classes="bar"):
        count = gr.Radio(choices=[2, 3, 4], value=2, label="Configurations", scale=0, min_width=200,
                         elem_id="compare-count")
        run = gr.Button("Compare", variant="primary", size="md", scale=0, min_width=120, elem_id="compare-run")
        gr.HTML('<div class="hint">The example, train roles, max_length and truncation come from the Inspect tab. '
                "Tokens labelled or weighted differently between the configurations have a black top edge.</div>")
    summary = gr.HTML(elem_id="compare-summary")
    with gr.Row(equal_height=False):
        columns = [_column(i, DEFAULTS[i], template_choices()) for i in range(MAX_CONFIGS)]
    inputs = [c for _, opts, _ in columns for c in opts.inputs(list(Cfg._fields))]
    outputs = [summary, *(v for *_, v in columns), *(opts.controls["strategy"] for _, opts, _ in columns)]
    count.change(on_count, [count], [col for col, *_ in columns])
    args = dict(fn=on_compare, inputs=[session, count, *inputs], outputs=outputs)
    run.click(**args)
    count.change(**args)
    for _, opts, _ in columns:
        opts.wire(**args)
    return {"run": run, "args": args}
