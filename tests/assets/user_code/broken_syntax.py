from core.masking.strategies import register


@register("broken_syntax")
def broken(ctx)
    return None
