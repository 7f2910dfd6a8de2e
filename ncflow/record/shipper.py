"""Ship a run record's journal to MLflow in the background, with retries and no time limit.

The training loop only appends to the local record (`ncflow.record.local_record`); this thread sends what is new,
in journal order, and advances the record's `shipped` count after each batch MLflow accepted. A failed call
(the server is down, restarting, or the network is gone) is retried with backoff for as long as it takes;
the loop never waits for it. Consecutive metric entries go out as one `log_batch` of up to 1,000 metrics.
Every ~30 s the thread also refreshes the run's heartbeat tag, so a run whose process died is recognisable.
What is still unsent when the process ends stays in the record for `ncflow sync` (or the next `ncflow train`).
"""

from __future__ import annotations

import logging
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any, Callable

from mlflow.entities import Metric, RunTag
from mlflow.tracking import MlflowClient

from ncflow.record import logged_model
from ncflow.record.liveness import RUN_HEARTBEAT_EVERY_S, Owner, heartbeat_value
from ncflow.record.local_record import ARTIFACT, METRICS, MODEL, STATUS, TAGS, RunRecord, find_records
from ncflow.record.record_lock import SYNC, RecordTaken
from ncflow.record.retry import retried
from ncshared import schema

MAX_METRICS_PER_BATCH = 1000  # MLflow's limit for one log_batch
MAX_TAGS_PER_BATCH = 100
SHIP_EVERY_S = 2.0  # how long new entries may wait, so one write carries several epochs
RETRY_BACKOFF_S = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0)

log = logging.getLogger(__name__)


def ship_batch(client: MlflowClient, record: RunRecord, entries: list[dict[str, Any]]) -> None:
    """Send one group of journal entries (all metrics, or one other entry) to MLflow; raises on failure."""
    run_id = record.run_id
    kind = entries[0]["type"]
    if kind == METRICS:
        metrics = [
            Metric(key, value, entry["ts"], entry["step"]) for entry in entries for key, value in entry["values"].items()
        ]
        for start in range(0, len(metrics), MAX_METRICS_PER_BATCH):
            client.log_batch(run_id, metrics=metrics[start : start + MAX_METRICS_PER_BATCH], synchronous=True)
    elif kind == TAGS:
        tags = [RunTag(key, value) for key, value in entries[0]["tags"].items()]
        for start in range(0, len(tags), MAX_TAGS_PER_BATCH):
            client.log_batch(run_id, tags=tags[start : start + MAX_TAGS_PER_BATCH], synchronous=True)
    elif kind == ARTIFACT:
        path = entries[0]["path"]
        local = record.files_dir / path
        directory = str(Path(path).parent) if "/" in path else None
        if local.exists():  # a file replaced later by a newer version is uploaded again then
            client.log_artifact(run_id, str(local), artifact_path=directory)
    elif kind == MODEL:
        logged_model.ship(client, record, entries[0])
    elif kind == STATUS:
        status = entries[0]["status"]
        if status == "RUNNING":
            client.update_run(run_id, status="RUNNING")
        else:
            client.set_terminated(run_id, status=status)


def group_entries(entries: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Consecutive metric entries together (up to a batch), every other entry alone, order kept."""
    groups: list[list[dict[str, Any]]] = []
    size = 0
    for entry in entries:
        count = len(entry.get("values", ()))
        joinable = groups and entry["type"] == METRICS and groups[-1][0]["type"] == METRICS
        if joinable and size + count <= MAX_METRICS_PER_BATCH:
            groups[-1].append(entry)
            size += count
        else:
            groups.append([entry])
            size = count
    return groups


def ship_pending(client: MlflowClient, record: RunRecord, should_stop: Callable[[], bool] = lambda: False) -> int:
    """Ship every unsent entry, retrying each failed group until it goes through or `should_stop()`.

    Returns how many entries are still unsent (0 unless stopped during an outage).
    """
    sent = record.shipped()
    pending = list(record.entries(sent))

    def tell(error: Exception, pause: float) -> None:
        log.info("MLflow did not take run %s's journal (%s); retrying in %.1f s", record.run_id, error, pause)

    for group in group_entries(pending):
        try:  # the server is down or failing: keep the entries, try again later
            retried(partial(ship_batch, client, record, group), delays=RETRY_BACKOFF_S, give_up=should_stop,
                    on_retry=tell)
        except Exception:  # stopped during an outage
            return record.entry_count() - sent
        sent += len(group)
        record.mark_shipped(sent)
    return record.entry_count() - sent


class Shipper:
    """The background thread that ships one live run record and refreshes its heartbeat."""

    def __init__(
        self, client: MlflowClient, record: RunRecord, heartbeat_every_s: float = RUN_HEARTBEAT_EVERY_S
    ) -> None:
        self.client, self.record = client, record
        self.heartbeat_every_s = heartbeat_every_s
        self.owner = Owner.this_process()
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._abandon = threading.Event()
        self._last_heartbeat = 0.0
        self._thread = threading.Thread(target=self._run, name=f"ncflow-shipper-{record.run_id[:8]}", daemon=True)

    def start(self) -> "Shipper":
        self._thread.start()
        return self

    def nudge(self) -> None:
        """Ship soon (e.g. after a checkpoint), without waiting for the next tick."""
        self._wake.set()

    def _heartbeat(self) -> None:
        now = time.time()
        if now - self._last_heartbeat < self.heartbeat_every_s:
            return
        try:
            tag = RunTag(schema.TAG_HEARTBEAT, heartbeat_value(self.owner, now))
            self.client.log_batch(self.record.run_id, tags=[tag], synchronous=True)
            self._last_heartbeat = now
        except Exception:  # the outage is handled by the journal's retries; a heartbeat is only a hint
            self._last_heartbeat = now - self.heartbeat_every_s / 2

    def _run(self) -> None:
        while True:
            closing = self._closing.is_set()
            self._heartbeat()
            ship_pending(self.client, self.record, self._abandon.is_set)
            if closing or self._abandon.is_set():
                return
            self._wake.wait(SHIP_EVERY_S)
            self._wake.clear()

    def close(self, timeout_s: float | None) -> int:
        """Ship everything left (waiting at most `timeout_s`; None: as long as it takes); returns what is unsent."""
        self._closing.set()
        self._wake.set()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            self._abandon.set()
            self._thread.join(60.0)
        return self.record.unshipped()


def sync_records(
    client_for_uri: Callable[[str], MlflowClient],
    root: Path,
    tracking_uri: str | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> list[tuple[RunRecord, int]]:
    """Ship the unsent entries of every record under `root` whose process is gone (of `tracking_uri`, if given).

    Each record is held (`RunRecord.take(SYNC)`) while it ships, so a resume waits for it; a record another live
    process holds (its writer, or another sync) is skipped. Returns (record, entries still unsent) for each record
    that had something to ship.
    """
    results = []
    for record in find_records(root):
        uri = record.meta().get("tracking_uri", "")
        if record.unshipped() == 0 or (tracking_uri is not None and uri != tracking_uri):
            continue
        try:
            record.take(SYNC)
        except RecordTaken:
            continue  # its writer lives (it ships its own record) or another sync has it
        try:
            if record.unshipped() == 0:  # another sync sent it just before
                continue
            left = ship_pending(client_for_uri(uri), record, should_stop)
        finally:
            record.let_go()
        results.append((record, left))
    return results
