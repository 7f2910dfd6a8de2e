"""Looking after runs whose process is gone: find stale runs, say whether each can be resumed, and ship what their
records still hold.

A run killed by SIGKILL or the OOM killer cannot end itself: it stays RUNNING in MLflow. Its heartbeat tag
stops being refreshed, so `stale_runs` finds it (no heartbeat for RUN_STALE_AFTER_S), and its local record
keeps every row the server has not taken (`sync` ships them; `ncflow train --resume` continues it when
`resumability` says it can: the one answer the run's description, `ncflow runs --stale` and the resume give).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from ncflow.record.liveness import RUN_STALE_AFTER_S, parse_heartbeat
from ncflow.record.local_record import RunRecord
from ncflow.record.shipper import sync_records
from ncflow.tracked import mlflow_run
from ncshared import schema


@dataclass(frozen=True)
class Resumability:
    """Whether `ncflow train --resume` can continue a run, and why: where its resume state is, or what it lacks."""

    resumable: bool
    why: str  # "from PATH" / "from MLflow's checkpoints/last.pt", or "has no resume state: looked for …"


def resumability(record: RunRecord, client: MlflowClient | None = None) -> Resumability:
    """What a resume would start from: the record's `state.pt`, else (asked only when `client` is given) the run's
    MLflow artifact `checkpoints/last.pt` — the order in which `ncflow train --resume` looks for them."""
    if record.state_path.is_file():
        return Resumability(True, f"from {record.state_path}")
    looked = f"looked for {record.state_path}"
    if client is not None:
        last = schema.checkpoint_path(schema.CHECKPOINT_LAST)
        try:
            found = any(item.path == last for item in client.list_artifacts(record.run_id, str(Path(last).parent)))
        except Exception:  # the store cannot list it: a resume could not load it either
            found = False
        if found:
            return Resumability(True, f"from MLflow's {last}")
        looked += f" and for the MLflow artifact {last} in {client.tracking_uri}"
    return Resumability(False, f"has no resume state: {looked}")


@dataclass(frozen=True)
class StaleRun:
    run_id: str
    run_name: str
    experiment: str
    silent_s: float  # seconds since the last heartbeat (or since the start, when it never sent one)
    owner: str  # `host pid N` from the heartbeat, or `unknown`
    unsent: int | None  # journal entries its local record still holds (None: no local record here)
    resume: Resumability  # whether `ncflow train --resume` continues it


def stale_runs(client: MlflowClient, root: Path, now: float | None = None) -> list[StaleRun]:
    """RUNNING ncflow training runs, in every experiment, that have been silent for RUN_STALE_AFTER_S or more."""
    now = time.time() if now is None else now
    experiments = {e.experiment_id: e.name for e in client.search_experiments(view_type=ViewType.ACTIVE_ONLY)}
    if not experiments:
        return []
    found = client.search_runs(
        list(experiments),
        filter_string=f"tags.`{schema.TAG_KIND}` = '{schema.KIND_TRAIN}' and attributes.status = 'RUNNING'",
        max_results=5000,
    )
    stale = []
    for run in found:
        beat = parse_heartbeat(run.data.tags.get(schema.TAG_HEARTBEAT))
        last = beat[0] if beat else run.info.start_time / 1000.0
        if now - last < RUN_STALE_AFTER_S:
            continue
        record = RunRecord(root / run.info.run_id)
        owner = record.owner()
        if (owner is not None and owner.is_alive()) or record.holder() is not None:
            continue  # its process lives (a server outage kept its heartbeat from arriving), or another one has it
        stale.append(StaleRun(
            run.info.run_id, run.info.run_name or "", experiments.get(run.info.experiment_id, ""), now - last,
            f"{beat[1]} pid {beat[2]}" if beat else "unknown", record.unshipped() if record.exists() else None,
            resumability(record, client),
        ))
    return sorted(stale, key=lambda item: -item.silent_s)


SYNC_PATIENCE_S = 300.0  # `ncflow sync` gives up on a server that keeps failing after this long


def sync(root: Path, tracking_uri: str | None = None, patience_s: float = SYNC_PATIENCE_S) -> list[tuple[RunRecord, int]]:
    """Ship every dead process's unsent journal entries (of `tracking_uri` when given); (record, still unsent)."""
    deadline = time.monotonic() + patience_s
    return sync_records(lambda uri: mlflow_run.client_for_uri(uri or None), root, tracking_uri,
                        lambda: time.monotonic() > deadline)


def sync_in_background(root: Path, tracking_uri: str) -> threading.Thread:
    """What every `ncflow train` does at its start: ship earlier runs' leftovers for the same store, quietly."""

    def ship() -> None:
        try:
            sync_records(lambda uri: MlflowClient(tracking_uri=uri), root, tracking_uri)
        except Exception:  # a leftover that still cannot be shipped waits for the next start or `ncflow sync`
            pass

    thread = threading.Thread(target=ship, name="ncflow-sync-leftovers", daemon=True)
    thread.start()
    return thread

