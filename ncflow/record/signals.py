"""SIGTERM and SIGHUP end a run the way Ctrl-C does.

`timeout`, Slurm, container stops and closed terminals send SIGTERM or SIGHUP; Python's default for both
is to die at once, which would leave the run RUNNING with no reason. Inside `termination_as_interrupt`
either signal raises `Terminated` (a KeyboardInterrupt) in the main thread, so the same clean-up runs as
for Ctrl-C: the run ends KILLED with its reason and a resumable state, noted on the interruption
(`note_stopped_run`) so that the command line ends with one line naming the run and how to resume it.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Any, Iterator, Mapping

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


def interruption_name(error: KeyboardInterrupt) -> str:
    """`SIGTERM` / `SIGHUP` for a signal, `Ctrl-C` otherwise."""
    return error.signal_name if isinstance(error, Terminated) else "Ctrl-C"


STOPPED_RUNS = "ncflow_stopped_runs"  # the attribute of an interruption that lists the runs it ended


def note_stopped_run(error: BaseException, run_id: str) -> None:
    """Record on an interruption (Ctrl-C, SIGTERM, SIGHUP) that it ended run `run_id` (KILLED, resumable), so the
    command line's last line can say which runs to resume."""
    if isinstance(error, KeyboardInterrupt):
        setattr(error, STOPPED_RUNS, [*stopped_runs(error), run_id])


def stopped_runs(error: BaseException) -> list[str]:
    """The runs an interruption ended, in the order they were ended (`note_stopped_run`)."""
    return list(getattr(error, STOPPED_RUNS, []))


def stopped_line(error: KeyboardInterrupt, resume_options: Mapping[str, str]) -> str:
    """One line for a training stopped by Ctrl-C, SIGTERM or SIGHUP: the runs it ended and how to continue them
    (`resume_options`: the options the resume needs besides the run id, e.g. `--record-dir`)."""
    run_ids = stopped_runs(error)
    if not run_ids:
        return f"stopped by {interruption_name(error)} before any run started"
    runs, which = (f"run {run_ids[0]}", run_ids[0]) if len(run_ids) == 1 else ("runs " + ", ".join(run_ids), "RUN_ID")
    options = "".join(f" {flag} {value}" for flag, value in resume_options.items())
    return (f"stopped by {interruption_name(error)}: {runs} ended KILLED; "
            f"continue with: ncflow train --resume {which}{options}")


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
