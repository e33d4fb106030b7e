"""One SIGINT/SIGTERM handler for every long command (`run`, `worker`, `train`): the
first signal asks the work to stop cleanly (sinks flushed, index saved, snapshots
written), a second exits at once."""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Callable


class StopSignals:
    """`with StopSignals(runner.stop, what="flushing sinks, saving snapshots"):` installs
    the handler on the main thread (elsewhere it does nothing) and restores the old one."""

    def __init__(self, stop: Callable[[], None], *, what: str = "finishing cleanly"):
        self.stop = stop
        self.what = what
        self.count = 0
        self.received: str | None = None  # the first signal's name
        self._old: dict = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.count += 1
        name = signal.Signals(signum).name
        if self.count > 1:
            _say("\nvmstream: second signal, exiting without cleanup")
            os._exit(130)
        self.received = name
        _say(f"\nvmstream: {name}: stopping ({self.what}; again to abort)")
        self.stop()

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()


def _say(line: str) -> None:
    # One write with its newline: print() writes the text and the newline separately, and
    # a progress bar redrawn between the two (another thread) would overwrite the line.
    # A signal handler must not die on a closed stderr.
    try:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
