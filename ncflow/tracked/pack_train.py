"""Train a pack (ncflow.engine.pack) as one MLflow run per member, each indistinguishable from a standalone run.

Every member gets what `ncflow.tracked.train.train` gives one run — its own params, tags, name, local record, shipper,
per-epoch metrics, summary, artifacts and checkpoints — and a crash, Ctrl-C, SIGTERM or SIGHUP leaves every member
FAILED/KILLED with its reason and a resume state a standalone `ncflow train --resume RUN_ID` continues. Bad input
(a member that cannot be built, members that cannot share a pack) stops before any run exists.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

from ncflow.engine import pack
from ncflow.engine.config import ConfigError
from ncflow.record.local_record import record_root
from ncflow.record.signals import termination_as_interrupt
from ncflow.tracked import mlflow_run, stale_runs
from ncflow.tracked.train import SHIP_TIMEOUT_S, RecordedRun, TrainResult, opened, prepared
from ncshared.run_config import RunConfig


def train_pack(
    configs: Sequence[RunConfig],
    *,
    sweep: str | None = None,
    parent_run_id: str | None = None,
    extra_tags: Sequence[Mapping[str, str] | None] | None = None,
    progress: bool = True,
    record_dir: str | Path | None = None,
    ship_timeout_s: float | None = SHIP_TIMEOUT_S,
) -> list[TrainResult]:
    """Train `configs` together (`pack.run_pack`), one MLflow run each; their results, in order."""
    if not configs:
        raise ConfigError("seeds: a pack needs at least one member")
    if len(configs) > 1 and mlflow_run.adopted_run_id():
        raise ConfigError("seeds: under `mlflow run` MLflow made one run; train one seed per `mlflow run`")
    pack.check_packable(configs)
    client = mlflow_run.client_for(configs[0])
    members = [prepared(client, mlflow_run.with_adopted_experiment(client, config)) for config in configs]
    pack.share_data(members)
    root = record_root(record_dir)
    stale_runs.sync_in_background(root, client.tracking_uri)
    tags = list(extra_tags) if extra_tags is not None else [None] * len(configs)
    runs: list[RecordedRun] = []
    try:
        with termination_as_interrupt():
            for member, member_tags in zip(members, tags):
                record, place, found = opened(client, member, root, sweep, parent_run_id, member_tags)
                runs.append(RecordedRun(member, client, record, place, found.tags))
                runs[-1].begin()  # a member whose start fails (a full disk) is failed and closed with the others
            try:
                pack.run_pack(members, [run.sink for run in runs], progress)
            finally:
                for run in runs:
                    run.sink.close()  # every member's last finished epoch, also after a crash
            for run in runs:
                run.finish()
    except BaseException as error:  # KeyboardInterrupt and SystemExit too: no member may stay RUNNING
        for run in runs:
            if run.final_status != "FINISHED":
                run.fail(error)
        raise
    finally:
        results = [run.close(ship_timeout_s) for run in runs]
    return results
