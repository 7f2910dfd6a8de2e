"""The directories a command line writes, checked when it starts: the run records', a data set's download
directory, a sweep's storage. A bad one is one line naming the parameter (exit 2) before any work or MLflow run
(`ncshared.bad_input.require_writable_dir` decides, for both command lines)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from ncshared.bad_input import require_writable_dir
from ncshared.run_config import RunConfig


def record_dir_parameter(record_dir: str | None) -> str:
    """How the run records' directory was chosen, to name it in an error."""
    from ncflow.record.local_record import DEFAULT_RECORD_DIR, RECORD_DIR_VARIABLE

    if record_dir:
        return "--record-dir"
    if os.environ.get(RECORD_DIR_VARIABLE):
        return RECORD_DIR_VARIABLE
    return f"--record-dir (default {DEFAULT_RECORD_DIR})"


def check_writable_paths(record_dir: str | None, configs: Sequence[RunConfig] = ()) -> None:
    """Before any work or run: the run records' directory, and the data_dir of each torchvision data set that
    would be downloaded there, can be written (one line naming the parameter otherwise, exit 2)."""
    from ncflow.engine.data import missing_data_files
    from ncflow.record.local_record import record_root

    require_writable_dir(record_root(record_dir), record_dir_parameter(record_dir))
    for data_dir in sorted({c.data_dir for c in configs if missing_data_files(c.dataset, Path(c.data_dir))}):
        require_writable_dir(data_dir, "data_dir")


def check_storage_dir(url: str) -> None:
    """A sweep's journal or SQLite storage file goes in a directory that can be written (PostgreSQL: nothing here)."""
    from ncflow.sweeps.storage import storage_kind

    kind = storage_kind(url)
    if kind == "journal":
        require_writable_dir(Path(url).parent, "--storage")
    elif kind == "sqlite":
        require_writable_dir(Path(url.split(":///", 1)[-1].split("?", 1)[0]).expanduser().absolute().parent,
                             "--storage")

