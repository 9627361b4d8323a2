"""The registry of masking strategies. A strategy decides, per message part, trained or not and the rule that says why.

Labels are never built here (see core.labels): a strategy only answers questions about parts of messages.

Kinds:
- "parts": ``fn(ctx) -> Decider``; the decider answers ``decide(message_index, part) -> (trained, rule)`` for
  parts header / reasoning / content / tool_calls / eot / scaffold (see core.spans) and "template" (index None).
- "full", "completion", "collator": the built-ins that work on whole sequences or token ids (TRL's default,
  TRL's completion_only_loss, the old DataCollatorForCompletionOnlyLM).
- "collator_fn": ``fn(tokenizer) -> collate`` where ``collate([{"input_ids": [...]}, ...])`` returns a dict with
  ``labels`` (one list or tensor per example): a team's own collator (``--collator FILE.py``). The sequences are
  tokenized exactly as TRL does for ``full`` (the tokenizer's template, no swap); the collator decides the labels.

Register your own (``--strategy-file``, or in code)::

    from .strategies import register, Decider

    @register("first_turn", help="only the first assistant turn")
    def first_turn(ctx):
        first = next(i for i, m in enumerate(ctx.messages) if m["role"] == "assistant")
        return Decider(lambda i, part: (i == first and part in ("content", "eot"), "first assistant turn"))
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from ..data.formats import is_trained_flag_off


TRAINABLE_PARTS = ("reasoning", "content", "tool_calls", "eot", "scaffold")


@dataclass
class StrategyContext:
    """What a strategy sees of one conversation."""

    messages: list[dict]
    cfg: Any  # the MaskConfig (core.masking.options imports this module, so no import back)
    n_prompt: int = 0  # prompt/completion rows: how many messages are the prompt


@dataclass
class Decider:
    """decide(message_index, part) -> (trained, rule). `trainable`: messages the strategy trains at all."""

    decide: Callable[[int | None, str], tuple[bool, str]]
    trainable: set = field(default_factory=set)

    def __call__(self, idx, part):
        return self.decide(idx, part)


@dataclass(frozen=True)
class StrategySpec:
    name: str
    help: str
    kind: str  # "parts" | "full" | "completion" | "collator" | "collator_fn"
    fn: Callable | None = None
    # Render as TRL 1.16 does under assistant_only_loss (its {% generation %}-marked training twin) and keep its mask.
    trl_generation: bool = False
    builtin: bool = False


_REGISTRY: dict[str, StrategySpec] = {}


def register(name: str, help: str = "", kind: str = "parts", trl_generation: bool = False, builtin: bool = False):
    """Decorator: register a strategy under a name (the CLI, the app, Compare and exports list what is here)."""
    if kind not in ("parts", "full", "completion", "collator", "collator_fn"):
        raise ValueError(f"unknown strategy kind {kind!r}")

    def deco(fn):
        _REGISTRY[name] = StrategySpec(name, help or (fn.__doc__ or "").strip().split("\n")[0], kind, fn,
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
def _part_rule(role: str, part: str, cfg, idx: int, last: int | None) -> tuple[bool, str]:
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
        if cfg.eos == "every_turn" or (cfg.eos == "last_turn" and idx == last):
            return True, f"trained: end-of-turn (eos={cfg.eos})"
        return False, f"not trained: end-of-turn (eos={cfg.eos})"
    return False, "not trained"


def assistant_decider(ctx: StrategyContext, only_last: bool) -> Decider:
    msgs, cfg = ctx.messages, ctx.cfg
    roles = set(cfg.train_roles)
    in_role = [i for i, m in enumerate(msgs) if m.get("role") in roles]
    trainable = [i for i in in_role if not is_trained_flag_off(msgs[i])]
    if only_last:
        trainable = [i for i in trainable if i == (in_role[-1] if in_role else None)]
    tset = set(trainable)
    last = trainable[-1] if trainable else None
    name = cfg.strategy

    def decide(idx, part):
        if idx is None:
            return False, "not trained: template text outside any message"
        m = msgs[idx]
        role = m.get("role")
        if idx not in tset:
            if role in roles and is_trained_flag_off(m):
                return False, f"not trained: message {idx} is flagged off ({'weight 0' if 'weight' in m else 'train false'})"
            if role in roles and only_last:
                return False, f"not trained: {name} trains only the last {role} turn"
            return False, f"not trained: {role} message"
        return _part_rule(role, part, cfg, idx, last)

    return Decider(decide, tset)


@register("full", "every token (TRL's default)", kind="full", builtin=True)
def _full(ctx):
    return Decider(lambda idx, part: (True, "trained: full trains every token"), set(range(len(ctx.messages))))


@register("completion_only", "the completion of prompt/completion rows (TRL completion_only_loss)", kind="completion",
          builtin=True)
def _completion_only(ctx):
    n = ctx.n_prompt

    def decide(idx, part):
        if idx is None or idx < n:
            return False, "not trained: prompt (completion_only)"
        return True, "trained: completion (completion_only)"

    return Decider(decide, set(range(n, len(ctx.messages))))


@register("assistant_only", "every assistant turn: reasoning, content, tool calls, end-of-turn (TRL assistant_only_loss)",
          trl_generation=True, builtin=True)
def _assistant_only(ctx):
    return assistant_decider(ctx, only_last=False)


@register("last_assistant", "only the final assistant turn (torchtune train_on_last, LLaMA-Factory mask_history)",
          trl_generation=True, builtin=True)
def _last_assistant(ctx):
    return assistant_decider(ctx, only_last=True)


@register("response_template", "exactly TRL <= 0.19.1's DataCollatorForCompletionOnlyLM", kind="collator", builtin=True)
def _response_template(ctx):
    return Decider(lambda idx, part: (False, "decided per token by the old collator"), set())

