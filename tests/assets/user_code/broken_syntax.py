from core.strategies import register


@register("broken_syntax")
def broken(ctx)
    return None
