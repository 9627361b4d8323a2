"""MaskConfig: one masking configuration. Each option is defined here once — its default (TRL 1.16's behaviour), help,
choices and how it is given — and the CLI flags (core.cli) and the app's controls are generated from this metadata.

Field metadata keys: ``help``; ``kind`` (how a value is given: "choice", "bool", "int", "float", "text", "tokens",
"roles", "template_file", "text_or_ids"); ``choices``; ``label`` (a short UI label); ``scope`` (which strategies it
concerns, for the UI: "all", "assistant", "response_template").
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields, replace

from ..errors import MaskLensError
from .strategies import Strategy, StrategyKind, get_strategy, strategy_names

EOS_MODES = ("every_turn", "last_turn", "none")
TRUNCATION_MODES = ("keep_start", "keep_end")
TEMPLATE_SOURCES = ("trl", "own")
TRAIN_MASK = ("train", "mask")
CONTENT_PARTS = ("keep", "join")
STRATEGIES = [s.value for s in Strategy]  # the built-ins; strategy_names() adds registered ones


def _opt(default, help: str, kind: str, label: str, scope: str = "all", choices: tuple = (), factory=None):
    meta = {"help": help, "kind": kind, "label": label, "scope": scope, "choices": choices}
    return field(default_factory=factory, metadata=meta) if factory else field(default=default, metadata=meta)


@dataclass
class MaskConfig:
    """A masking configuration. Example: MaskConfig("assistant_only", reasoning="mask", mask_tokens=("</think>",))."""

    strategy: str = _opt("assistant_only", "Which tokens are trained: a registered strategy (built-ins: "
                         + ", ".join(STRATEGIES) + ")", "choice", "Strategy")
    eos: str = _opt("every_turn", "Train each assistant turn's end-of-turn marker on every turn, on the last, or none",
                    "choice", "End of turn", "assistant", EOS_MODES)
    train_roles: tuple[str, ...] = _opt(("assistant",), "Roles whose messages the assistant strategies train "
                                        "(e.g. assistant,tool)", "roles", "Trained roles", "assistant")
    response_template: str | list[int] | None = _opt(
        None, "The text (or token ids) after which the old collator trains", "text_or_ids", "Response template",
        "response_template")
    instruction_template: str | list[int] | None = _opt(
        None, "The text (or token ids) that starts a human turn (multi-turn masking)", "text_or_ids",
        "Instruction template", "response_template")
    max_length: int | None = _opt(None, "Truncate to this many tokens (TRL's max_length)", "int", "max_length")
    truncation: str = _opt("keep_start", "Which end to keep when truncating (TRL's truncation_mode)", "choice",
                           "Truncation", "all", TRUNCATION_MODES)
    chat_template: str | None = _opt(None, "A jinja chat template replacing the tokenizer's", "template_file",
                                     "Chat template")
    use_generation_markers: bool = _opt(True, "When the template has {% generation %} markers, use them (exactly "
                                        "TRL); off: locate messages instead", "bool", "Use {% generation %} markers",
                                        "assistant")
    template_source: str = _opt("trl", "'trl' renders as TRL 1.16 does (its {% generation %}-marked training twin "
                                "when it knows the template); 'own' uses MaskLens's own masking on the tokenizer's "
                                "inference template", "choice", "Template source", "assistant", TEMPLATE_SOURCES)
    reasoning: str = _opt("train", "Think blocks (reasoning_content / <think>): train, or mask (rendered, not "
                          "trained)", "choice", "Reasoning", "assistant", TRAIN_MASK)
    empty_think: str = _opt("train", "Scaffolding a template inserts into assistant turns (an empty <think></think> "
                            "block): train or mask", "choice", "Empty think", "assistant", TRAIN_MASK)
    mask_tokens: tuple[str, ...] = _opt((), "Token strings never trained wherever they occur (e.g. </think>)",
                                        "tokens", "Mask tokens")
    split_turns: bool = _opt(False, "assistant_only: each assistant turn becomes its own example, its history "
                             "rendered exactly as at inference (add_generation_prompt=True), so every trained token "
                             "is one the model generates there", "bool", "Split turns", "assistant")
    pad_token: str | None = _opt(None, "The pad token the old collator masks (default: the tokenizer's, else its "
                                 "EOS)", "text", "Pad token", "response_template")
    content_parts: str = _opt("keep", "Content given as a list of typed parts ([{'type': 'text', 'text': ...}]): keep "
                              "passes the list to the template as TRL 1.16 does; join joins each all-text list into "
                              "one string first (for templates written for string content)", "choice",
                              "Content parts", "all", CONTENT_PARTS)
    prompt_loss_weight: float = _opt(
        0.0, "Weight in [0, 1] of every token the strategy does not train (0: masked, as TRL; 1: trains like full). "
        "Small values (0.01-0.1) help short-completion data (Huerta-Enochian & Ko 2024). Training minimises "
        "sum(w*nll)/sum(w); exports carry a loss_weights column", "float", "Prompt loss weight")

    def __post_init__(self):
        if isinstance(self.strategy, Strategy):
            self.strategy = self.strategy.value
        if get_strategy(self.strategy) is None:
            raise MaskLensError(f"unknown strategy {self.strategy!r}", field="strategy",
                                fix=f"use one of {', '.join(strategy_names())}")
        for f in fields(self):
            allowed = f.metadata.get("choices")
            if allowed and getattr(self, f.name) not in allowed:
                raise MaskLensError(f"unknown {f.name} {getattr(self, f.name)!r}", field=f.name,
                                    fix=f"use one of {', '.join(allowed)}")
        self.prompt_loss_weight = _unit_interval(self.prompt_loss_weight, "prompt_loss_weight")
        if self.max_length is not None and self.max_length < 1:
            raise MaskLensError("must be a positive number of tokens", field="max_length")
        self.train_roles = tuple(self.train_roles)
        if isinstance(self.mask_tokens, str):
            self.mask_tokens = tuple(t for t in self.mask_tokens.split(",") if t)
        self.mask_tokens = tuple(self.mask_tokens)
        if any(not isinstance(t, str) or not t for t in self.mask_tokens):
            raise MaskLensError("mask_tokens must be non-empty strings", field="mask_tokens",
                                fix='e.g. mask_tokens=("</think>",)')
        kind = get_strategy(self.strategy).kind
        if kind is StrategyKind.OLD_COLLATOR and not self.response_template:
            raise MaskLensError(f"the {self.strategy} strategy needs a response template", field="response_template",
                                fix='pass --response-template "### Assistant:" or --response-template-ids 1,2,3')
        if self.split_turns and self.strategy != Strategy.ASSISTANT_ONLY:
            raise MaskLensError(f"split_turns works with assistant_only, not {self.strategy}", field="split_turns",
                                fix="choose --strategy assistant_only, or drop --split-turns")

    def with_rules(self, rules, strategy: str, roles_given: bool = False) -> MaskConfig:
        """This configuration under a rules strategy registered as `strategy` (the one place rules join a
        configuration): their mask_tokens after this one's, their roles unless `roles_given`.
        Example: MaskConfig(mask_tokens=("<a>",)).with_rules(r, "rules:r").mask_tokens == ("<a>", *r.mask_tokens)."""
        return replace(self, strategy=strategy, mask_tokens=tuple(dict.fromkeys((*self.mask_tokens,
                                                                                  *rules.mask_tokens))),
                       train_roles=self.train_roles if roles_given else tuple(rules.roles))

    def differs_from_trl(self) -> list[str]:
        """The options set away from TRL 1.16's behaviour (exports mention them). Example: ["reasoning=mask"]."""
        out = []
        for f in fields(self):
            if f.name in ("reasoning", "empty_think", "mask_tokens", "split_turns", "eos", "train_roles",
                          "template_source", "prompt_loss_weight", "content_parts"):
                v = getattr(self, f.name)
                if v != f.default and not (f.name == "mask_tokens" and not v):
                    out.append(f"{f.name}={','.join(v) if isinstance(v, tuple) else v}")
        return out

    def to_dict(self) -> dict:
        """Plain JSON-able values (run records, experiment configs). Example: {"strategy": "full", ...}."""
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v for f in fields(self)}


@dataclass(frozen=True)
class Option:
    """One MaskConfig option as the CLI and the app read it."""

    name: str
    kind: str
    help: str
    label: str
    scope: str
    choices: tuple
    default: object

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


def options() -> list[Option]:
    """Every MaskConfig option, in field order. Example: options()[1].flag == "--eos"."""
    out = []
    for f in fields(MaskConfig):
        default = f.default_factory() if f.default is MISSING else f.default
        m = f.metadata
        out.append(Option(f.name, m["kind"], m["help"], m["label"], m["scope"], tuple(m["choices"]), default))
    return out


def option(name: str) -> Option:
    return next(o for o in options() if o.name == name)


def _unit_interval(value, name: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise MaskLensError(f"{name} must be a number, got {value!r}", field=name,
                            fix="use a number between 0 and 1, e.g. 0.1") from None
    if not 0.0 <= v <= 1.0:
        raise MaskLensError(f"{name} must lie in [0, 1], got {v:g}", field=name,
                            fix="use a number between 0 and 1, e.g. 0.1")
    return v
