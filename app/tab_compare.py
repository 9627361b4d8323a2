"""Compare: 2-4 configurations side by side on the Inspect tab's current example; differing labels outlined and counted.

Each configuration sets a strategy (any the registry holds), an EOS mode, a response template, a chat template and the
options of the parts strategies (template source, reasoning, empty think blocks, tokens never trained, split_turns);
everything else (train roles, max_length, truncation...) comes from the Inspect tab's settings.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import NamedTuple

import gradio as gr

from core.masking.options import TRAIN_MASK
from core.masking.engine import EOS_MODES, render_examples
from core.masking.trl_templates import shipped_templates
from core.errors import MaskLensError

from . import render
from .session import Session, unescape
from .tab_inspect import MARKED_TEMPLATE, TOKEN_VIEW_JS, strategy_choices, template_choice

log = logging.getLogger(__name__)

MAX_CONFIGS = 4
TOKENIZER_TEMPLATE = "tokenizer"
INSPECT_TEMPLATE = "inspect"


class Cfg(NamedTuple):
    """One configuration as its controls hold it (the order of the UI values)."""

    strategy: str
    eos: str = "every_turn"
    response_template: str = ""
    chat_template: str = INSPECT_TEMPLATE  # a template_choices() value
    template_source: str = "trl"
    reasoning: str = "train"
    empty_think: str = "train"
    mask_tokens: str = ""
    split_turns: bool = False


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


def config_name(strategy: str, eos: str, resp: str, tpl_name: str, options: dict | None = None) -> str:
    """A configuration in a few words. Example: "assistant_only eos=last_turn reasoning=mask · qwen3.jinja"."""
    name = strategy
    if strategy == "response_template" and resp:
        name += f" {resp!r}"
    if eos != "every_turn" and strategy in ("assistant_only", "last_assistant"):
        name += f" eos={eos}"
    for k, v in (options or {}).items():
        name += f" {k}={v}"
    if tpl_name:
        name += f" · {tpl_name}"
    return name


def _options(c: Cfg) -> dict:
    """The options set away from TRL's behaviour (the name shows them)."""
    out = {}
    if c.template_source != "trl":
        out["template_source"] = c.template_source
    if c.reasoning != "train":
        out["reasoning"] = c.reasoning
    if c.empty_think != "train":
        out["empty_think"] = c.empty_think
    if (c.mask_tokens or "").strip():
        out["mask_tokens"] = c.mask_tokens.strip()
    if c.split_turns and c.strategy == "assistant_only":
        out["split_turns"] = "on"
    return out


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
            settings = replace(session.settings, strategy=c.strategy, eos=c.eos,
                               response_template=c.response_template if c.strategy == "response_template" else
                               session.settings.response_template,
                               template_source=c.template_source or "trl", reasoning=c.reasoning or "train",
                               empty_think=c.empty_think or "train", mask_tokens=c.mask_tokens or "",
                               split_turns=bool(c.split_turns) and c.strategy == "assistant_only")
            cfg = settings.to_config(template)
            r = _pick(render_examples([ex], tok, cfg), session.turn)
        except MaskLensError as e:
            views[i] = render.error_html(str(e), f"Configuration {chr(65 + i)}")
            continue
        except Exception as e:  # noqa: BLE001 - one bad configuration must not hide the others
            log.exception("compare failed")
            views[i] = render.error_html(f"{type(e).__name__}: {e}", f"Configuration {chr(65 + i)}")
            continue
        name = config_name(c.strategy, c.eos, unescape(c.response_template) if c.strategy == "response_template"
                           else "", tpl_name, _options(c))
        names.append(name + (f" (turn {r.turn})" if r.turn is not None else ""))
        rendered.append(r)
        slots.append(i)
    if len(rendered) < 2:
        return (render.error_html("At least two configurations must render to compare.", "Nothing to compare"),
                *views, *lists)
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
    return (caption + summary, *views, *lists)


def on_count(n: int):
    n = int(n or 2)
    return [gr.update(visible=i < n) for i in range(MAX_CONFIGS)]


def build_compare_tab(session: gr.State) -> dict:
    """The Compare tab (call inside a gr.Tab). Returns its components; `args` re-runs the comparison."""
    with gr.Row(elem_classes="bar"):
        count = gr.Radio(choices=[2, 3, 4], value=2, label="Configurations", scale=0, min_width=200,
                         elem_id="compare-count")
        run = gr.Button("Compare", variant="primary", size="md", scale=0, min_width=120, elem_id="compare-run")
        gr.HTML('<div class="hint">The example, train roles, max_length and truncation come from the Inspect tab. '
                "Tokens whose labels differ between the configurations have a black top edge.</div>")
    summary = gr.HTML(elem_id="compare-summary")
    inputs, cols, views, strategies = [], [], [], []
    tchoices = template_choices()
    from .tab_inspect import template_source_choices  # noqa: PLC0415

    with gr.Row(equal_height=False):
        for i in range(MAX_CONFIGS):
            d = DEFAULTS[i]
            L = chr(65 + i)
            low = L.lower()
            with gr.Column(visible=i < 2, min_width=260, elem_classes="cmpcol") as col:
                with gr.Group(elem_classes="cmp-cfg"):
                    with gr.Row():
                        s = gr.Dropdown(choices=strategy_choices(), value=d.strategy, label=f"{L} · strategy",
                                        min_width=150, elem_id=f"cmp-strategy-{low}")
                        e = gr.Dropdown(choices=list(EOS_MODES), value=d.eos, label="EOS", min_width=100)
                    with gr.Row():
                        r = gr.Textbox(value=d.response_template, label="response template", min_width=150,
                                       placeholder=r"<|im_start|>assistant\n")
                        t = gr.Dropdown(choices=tchoices, value=d.chat_template, label="chat template",
                                        filterable=True, min_width=150)
                with gr.Accordion("options", open=False, elem_classes="cmp-opts", elem_id=f"cmp-opts-{low}"):
                    src = gr.Dropdown(choices=template_source_choices(), value=d.template_source,
                                      label="template source", elem_id=f"cmp-source-{low}")
                    with gr.Row():
                        rs = gr.Dropdown(choices=list(TRAIN_MASK), value=d.reasoning, label="reasoning",
                                         min_width=100, elem_id=f"cmp-reasoning-{low}")
                        et = gr.Dropdown(choices=list(TRAIN_MASK), value=d.empty_think, label="empty think",
                                         min_width=100, elem_id=f"cmp-empty-think-{low}")
                    mt = gr.Textbox(value=d.mask_tokens, label="never train (comma-separated)",
                                    placeholder="</think>", elem_id=f"cmp-mask-tokens-{low}")
                    sp = gr.Checkbox(value=d.split_turns, label="split_turns (assistant_only)",
                                     elem_id=f"cmp-split-{low}")
                v = gr.HTML(js_on_load=TOKEN_VIEW_JS, elem_id=f"cmp-box-{low}", elem_classes="tvbox")
            fields = [s, e, r, t, src, rs, et, mt, sp]
            assert len(fields) == FIELDS
            inputs += fields
            cols.append(col)
            views.append(v)
            strategies.append(s)
    outputs = [summary, *views, *strategies]
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
