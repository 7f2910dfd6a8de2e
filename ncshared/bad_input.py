"""Bad input found when a command starts: the one-line error both command lines end with (exit code 2).

`BadInput` is that error; `OneLineErrors` is the click group both `ncflow` and `ncflow-analysis` use, which turns
click's own usage errors (a value not among the choices, an unknown or missing option) into it instead of click's
four-line usage block; `require_writable_dir` checks, when a command starts, that a directory it will write in can
be written (creating it when missing), so that a bad path is one line naming the parameter before any work or MLflow
run starts, never a traceback half-way.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import click


class BadInput(click.ClickException):
    """Bad input: one line `Error: …` and exit code 2, before any work or run starts."""

    exit_code = 2


@contextlib.contextmanager
def usage_errors_as_one_line() -> Iterator[None]:
    """Inside: click's `UsageError`s (but the help shown for a bare group) leave as `BadInput` with click's message,
    e.g. `Invalid value for '--compare': 'x' is not one of 'paper', 'none'.`"""
    try:
        yield
    except click.exceptions.NoArgsIsHelpError:
        raise
    except click.UsageError as error:
        raise BadInput(error.format_message()) from None


class OneLineErrors(click.Group):
    """A command group whose usage errors, its own and its commands', are one line (`BadInput`, exit 2)."""

    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None,
                     **extra: Any) -> click.Context:
        with usage_errors_as_one_line():
            return super().make_context(info_name, args, parent, **extra)

    def invoke(self, ctx: click.Context) -> Any:
        with usage_errors_as_one_line():
            return super().invoke(ctx)


def require_writable_dir(path: str | os.PathLike[str], parameter: str) -> Path:
    """`path` as a directory this process can write in, created with its parents when missing; else `BadInput`
    naming `parameter`, the directory and why. Checked by creating and removing a file in it: permission bits say
    nothing for root or on a read-only mount."""
    directory = Path(path).expanduser()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        descriptor, probe = tempfile.mkstemp(dir=directory, prefix=".ncflow-write-check-")
        os.close(descriptor)
        os.unlink(probe)
    except OSError as error:
        raise BadInput(f"{parameter}: cannot write in {directory}: {why_not_writable(directory, error)}") from None
    return directory


def why_not_writable(directory: Path, error: OSError) -> str:
    """The reason, in words: the file standing where a directory should be, else the system's own reason."""
    for place in (directory, *directory.parents):
        if place.exists() or place.is_symlink():
            if not place.is_dir():
                return f"{place} is a file, not a directory"
            break
    if error.errno == errno.ENOENT and not directory.is_dir():
        return f"it cannot be created ({error.strerror})"
    return error.strerror or str(error)
