"""The local, crash-safe record of one training run: written first, shipped to MLflow afterwards.

A run's directory (default `.ncflow/runs/RUN_ID/` under the working directory; `--record-dir` or
`NCFLOW_RECORD_DIR` moves it) holds:

    record.json       who owns the run: run id, tracking URI, experiment, host, boot id, pid, process start time
    record.lock       the one-writer lock (see below: record_lock); while held, it names its holder (host, boot id, pid, start
                      time) and why it holds it (`write`: trains the run; `sync`: ships what a dead run left)
    journal.jsonl     every MLflow write, one JSON object a line, in order: per-epoch metrics (with the
                      timestamp they will carry in MLflow), summary metrics, tags, artifacts, run status
    shipped           how many journal entries MLflow has (written atomically after each shipped batch)
    state.pt          the training state after the latest saved epoch (model, optimiser, schedule, RNG,
                      batch order, history), replaced atomically (temp file + os.replace)
    files/…           artifacts before upload: checkpoints/*.pt, history.csv, config.json, figures/…
    model/…           the final network and an input example, before the shipper logs them as the run's MLflow
                      model (ncflow.record.logged_model)

Why a journal of our own and not MLflow's asynchronous logging: MLflow's async queue lives in process
memory, so SIGKILL or an OOM kill loses it, and its retries give up after a few minutes of outage. The
journal is appended and flushed line by line, so a killed process loses at most the line being written
(ignored on reading); each entry carries its own timestamp, so shipping it twice stores it once (MLflow's
SQL stores drop a metric identical in key, step, timestamp and value).

One writer per run: `claim` and `take` hold the record exclusively before any work (an OS lock on `record.lock`,
ncflow.record.record_lock, which says why and what it guarantees); record.json names the owner, as before.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterator, Mapping

from ncflow.record.liveness import Owner
from ncflow.record.record_lock import WRITE, Holder, RecordLock, RecordTaken

RECORD_DIR_VARIABLE = "NCFLOW_RECORD_DIR"
DEFAULT_RECORD_DIR = Path(".ncflow") / "runs"
RECORD_FILE, JOURNAL_FILE, SHIPPED_FILE, STATE_FILE, FILES_DIR = "record.json", "journal.jsonl", "shipped", "state.pt", "files"
MODEL_DIR = "model"

METRICS, TAGS, ARTIFACT, STATUS, MODEL = "metrics", "tags", "artifact", "status", "model"  # journal entry types


def record_root(record_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where run records live: the argument, else NCFLOW_RECORD_DIR, else .ncflow/runs in the working directory."""
    return Path(record_dir or os.environ.get(RECORD_DIR_VARIABLE) or DEFAULT_RECORD_DIR).expanduser().absolute()


NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})  # the device is full, or the user's quota is


def size_text(size: int | None) -> str:
    """`512 bytes`, `3.1 kB`, `14.2 MB`, `1.3 GB` (`unknown` for None)."""
    if size is None:
        return "unknown"
    if size < 10_000:
        return f"{size} bytes"
    for unit, scale in (("kB", 1e3), ("MB", 1e6), ("GB", 1e9)):
        if size < scale * 1000 or unit == "GB":
            return f"{size / scale:.1f} {unit}"
    return f"{size} bytes"


def free_space(path: Path) -> int | None:
    """Bytes free for this user on the file system that holds `path` (or its nearest existing parent)."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            try:
                return shutil.disk_usage(candidate).free
            except OSError:
                return None
    return None


class RecordDiskFull(OSError):
    """A write into a run record found no space (ENOSPC, or EDQUOT: over quota). `str()` is one line naming the
    file, the space the write needed and the space left; `outcomes` is filled in by whoever ends the runs it failed
    (what became of each), for the command line's one-line message."""

    def __init__(self, error: OSError, path: Path, needed: int | None) -> None:
        self.path, self.needed, self.free = path, needed, free_space(path)
        what = f"writing {path} needs {size_text(needed)}" if needed is not None else f"cannot write in {path}"
        super().__init__(error.errno, f"{os.strerror(error.errno or errno.ENOSPC)}: {what}, "
                                      f"{size_text(self.free)} free there")
        self.outcomes: list[str] = []

    def __str__(self) -> str:
        return str(self.strerror)

    def one_line(self) -> str:
        """The error and what became of the runs it ended, in one line."""
        return "; ".join((str(self), *self.outcomes))


def no_space(error: OSError, path: Path, needed: int | None) -> OSError:
    """`error` as a RecordDiskFull when it says the device (or the quota) is full; else `error` itself."""
    if error.errno in NO_SPACE_ERRNOS and not isinstance(error, RecordDiskFull):
        return RecordDiskFull(error, path, needed)
    return error


