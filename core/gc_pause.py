"""The cyclic garbage collector paused while a batch of rows is worked on.

A chunk of 512 conversations allocates about a million short-lived containers (ids, labels, spans, findings) that
reference counting frees; the collector's scans over them cost 15% of `core render` (5,000 rows: 4.13 s -> 3.41 s
with it paused, this 2-core machine). Cycles made meanwhile (at most a batch's) are collected once it is back on.

    with gc_paused():        # nests, and is thread-safe: back on when the last pause in this process ends,
        render_examples(...)  # if it was on before the first
"""

from __future__ import annotations

import contextlib
import gc
import threading

_LOCK = threading.Lock()
_STATE = {"pauses": 0, "was_enabled": False}


@contextlib.contextmanager
def gc_paused():
    with _LOCK:
        if _STATE["pauses"] == 0:
            _STATE["was_enabled"] = gc.isenabled()
            gc.disable()
        _STATE["pauses"] += 1
    try:
        yield
    finally:
        with _LOCK:
            _STATE["pauses"] -= 1
            if _STATE["pauses"] == 0 and _STATE["was_enabled"]:
                gc.enable()
