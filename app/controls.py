"""The masking option controls, generated from core.masking.options.options(): each option is defined there once
(label, help, kind, choices, scope) and Inspect's Options panel and each Compare configuration are built from it here,
so a new option shows up in both by itself.

kind -> control: choice -> Radio (a Dropdown in compact panels), bool -> Checkbox, int -> Number (0 = none),
float -> Number (step 0.01: MaskConfig's floats are loss weights), roles -> CheckboxGroup, text / tokens /
text_or_ids -> Textbox (text_or_ids also brings the "Templates are token ids" checkbox). template_file is the tab's
own Chat template picker. `scope` says for which strategies a control shows (`applies`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import gradio as gr

from core.data.example import ROLES
from core.masking.options import TEMPLATE_SOURCES, Option
from core.masking.strategies import StrategyKind, get_strategy, strategy_names
from core.masking.trl_templates import trl_version

from .session import TEMPLATES_AS_IDS, setting_options

# The Rules tab registers rule sets as rules:<name>@<digest> (one per edit): the lists show only the session's own.
_APP_RULES_MARK = "@"
# Groups shown only for the strategies they concern; options of scope "all" always show.
SCOPES = ("assistant", "response_template")


def strategy_choices(current: str | None = None) -> list[str]:
    """The registry's strategies (core.masking.strategies), without other sessions' rule sets from the Rules tab."""
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


def choices_of(o: Option, value=None) -> list:
    """A choice option's entries: the registry for the strategy, worded labels for the template source."""
    if o.name == "strategy":
        return strategy_choices(value)
    if o.name == "template_source":
        return template_source_choices()
    return list(o.choices)


def applies(scope: str, strategy: str) -> bool:
    """Whether options of a scope concern a strategy. "assistant": strategies that decide per message part (the
    assistant ones, rules, registered ones); "response_template": the old collator's. Example: applies("assistant",
    "full") -> False."""
    if scope == "all":
        return True
    spec = get_strategy(strategy)
    kind = StrategyKind.PARTS if scope == "assistant" else StrategyKind.OLD_COLLATOR
    return spec is not None and spec.kind is kind


def info_of(o: Option) -> str:
    """The help a control shows under its label: the option's help, and how to type it."""
    how = {"int": "; 0 = no limit, Enter to apply" if o.default is None else "; Enter to apply",
           "float": "; Enter to apply", "text": "; Enter to apply", "tokens": "; comma-separated, Enter to apply",
           "text_or_ids": r" (\n = newline); Enter to apply"}
    return o.help + how.get(o.kind, "")


def option_control(o: Option, value, elem_id: str, compact: bool = False, label: str | None = None):
    """One option's control holding `value` (as Settings holds it), labelled and explained from its metadata
    (compact: a Dropdown for a choice and no help text, for Compare's narrow columns)."""
    kw = dict(label=label or o.label, elem_id=elem_id, min_width=100)
    if not compact:
        kw["info"] = info_of(o)
    if o.kind == "choice":
        return (gr.Dropdown if compact else gr.Radio)(choices=choices_of(o, value), value=value, **kw)
    if o.kind == "bool":
        return gr.Checkbox(value=bool(value), **kw)
    if o.kind in ("int", "float"):  # no minimum/maximum: MaskConfig checks the range and the error box says so
        return gr.Number(value=value, precision=0 if o.kind == "int" else None, step=1 if o.kind == "int" else 0.01,
                         **kw)
    if o.kind == "roles":
        return gr.CheckboxGroup(choices=list(ROLES), value=list(value), **kw)
    if o.kind in ("text", "tokens", "text_or_ids"):
        return gr.Textbox(value=value, **kw)
    raise ValueError(f"no control for option kind {o.kind!r}")  # template_file: the tab's Chat template picker


@dataclass
class OptionControls:
    """The generated controls: option name (and TEMPLATES_AS_IDS) -> control (the tab adds its strategy control),
    and the scoped groups (scope -> Column) whose visibility follows the strategy (`visibility`)."""

    controls: dict
    groups: dict

    def inputs(self, names: list[str]) -> list:
        return [self.controls[n] for n in names]

    def visibility(self, strategy: str) -> list:
        """gr.update per scoped group (in `groups` order): shown where its scope concerns the strategy."""
        return [gr.update(visible=applies(scope, strategy)) for scope in self.groups]

    def wire(self, fn: Callable, inputs: list, outputs: list) -> None:
        """Every control re-runs `fn`: text boxes and numbers on Enter (no blur event: a click on another control
        blurs the box first, and the blur's pending render would cover that control and swallow the click; the
        clicked control's own event sends every box's text anyway), the others on input."""
        for c in self.controls.values():
            (c.submit if isinstance(c, (gr.Textbox, gr.Number)) else c.input)(fn, inputs, outputs)


def build_option_controls(values, elem_id: Callable[[str], str], compact: bool = False,
                          skip: tuple[str, ...] = ("strategy",)) -> OptionControls:
    """The controls of every setting option but `skip` (call inside a layout block), valued from `values` (UI values:
    a Settings or Compare's Cfg), elem_id(name) naming each: the scoped groups first (SCOPES, each a Column visible
    for its strategies), then the options every strategy has."""
    opts = [o for o in setting_options() if o.name not in skip]
    controls, groups = {}, {}
    strategy = values.strategy
    for scope in (*SCOPES, "all"):
        mine = [o for o in opts if o.scope == scope]
        if not mine:
            continue
        with gr.Column(visible=applies(scope, strategy), elem_id=elem_id(f"{scope}-options")) as col:
            for o in mine:
                controls[o.name] = option_control(o, getattr(values, o.name), elem_id(o.name), compact)
                if o.kind == "text_or_ids" and TEMPLATES_AS_IDS not in controls:
                    controls[TEMPLATES_AS_IDS] = gr.Checkbox(value=bool(getattr(values, TEMPLATES_AS_IDS)),
                                                             label="Templates are token ids (comma-separated)",
                                                             elem_id=elem_id("templates-as-ids"))
        if scope != "all":
            groups[scope] = col
    return OptionControls(controls, groups)