def atomic_write_bytes(path: Path, data: bytes, durable: bool = True) -> None:
    """Write `data` to `path` so that a reader (or a crash) sees the old file or the new one, never a mix.

    `durable` also syncs the data to disk (survives a power cut, not only a killed process). A full disk raises
    RecordDiskFull (the old file is kept, and the partial new one removed).
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(data)
                handle.flush()
                if durable:
                    os.fsync(handle.fileno())
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
    except OSError as error:
        raised = no_space(error, path, len(data))
        if raised is error:
            raise
        raise raised from None


class RunRecord:
    """One run's directory. The training process appends; the shipper reads and advances `shipped`."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self._claim_lock = RecordLock(self.directory)
        self._journal: Any = None
        self._shipped_mark = 0  # the highest `mark_shipped` count, for when the disk cannot take the file
        self._entries: int | None = None
        self._append_lock = threading.Lock()
        self._read_mark = (0, 0)  # (entries, bytes) of the journal's complete lines read so far

    # ---------------------------------------------------------------------------------------- creation

    @classmethod
    def create(cls, root: Path, run_id: str, meta: Mapping[str, Any]) -> "RunRecord":
        """A record for `run_id` owned by this process (a dead owner's is taken over; RecordTaken if a live one's)."""
        record = cls(root / run_id)
        record.files_dir.mkdir(parents=True, exist_ok=True)
        record.claim(meta)
        return record

    def claim(self, meta: Mapping[str, Any] | None = None) -> None:
        """Make this process the record's one writer: take its lock (RecordTaken when another live process holds
        it), then name this process as the owner in record.json (merging `meta`)."""
        self.take(WRITE)
        merged = {**self.meta(), **(meta or {}), **asdict(Owner.this_process()), "claimed_at": time.time(),
                  "released": False}
        atomic_write_bytes(self.directory / RECORD_FILE, json.dumps(merged, indent=1).encode())

    # -------------------------------------------------------------------------------------- the one writer

    def take(self, purpose: str = WRITE, wait_for_sync_s: float = 0.0) -> None:
        """Hold the record exclusively until `let_go`, `release` or this process's end (nothing if held already).

        Raises RecordTaken at once when another live process holds it — after up to `wait_for_sync_s` when that
        process only ships it (SYNC) — or when record.json names a live owner other than this process.
        """
        if self._claim_lock.held:
            return
        self._claim_lock.take(purpose, wait_for_sync_s, self._live_owner)
        writer = self._live_owner()
        if writer is not None:  # it holds no lock (an older ncflow, a file system without flock) but writes
            self.let_go()
            raise RecordTaken(self.run_id, writer)

    def _live_owner(self) -> Holder | None:
        """record.json's owner as a writer, when it is alive and not this process."""
        owner = self.owner()
        if owner is None or not owner.is_alive() or owner.pid == os.getpid():  # alive with my pid: this process
            return None
        return Holder(owner, WRITE)

    def holder(self, local_only: bool = True) -> Holder | None:
        """The live process that holds the record's lock now; None when nobody does (record_lock.RecordLock)."""
        return self._claim_lock.holder(local_only)

    def let_go(self) -> None:
        """Give the record's lock back; nothing when this object does not hold it."""
        self._claim_lock.let_go()

    @property
    def run_id(self) -> str:
        return self.directory.name

    @property
    def files_dir(self) -> Path:
        return self.directory / FILES_DIR

    @property
    def state_path(self) -> Path:
        return self.directory / STATE_FILE

    @property
    def model_dir(self) -> Path:
        return self.directory / MODEL_DIR

    def meta(self) -> dict[str, Any]:
        try:
            return json.loads((self.directory / RECORD_FILE).read_text())
        except (OSError, ValueError):
            return {}

    def release(self) -> None:
        """The owner is done with the record (training ended, whatever the outcome); nobody writes it now."""
        atomic_write_bytes(self.directory / RECORD_FILE, json.dumps({**self.meta(), "released": True}, indent=1).encode())
        self.let_go()

    def exists(self) -> bool:
        return (self.directory / RECORD_FILE).is_file()

    def owner(self) -> Owner | None:
        """The process writing the record now; None when released (or never claimed).

        A record.json written before the boot id was kept has none: its owner's boot counts as this machine's.
        """
        meta = self.meta()
        if "pid" not in meta or meta.get("released"):
            return None
        return Owner.from_mapping({"host": "", **meta})

    # ----------------------------------------------------------------------------------------- writing

    def _open_journal(self) -> Any:
        if self._journal is None:
            path = self.directory / JOURNAL_FILE
            complete = self._complete_length(path)
            if path.exists() and path.stat().st_size != complete:
                os.truncate(path, complete)  # a line cut by a kill: drop it before appending
            self._journal = open(path, "ab", buffering=0)  # each write goes to the OS at once
            self._entries = sum(1 for _ in self.entries())
        return self._journal

    @staticmethod
    def _complete_length(path: Path) -> int:
        """Bytes up to the last newline of the journal (0 when none)."""
        if not path.exists():
            return 0
        data = path.read_bytes()
        return data.rfind(b"\n") + 1

    def append(self, entry: Mapping[str, Any]) -> None:
        """Append one journal entry and hand it to the OS (a SIGKILL after this returns cannot lose it).

        A write that fails (a full disk: RecordDiskFull) leaves no part of the line: the journal is cut back to
        where it was, so the next entry starts on a line of its own."""
        line = (json.dumps(entry, separators=(",", ":")) + "\n").encode()
        with self._append_lock:
            journal = self._open_journal()
            size = os.fstat(journal.fileno()).st_size
            try:
                rest = memoryview(line)
                while rest:
                    rest = rest[journal.write(rest):]
            except OSError as error:
                with contextlib.suppress(OSError):
                    os.ftruncate(journal.fileno(), size)
                raised = no_space(error, self.directory / JOURNAL_FILE, len(line))
                if raised is error:
                    raise
                raise raised from None
            self._entries = (self._entries or 0) + 1

    def metrics(self, step: int, values: Mapping[str, float], timestamp_ms: int | None = None) -> None:
        stamp = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
        self.append({"type": METRICS, "step": int(step), "ts": stamp, "values": {k: float(v) for k, v in values.items()}})

    def tags(self, tags: Mapping[str, str]) -> None:
        self.append({"type": TAGS, "tags": {k: str(v) for k, v in tags.items()}})

    def status(self, status: str) -> None:
        """The MLflow run status to set (RUNNING, FINISHED, FAILED, KILLED)."""
        self.append({"type": STATUS, "status": status})

    def artifact_bytes(self, artifact_path: str, data: bytes) -> None:
        """Keep `data` as the run's artifact `artifact_path` (e.g. `checkpoints/last.pt`) and journal its upload."""
        atomic_write_bytes(self.files_dir / artifact_path, data)
        self.append({"type": ARTIFACT, "path": artifact_path})

    def model(self, files: Mapping[str, bytes], entry: Mapping[str, Any]) -> None:
        """Keep the files of the run's MLflow model (under `model/`) and journal its logging (`entry`: what the
        shipper needs besides the files)."""
        for name, data in files.items():
            atomic_write_bytes(self.model_dir / name, data)
        self.append({**entry, "type": MODEL})

    def close(self) -> None:
        if self._journal is not None:
            self._journal.close()
            self._journal = None

    # ----------------------------------------------------------------------------------------- reading

    def entries(self, start: int = 0) -> Iterator[dict[str, Any]]:
        """Journal entries from index `start`; a last line cut by a kill is skipped.

        The byte offset of the furthest complete line read is remembered, so the shipper, which asks for
        the entries after what it shipped every few seconds, reads only what is new (the journal only grows).
        """
        path = self.directory / JOURNAL_FILE
        if not path.exists():
            return
        index, offset = self._read_mark if self._read_mark[0] <= start else (0, 0)
        with open(path, "rb") as handle:
            handle.seek(offset)
            for line in iter(handle.readline, b""):
                if not line.endswith(b"\n"):
                    return
                index, offset = index + 1, offset + len(line)
                if index > self._read_mark[0]:
                    self._read_mark = (index, offset)
                if index > start:
                    yield json.loads(line)

    def entry_count(self) -> int:
        if self._entries is not None:
            return self._entries
        return sum(1 for _ in self.entries())

    def shipped(self) -> int:
        try:
            marked = int((self.directory / SHIPPED_FILE).read_text().strip() or 0)
        except (OSError, ValueError):
            marked = 0
        return max(marked, self._shipped_mark)

    def mark_shipped(self, count: int) -> None:
        """Note that MLflow has the first `count` entries. When the disk cannot take the note, this process keeps it
        (another would ship those entries again, which MLflow stores once)."""
        self._shipped_mark = max(self._shipped_mark, count)
        with contextlib.suppress(OSError):
            atomic_write_bytes(self.directory / SHIPPED_FILE, str(count).encode())

    def unshipped(self) -> int:
        return max(0, self.entry_count() - self.shipped())

    def epoch_rows(self) -> dict[int, dict[str, Any]]:
        """The per-epoch metric rows journaled so far, by epoch, each with its MLflow timestamp under `ts`."""
        rows: dict[int, dict[str, Any]] = {}
        for entry in self.entries():
            if entry["type"] == METRICS and entry["step"] > 0:
                rows[entry["step"]] = {"ts": entry["ts"], **entry["values"]}
        return rows


def find_records(root: Path) -> list[RunRecord]:
    """Every run record under `root`, oldest first."""
    if not root.is_dir():
        return []
    found = [RunRecord(path) for path in root.iterdir() if (path / RECORD_FILE).is_file()]
    return sorted(found, key=lambda record: record.meta().get("claimed_at", 0.0))
