"""Signals: SIGINT/SIGTERM (and SIGPIPE, stdout closed) ask a run to stop after its current step; a second
Ctrl-C stops it at once.

The handler only sets a flag (`StopRequest`), which the engine reads after every step as a
plain Python attribute (no host sync, no Hydra). The engine then checkpoints and raises
`Interrupted`; the task function marks the run interrupted and exits 128 + the signal number
(130 for SIGINT, 143 for SIGTERM, 141 for SIGPIPE), as shells do.
"""

from __future__ import annotations

import os
import signal
import sys
from contextlib import contextmanager
from typing import Iterator, Optional

from kdrun.core.console import silence_stdout

# SIGPIPE: stdout went to a program that exited (`kdrun ... | head`); the run stops and saves like on SIGTERM.
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGPIPE)


class StopRequest:
    """A callable flag for `fit(stop=...)`: true once a stop signal has arrived."""

    def __init__(self) -> None:
        self.signum: Optional[int] = None

    def __call__(self) -> bool:
        return self.signum is not None

    @property
    def exit_code(self) -> int:
        return 128 + (self.signum or signal.SIGINT)

    def handle(self, signum: int, frame: object) -> None:
        if self.signum is not None and signum == signal.SIGINT:  # the second Ctrl-C: no more waiting
            os.write(2, b"kdrun: interrupted again, exiting now (last.pt holds the last saved state)\n")
            os._exit(130)
        if signum == signal.SIGPIPE:
            silence_stdout()
        if self.signum is None:
            name = "the output was closed (SIGPIPE, e.g. `| head`):" if signum == signal.SIGPIPE else \
                f"{signal.Signals(signum).name} received;"
            hint = " (Ctrl-C again to exit at once)" if signum == signal.SIGINT else ""
            os.write(2, f"kdrun: {name} stopping after this step and saving a checkpoint{hint}\n".encode())
        self.signum = signum


_active: Optional[StopRequest] = None


def active() -> Optional[StopRequest]:
    """The stop request of the run in progress (signals are per process, so there is one), else None."""
    return _active


@contextmanager
def stop_on_signals() -> Iterator[StopRequest]:
    """Install the handlers for the duration of a run; restore the previous ones after.

    Outside the main thread (some launchers) signals cannot be caught: the request then
    never fires and the default behaviour stays.
    """
    global _active
    request = StopRequest()
    previous = {}
    try:
        for signum in SIGNALS:
            previous[signum] = signal.signal(signum, request.handle)
    except ValueError:  # not the main thread
        pass
    _active = request
    try:
        yield request
    finally:
        _active = None
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def report_interrupted(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
