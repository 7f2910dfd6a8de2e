"""Calling something again after a failure it may recover from: one helper for every retry loop in ncflow.

`retried(call, when=..., delays=..., attempts=..., give_up=...)` calls `call()` until it returns; a failure that
`when` accepts is retried after the next pause of `delays` (the last pause repeats), at most `attempts` calls in
all (None: no limit) and only while `give_up()` is false. Any other failure, or the last one, is raised as it is.
"""

from __future__ import annotations

import time
from typing import Callable, Sequence, TypeVar

Result = TypeVar("Result")


def is_database_locked(error: BaseException) -> bool:
    """A shared SQLite store busy with another writer (MlflowException or SQLAlchemy's OperationalError say so)."""
    return "database is locked" in str(error)


def any_error(error: BaseException) -> bool:
    return True


def never() -> bool:
    return False


def retried(
    call: Callable[[], Result],
    *,
    when: Callable[[Exception], bool] = any_error,
    delays: Sequence[float] = (),
    attempts: int | None = None,
    give_up: Callable[[], bool] = never,
    on_retry: Callable[[Exception, float], None] | None = None,
    sleep: Callable[[float], None] | None = None,
) -> Result:
    """`call()`'s result, calling it again after each failure that `when` accepts.

    Before the n-th retry it pauses `delays[n - 1]`, or the last of `delays` once they run out (none: no pause). It
    raises the failure when `when` rejects it, after `attempts` calls in all, or when `give_up()` says so.
    `on_retry(error, pause)` is told about each retry before its pause (e.g. to log it); `sleep` pauses (time.sleep).
    """
    if attempts is not None and attempts < 1:
        raise ValueError(f"attempts must be at least 1, not {attempts}")
    failures = 0
    while True:
        try:
            return call()
        except Exception as error:
            failures += 1
            if not when(error) or (attempts is not None and failures >= attempts) or give_up():
                raise
            pause = delays[min(failures, len(delays)) - 1] if delays else 0.0
            if on_retry is not None:
                on_retry(error, pause)
            (sleep or time.sleep)(pause)
