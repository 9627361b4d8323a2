"""The one registry of masking strategies. A strategy decides, per message part, trained or not, why, and how much.

Labels are never built here (core.masking.labels builds them): a strategy only answers questions about parts of
messages. The CLI, the app, Compare and exports list what this registry holds.

How to add a strategy (``--strategy-file FILE.py``, or in code)::

    from core.masking.strategies import Decider, register

    @register("first_turn", help="only the first assistant turn")
    def first_turn(ctx):                                   # ctx: StrategyContext (messages, cfg, n_prompt)
        first = next(i for i, m in enumerate(ctx.messages) if m["role"] == "assistant")
        return Decider(lambda i, part: (i == first and part in ("content", "eot"), "first assistant turn"))

``decide(message_index, part)`` returns ``(trained, rule)`` or ``(trained, rule, weight)`` with weight in (0, 1]
(a trained part's share of the loss; 1 when omitted). Parts are core.masking.spans.PARTS; ``message_index`` is None
for template text outside every message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable

from ..data.example import message_weight


class StrategyKind(str, Enum):
    """How a strategy decides. Values are what ``register(kind=...)`` takes."""

    PARTS = "parts"  # fn(ctx) -> Decider: per message part (the assistant strategies, rules, strategy files)
    FULL = "full"  # every token (TRL's default)
    COMPLETION = "completion"  # prompt/completion rows: what follows the prompt (TRL completion_only_loss)
    OLD_COLLATOR = "collator"  # per token ids, TRL <= 0.19.1's DataCollatorForCompletionOnlyLM
    USER_COLLATOR = "collator_fn"  # fn(tokenizer) -> collate([{"input_ids": [...]}]) -> {"labels": [...]}


class Strategy(str, Enum):
    """The built-in strategies' names (registered below like any other)."""

    FULL = "full"
    COMPLETION_ONLY = "completion_only"
    ASSISTANT_ONLY = "assistant_only"
    LAST_ASSISTANT = "last_assistant"
    RESPONSE_TEMPLATE = "response_template"


@dataclass
class StrategyContext:
    """What a strategy sees of one conversation."""

    messages: list[dict]
    cfg: Any  # the MaskConfig (core.masking.options imports this module, so no import back)
    n_prompt: int = 0  # prompt/completion rows: how many messages are the prompt


@dataclass(frozen=True)
class Decider:
    """decide(message_index, part) -> (trained, rule[, weight]). `trainable`: messages the strategy trains at all."""

    decide: Callable[[int | None, str], tuple]
    trainable: set = field(default_factory=set)

    def __call__(self, idx, part):
        return self.decide(idx, part)


@dataclass(frozen=True)
class StrategySpec:
    name: str
    help: str
    kind: StrategyKind
    fn: Callable | None = None
    # Render as TRL 1.16 does under assistant_only_loss (its {% generation %}-marked training twin) and keep its mask.
    trl_generation: bool = False
    builtin: bool = False


_REGISTRY: dict[str, StrategySpec] = {}


def register(name: str, help: str = "", kind: StrategyKind | str = StrategyKind.PARTS, trl_generation: bool = False,
             builtin: bool = False):
    """Decorator: register a strategy under a name (the CLI, the app, Compare and exports list what is here)."""
    try:
        kind = StrategyKind(kind)
    except ValueError:
        raise ValueError(f"unknown strategy kind {kind!r}; one of {', '.join(k.value for k in StrategyKind)}") from None

    def deco(fn):
        _REGISTRY[str(name)] = StrategySpec(str(name), help or (fn.__doc__ or "").strip().split("\n")[0], kind, fn,
                                            trl_generation, builtin)
        return fn

    return deco


def get_strategy(name: str) -> StrategySpec | None:
    return _REGISTRY.get(name)


def strategy_names() -> list[str]:
    """Every registered strategy, built-ins first. Example: ["full", "completion_only", ...]."""
    return list(_REGISTRY)


def unregister(name: str) -> None:
    spec = _REGISTRY.get(name)
    if spec is not None and not spec.builtin:
        del _REGISTRY[name]


# ------------------------------------------------------------------------------------------------ built-in deciders
def _part_rule(role: str, part: str, cfg, is_last: bool) -> tuple[bool, str]:
    """The assistant strategies' answer for one part of a trained message (options applied)."""
    if part == "header":
        return False, f"not trained: {role} role header"
    if part == "reasoning":
        if cfg.reasoning == "mask":
            return False, "not trained: reasoning (reasoning=mask)"
        return True, f"trained: {role} reasoning (think block)"
    if part == "scaffold":
        if cfg.empty_think == "mask":
            return False, "not trained: text the template inserts into the turn (empty_think=mask)"
        return True, "trained: text the template inserts into the turn, e.g. an empty think block (empty_think=train)"
    if part == "content":
        return True, f"trained: {role} content"
    if part == "tool_calls":
        return True, f"trained: {role} tool calls"
    if part == "eot":
        if cfg.eos == "every_turn" or (cfg.eos == "last_turn" and is_last):
            return True, f"trained: end-of-turn (eos={cfg.eos})"
        return False, f"not trained: end-of-turn (eos={cfg.eos})"
    return False, "not trained"


