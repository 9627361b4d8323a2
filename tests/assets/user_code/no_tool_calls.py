"""A strategy file (--strategy-file): every assistant turn, but not its tool calls.

Some teams train the model's answers and reasoning but leave tool calls to a separate, schema-checked stage.
"""

from core.data.formats import is_trained_flag_off
from core.masking.strategies import Decider, register


@register("no_tool_calls", help="every assistant turn: reasoning, content and end-of-turn, but not its tool calls")
def no_tool_calls(ctx):
    turns = {i for i, m in enumerate(ctx.messages) if m["role"] == "assistant" and not is_trained_flag_off(m)}

    def decide(i, part):
        if i not in turns:
            return False, "not trained: not an assistant turn (no_tool_calls)"
        if part == "tool_calls":
            return False, "not trained: tool calls (no_tool_calls)"
        if part in ("reasoning", "content", "eot"):
            return True, f"trained: assistant {part} (no_tool_calls)"
        return False, f"not trained: assistant {part} (no_tool_calls)"

    return Decider(decide, turns)
