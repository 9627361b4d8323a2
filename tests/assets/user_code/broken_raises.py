from core.masking.strategies import register

SETTINGS = {"mask": "tool_calls"}


@register("registered_before_the_error")
def fine(ctx):
    return None


THRESHOLD = SETTINGS["threshold"]  # line 11: KeyError at import
