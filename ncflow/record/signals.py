"""SIGTERM and SIGHUP end a run the way Ctrl-C does.

`timeout`, Slurm, container stops and closed terminals send SIGTERM or SIGHUP; Python's default for both
is to die at once, which would leave the run RUNNING with no reason. Inside `termination_as_interrupt`
either signal raises `Terminated` (a KeyboardInterrupt) in the main thread, so the same clean-up runs as
for Ctrl-C: the run ends KILLED with its reason and a resumable state.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Any, Iterator

HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class Terminated(KeyboardInterrupt):
    """The process was asked to stop by a signal; `signal_name` says which."""

    def __init__(self, signal_name: str) -> None:
        super().__init__(signal_name)
        self.signal_name = signal_name


def raise_terminated(signum: int, _frame: Any) -> None:
    raise Terminated(signal.Signals(signum).name)


def interruption_reason(error: BaseException) -> str:
    """`interrupted (SIGTERM)` for a signal, `interrupted` for Ctrl-C."""
    if isinstance(error, Terminated):
        return f"interrupted ({error.signal_name})"
    return "interrupted"


@contextlib.contextmanager
def termination_as_interrupt() -> Iterator[None]:
    """In the main thread, SIGTERM and SIGHUP raise `Terminated` until the block ends (elsewhere: no change)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {number: signal.signal(number, raise_terminated) for number in HANDLED_SIGNALS}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
