from core.masking.strategies import Decider, register


@register("assistant_only", help="replaces the built-in")
def mine(ctx):
    return Decider(lambda i, part: (True, "everything"))
