"""A process-wide setting held while any of several users need it, nested or in other threads: the first to enter
sets it, the last to leave puts back what was there before. Used for the cyclic garbage collector (core.gc_pause)
and for TOKENIZERS_PARALLELISM while chunk threads run (core.parallel).

    switch = ProcessSwitch(turn_on=lambda: (gc.isenabled(), gc.disable())[0],
                           put_back=lambda was: gc.enable() if was else None)
    with switch.held():
        ...
"""

from __future__ import annotations

import contextlib
import threading
from typing import Callable


class ProcessSwitch:
    def __init__(self, turn_on: Callable[[], object], put_back: Callable[[object], None]):
        self._turn_on = turn_on  # sets the setting; returns what put_back needs to restore the one before
        self._put_back = put_back
        self._lock = threading.Lock()
        self._users = 0
        self._saved: object = None

    @contextlib.contextmanager
    def held(self):
        with self._lock:
            if self._users == 0:
                self._saved = self._turn_on()
            self._users += 1
        try:
            yield
        finally:
            with self._lock:
                self._users -= 1
                if self._users == 0:
                    self._put_back(self._saved)
