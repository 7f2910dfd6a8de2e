"""The engine's sink for a tracked run: every output goes into the local run record first.

Rows and summaries are journal lines (microseconds each); named checkpoints are written into the record's
files and journaled for upload; the resume state is saved to `state.pt` by a background thread (temp file +
os.replace), so the loop never waits for the disk.

How often the state is saved is set by its cost: a save may take at most SAVE_BUDGET of the wall time, so
the next one waits at least (last save's duration / SAVE_BUDGET). For the paper's MLPs on 2 CPU cores a save
(19 MB) takes ~30 ms, so the state is at most ~1.5 s old; on a GPU with fast epochs it is saved every
few epochs. A SIGKILL therefore loses no finished epoch's row (those are journaled every epoch) and at most
that much training, which a resume recomputes (benchmarks/bench_durability.py measures the cost).
"""

from __future__ import annotations

import io
import threading
import time
from typing import Any, Mapping

import torch

from ncflow.engine.config import typed_values
from ncflow.record.local_record import RecordDiskFull, RunRecord, atomic_write_bytes
from ncshared import schema

SAVE_BUDGET = 0.02  # the share of wall time the resume-state saves may take


def state_bytes(state: Mapping[str, Any]) -> bytes:
    """A checkpoint or resume state as `torch.save` writes it, its `config` with typed values (`depth` 7, not '7')."""
    saved = dict(state)
    if "config" in saved:
        saved["config"] = typed_values(saved["config"])
    buffer = io.BytesIO()
    torch.save(saved, buffer)
    return buffer.getvalue()


class StateWriter:
    """Saves the newest resume state to `state.pt` in a background thread."""

    def __init__(self, record: RunRecord) -> None:
        self.record = record
        self._latest: Mapping[str, Any] | None = None
        self._lock = threading.Condition()
        self._closing = False
        self._error: BaseException | None = None
        self.last_duration_s = 0.0  # how long the latest save took (serialising and writing)
        self._thread = threading.Thread(target=self._run, name="ncflow-state-writer", daemon=True)
        self._thread.start()

    def submit(self, state: Mapping[str, Any]) -> None:
        """Save `state` soon; raises the error of an earlier save that failed (a full disk as RecordDiskFull)."""
        self._raise_failure()
        with self._lock:
            self._latest = state
            self._lock.notify()

    def _run(self) -> None:
        while True:
            with self._lock:
                while self._latest is None and not self._closing:
                    self._lock.wait()
                state, self._latest = self._latest, None
                if state is None:
                    return
            started = time.perf_counter()
            try:
                atomic_write_bytes(self.record.state_path, state_bytes(state), durable=False)
            except BaseException as error:  # disk full, permissions: reported on the next submit
                self._error = error
            self.last_duration_s = time.perf_counter() - started

    def _raise_failure(self) -> None:
        if isinstance(self._error, RecordDiskFull):
            raise self._error
        if self._error is not None:
            raise RuntimeError(f"could not save the resume state to {self.record.state_path}: {self._error}")

    def close(self) -> None:
        """Write the last submitted state and stop; raises the error of a save that failed, if no submit did."""
        with self._lock:
            self._closing = True
            self._lock.notify()
        self._thread.join()
        self._raise_failure()


class RecordSink:
    """`ncflow.engine.loop.Sink` into a `RunRecord`; `last.pt` is also journaled for upload every `checkpoint_every`."""

    def __init__(self, record: RunRecord, checkpoint_every: int,
                 keep: tuple[str, ...] = schema.CHECKPOINTS) -> None:
        self.record = record
        self.checkpoint_every = checkpoint_every
        self.keep = keep  # the checkpoints MLflow gets (`--checkpoints`); the others are not written
        self.writer = StateWriter(record)
        self.latest: Mapping[str, Any] | None = None
        self._last_submit = -float("inf")

    def epoch(self, epoch: int, row: Mapping[str, float]) -> None:
        self.record.metrics(epoch, row)

    def summary(self, metrics: Mapping[str, float]) -> None:
        if metrics:
            self.record.metrics(0, metrics)

    def checkpoint(self, name: str, state: Mapping[str, Any]) -> None:
        if name not in self.keep:
            return
        self.record.artifact_bytes(schema.checkpoint_path(name), state_bytes(state))

    def start(self, state: Mapping[str, Any]) -> None:
        """Save the state training starts from (epoch 0: the initial model, optimiser and RNG; or a resumed run's)
        now, in this thread, durably: from here on the run can always be resumed. Raises RecordDiskFull when the
        record's disk cannot hold it."""
        atomic_write_bytes(self.record.state_path, state_bytes(state))

    def state(self, state: Mapping[str, Any]) -> None:
        self.latest = state
        now = time.monotonic()
        if now - self._last_submit >= self.writer.last_duration_s / SAVE_BUDGET:
            self.writer.submit(state)
            self._last_submit = now
        if int(state["epoch"]) % self.checkpoint_every == 0:
            self.checkpoint(schema.CHECKPOINT_LAST, state)

    def close(self) -> None:
        """Save the final resume state, and `last.pt` of the last finished epoch for another machine's resume.

        The writer thread is stopped also when a save failed (the error is raised then, after it stopped)."""
        try:
            if self.latest is not None:
                self.writer.submit(self.latest)  # the newest state, even when the budget skipped it
        finally:
            self.writer.close()
        if self.latest is not None and int(self.latest["epoch"]) % self.checkpoint_every != 0:
            self.checkpoint(schema.CHECKPOINT_LAST, self.latest)
