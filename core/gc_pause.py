"""The cyclic garbage collector paused while a batch of rows is worked on.

A chunk of 512 conversations allocates about a million short-lived containers (ids, labels, spans, findings) that
reference counting frees; the collector's scans over them cost 15% of `core render` (5,000 rows: 4.13 s -> 3.41 s
with it paused, this 2-core machine). Cycles made meanwhile (at most a batch's) are collected once it is back on.

    with gc_paused():        # nests, and is thread-safe: back on when the last pause in this process ends,
        render_examples(...)  # if it was on before the first
"""

from __future__ import annotations

import gc

from .process_switch import ProcessSwitch


def _pause() -> bool:
    was = gc.isenabled()
    gc.disable()
    return was


_SWITCH = ProcessSwitch(_pause, lambda was: gc.enable() if was else None)


def gc_paused():
    """A context manager: the collector off inside it (core.process_switch: nests, thread-safe)."""
    return _SWITCH.held()
