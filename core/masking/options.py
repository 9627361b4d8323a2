"""MaskConfig: one masking configuration. Every field is a CLI flag and a UI control; defaults are TRL 1.16's behaviour."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from enum import Enum

from ..errors import MaskLensError
from .strategies import get_strategy, strategy_names


class Strategy(str, Enum):
    """The built-in strategies (more can be registered: core.strategies). Values are the names used everywhere."""

    FULL = "full"  # every token (TRL's default)
    COMPLETION_ONLY = "completion_only"  # TRL completion_only_loss=True, prompt/completion data
    ASSISTANT_ONLY = "assistant_only"  # TRL assistant_only_loss=True; every assistant turn
    LAST_ASSISTANT = "last_assistant"  # torchtune train_on_last, LLaMA-Factory mask_history
    RESPONSE_TEMPLATE = "response_template"  # TRL <= 0.19.1 DataCollatorForCompletionOnlyLM


STRATEGIES = [s.value for s in Strategy]  # the built-ins; core.strategies.strategy_names() adds registered ones
EOS_MODES = ("every_turn", "last_turn", "none")
TRUNCATION_MODES = ("keep_start", "keep_end")
TEMPLATE_SOURCES = ("trl", "own")
TRAIN_MASK = ("train", "mask")


@dataclass
class MaskConfig:
    """A masking configuration. Example: MaskConfig("assistant_only", reasoning="mask", mask_tokens=("</think>",))."""

    strategy: str = field(default="assistant_only", metadata={"help": "Which tokens are trained: " + ", ".join(STRATEGIES)})
    eos: str = field(default="every_turn", metadata={
        "help": "Assistant strategies: train each turn's end-of-turn marker on every turn, on the last, or none"})
    train_roles: tuple[str, ...] = field(default=("assistant",), metadata={
        "help": "Assistant strategies: roles whose messages are trained (e.g. assistant,tool)"})
    response_template: str | list[int] | None = field(default=None, metadata={
        "help": "response_template strategy: the text (or token ids) after which the old collator trains"})
    instruction_template: str | list[int] | None = field(default=None, metadata={
        "help": "response_template strategy: the text (or ids) that starts a human turn (multi-turn masking)"})
    max_length: int | None = field(default=None, metadata={"help": "Truncate to this many tokens (TRL's max_length)"})
    truncation: str = field(default="keep_start", metadata={"help": "keep_start or keep_end (TRL's truncation_mode)"})
    chat_template: str | None = field(default=None, metadata={"help": "A jinja chat template replacing the tokenizer's"})
    use_generation_markers: bool = field(default=True, metadata={
        "help": "assistant_only: when the template has {% generation %} markers, use them (exactly TRL)"})
    template_source: str = field(default="trl", metadata={
        "help": "Assistant strategies: 'trl' renders as TRL 1.16 does (its {% generation %}-marked training twin "
                "when it knows the template); 'own' uses MaskLens's own masking on the tokenizer's inference template"})
    reasoning: str = field(default="train", metadata={
        "help": "Think blocks (reasoning_content / <think>): train, or mask (rendered, not trained)"})
    empty_think: str = field(default="train", metadata={
        "help": "Scaffolding a template inserts into assistant turns (an empty <think></think> block): train or mask"})
    mask_tokens: tuple[str, ...] = field(default=(), metadata={
        "help": "Token strings never trained wherever they occur (e.g. </think>)"})
    split_turns: bool = field(default=False, metadata={
        "help": "assistant_only: each assistant turn becomes its own example, its history rendered exactly as at "
                "inference (add_generation_prompt=True), so every trained token is one the model generates there"})
    pad_token: str | None = field(default=None, metadata={
        "help": "response_template: the pad token the old collator masks (default: the tokenizer's, else its EOS)"})
    prompt_loss_weight: float = field(default=0.0, metadata={
        "help": "Weight in [0, 1] of every token the strategy does not train (0: masked, as TRL; 1: trains like "
                "full). Small values (0.01-0.1) help short-completion data (Huerta-Enochian & Ko 2024). Training "
                "uses the weighted mean loss sum(w*nll)/sum(w); exports carry a loss_weights column"})

    def __post_init__(self):
        if isinstance(self.strategy, Strategy):
            self.strategy = self.strategy.value
        if get_strategy(self.strategy) is None:
            raise MaskLensError(f"unknown strategy {self.strategy!r}", field="strategy",
                                fix=f"use one of {', '.join(strategy_names())}")
        for name, allowed in (("eos", EOS_MODES), ("truncation", TRUNCATION_MODES),
                              ("template_source", TEMPLATE_SOURCES), ("reasoning", TRAIN_MASK),
                              ("empty_think", TRAIN_MASK)):
            if getattr(self, name) not in allowed:
                raise MaskLensError(f"unknown {name} {getattr(self, name)!r}", field=name,
                                    fix=f"use one of {', '.join(allowed)}")
        try:
            self.prompt_loss_weight = float(self.prompt_loss_weight)
        except (TypeError, ValueError):
            raise MaskLensError(f"prompt_loss_weight must be a number, got {self.prompt_loss_weight!r}",
                                field="prompt_loss_weight", fix="use a number between 0 and 1, e.g. 0.1") from None
        if not 0.0 <= self.prompt_loss_weight <= 1.0:
            raise MaskLensError(f"prompt_loss_weight must lie in [0, 1], got {self.prompt_loss_weight}",
                                field="prompt_loss_weight", fix="use a number between 0 and 1, e.g. 0.1")
        if self.max_length is not None and self.max_length < 1:
            raise MaskLensError("must be a positive number of tokens", field="max_length")
        self.train_roles = tuple(self.train_roles)
        if isinstance(self.mask_tokens, str):
            self.mask_tokens = tuple(t for t in self.mask_tokens.split(",") if t)
        self.mask_tokens = tuple(self.mask_tokens)
        if any(not isinstance(t, str) or not t for t in self.mask_tokens):
            raise MaskLensError("mask_tokens must be non-empty strings", field="mask_tokens",
                                fix='e.g. mask_tokens=("</think>",)')
        if self.strategy == Strategy.RESPONSE_TEMPLATE and not self.response_template:
            raise MaskLensError("the response_template strategy needs a response template", field="response_template",
                                fix='pass --response-template "### Assistant:" or --response-template-ids 1,2,3')
        if self.split_turns and self.strategy != Strategy.ASSISTANT_ONLY:
            raise MaskLensError(f"split_turns works with assistant_only, not {self.strategy}", field="split_turns",
                                fix="choose --strategy assistant_only, or drop --split-turns")

    def differs_from_trl(self) -> list[str]:
        """The options set away from TRL 1.16's behaviour (exports mention them). Example: ["reasoning=mask"]."""
        out = []
        for f in fields(self):
            if f.name in ("reasoning", "empty_think", "mask_tokens", "split_turns", "eos", "train_roles",
                          "template_source", "prompt_loss_weight"):
                v = getattr(self, f.name)
                if v != f.default and not (f.name == "mask_tokens" and not v):
                    out.append(f"{f.name}={','.join(v) if isinstance(v, tuple) else v}")
        return out