def assistant_decider(ctx: StrategyContext, only_last: bool) -> Decider:
    """assistant_only / last_assistant: every (or the last) message of cfg.train_roles, options applied; a message's
    data weight (0 < w < 1) scales its trained parts. Verdicts depend only on (role, last turn or not, part): each is
    worked out once per conversation (this runs for every part of every message of a dataset)."""
    msgs, cfg = ctx.messages, ctx.cfg
    roles = set(cfg.train_roles)
    in_role = [i for i, m in enumerate(msgs) if m.get("role") in roles]
    weights = {i: message_weight(msgs[i]) for i in in_role}
    trainable = [i for i in in_role if weights[i] > 0]
    if only_last:
        trainable = [i for i in trainable if i == (in_role[-1] if in_role else None)]
    tset = set(trainable)
    last = trainable[-1] if trainable else None
    # verdicts by message key, then part: shared by every conversation under the same options (only the texts that
    # name a message index are worked out each time)
    if len(_VERDICTS) > 64:
        _VERDICTS.clear()
    known = _VERDICTS.setdefault((only_last, cfg.strategy, cfg.reasoning, cfg.empty_think, cfg.eos,
                                  tuple(cfg.train_roles)), {})
    if len(known) > 4096:  # many distinct message weights
        known.clear()

    def verdict(idx, part):
        role = msgs[idx].get("role")
        if idx not in tset:
            if role in roles and weights[idx] == 0:
                return False, f"not trained: message {idx} is flagged off ({_flag(msgs[idx])})"
            if role in roles and only_last:
                return False, f"not trained: {cfg.strategy} trains only the last {role} turn"
            return False, f"not trained: {role} message"
        trained, rule = _part_rule(role, part, cfg, idx == last)
        w = weights[idx]
        return (trained, f"{rule} (message weight {w:g})", w) if trained and w < 1 else (trained, rule)

    by_message: dict = {}  # message index -> its verdicts by part: the table of its key in `known`

    def decide(idx, part):
        if idx is None:
            return _OUTSIDE
        table = by_message.get(idx)
        if table is None:  # the same answers for every message of a role on the same side of these distinctions
            key = (msgs[idx].get("role"), idx in tset, idx == last, weights.get(idx, 1.0))
            table = by_message[idx] = known.setdefault(key, {})
        v = table.get(part)
        if v is None:
            v = verdict(idx, part)
            if "message " not in v[1]:  # rules naming the message index are not shared
                table[part] = v
        return v

    return Decider(decide, tset)


_OUTSIDE = (False, "not trained: template text outside any message")
_VERDICTS: dict = {}  # assistant_decider's verdict tables, by the options they depend on


def _flag(message: dict) -> str:
    return "weight 0" if "weight" in message else "train false"


@register(Strategy.FULL.value, "every token (TRL's default)", kind=StrategyKind.FULL, builtin=True)
def _full(ctx):
    return Decider(lambda idx, part: (True, "trained: full trains every token"), set(range(len(ctx.messages))))


@register(Strategy.COMPLETION_ONLY.value, "the completion of prompt/completion rows (TRL completion_only_loss)",
          kind=StrategyKind.COMPLETION, builtin=True)
def _completion_only(ctx):
    n = ctx.n_prompt

    def decide(idx, part):
        if idx is None or idx < n:
            return False, "not trained: prompt (completion_only)"
        return True, "trained: completion (completion_only)"

    return Decider(decide, set(range(n, len(ctx.messages))))


@register(Strategy.ASSISTANT_ONLY.value,
          "every assistant turn: reasoning, content, tool calls, end-of-turn (TRL assistant_only_loss)",
          trl_generation=True, builtin=True)
def _assistant_only(ctx):
    return assistant_decider(ctx, only_last=False)


@register(Strategy.LAST_ASSISTANT.value,
          "only the final assistant turn (torchtune train_on_last, LLaMA-Factory mask_history)",
          trl_generation=True, builtin=True)
def _last_assistant(ctx):
    return assistant_decider(ctx, only_last=True)


@register(Strategy.RESPONSE_TEMPLATE.value, "exactly TRL <= 0.19.1's DataCollatorForCompletionOnlyLM",
          kind=StrategyKind.OLD_COLLATOR, builtin=True)
def _response_template(ctx):
    return Decider(lambda idx, part: (False, "decided per token by the old collator"), set())
