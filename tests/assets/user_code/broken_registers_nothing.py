"""Defines a strategy function but forgets to register it."""


def first_turn(ctx):
    return None
