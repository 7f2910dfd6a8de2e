"""Continue a run whose process ended (crash, Ctrl-C, SIGTERM, SIGKILL, OOM) in the same MLflow run.

One writer per run: the run's local record is held before any work (`hold_record`), so a second resume, or a
resume beside a live run, refuses in one line. The resume state comes from the local record or, on another
machine, from the run's MLflow checkpoint; the run then trains on exactly as `ncflow.tracked.train` trains a new
one (`run_recorded`). See docs/reliability.md.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from ncflow.engine import optional_metrics, run_setup
from ncflow.engine.config import ConfigError
from ncflow.record.liveness import RUN_STALE_AFTER_S, parse_heartbeat
from ncflow.record.local_record import RecordTaken, RunRecord, record_root
from ncflow.tracked import mlflow_run, provenance, stale_runs
from ncflow.tracked.train import SHIP_TIMEOUT_S, TrainResult, place_of, run_recorded
from ncshared import schema
from ncshared.run_config import RunConfig

RESUME_WAITS_FOR_SYNC_S = 60.0  # a resume waits this long for an `ncflow sync` that ships the run's record


def hold_record(record: RunRecord) -> None:
    """Hold the run's record before any work (one writer per run); ConfigError naming the holder when another
    live process has it — after waiting up to RESUME_WAITS_FOR_SYNC_S for one that only ships it."""
    try:
        record.take(wait_for_sync_s=RESUME_WAITS_FOR_SYNC_S)
    except RecordTaken as error:
        raise ConfigError(f"resume: {error}") from None


def resumable_run(client: MlflowClient, run_id: str, force: bool) -> Any:
    """The run to resume; ConfigError for a run that is not an ncflow training run, or FINISHED without `force`."""
    run = client.get_run(run_id)
    kind = run.data.tags.get(schema.TAG_KIND)
    if kind != schema.KIND_TRAIN:
        raise ConfigError(f"resume: run {run_id} is not an ncflow training run (tag {schema.TAG_KIND} is {kind!r})")
    if run.info.status == "FINISHED" and not force:
        raise ConfigError(f"resume: run {run_id} is FINISHED; --force continues it anyway")
    return run


def refuse_live_run(run: Any, record: RunRecord) -> None:
    """A run whose process still trains must not get a second one.

    The local record knows best: holding it (`hold_record`) refused a live owner. Without one (another
    machine's run), the heartbeat tag decides.
    """
    if record.exists():
        return  # held by this process now: whatever the heartbeat says, nobody else trains it
    beat = parse_heartbeat(run.data.tags.get(schema.TAG_HEARTBEAT))
    if run.info.status == "RUNNING" and beat is not None and time.time() - beat[0] < RUN_STALE_AFTER_S:
        raise ConfigError(
            f"resume: run {run.info.run_id} is still training (heartbeat {time.time() - beat[0]:.0f} s ago from "
            f"{beat[1]} pid {beat[2]}); a run is stale {RUN_STALE_AFTER_S:.0f} s after its last heartbeat"
        )


def resume_state(
    client: MlflowClient, local: RunRecord, config: RunConfig
) -> tuple[dict[str, Any], dict[int, Any]]:
    """The newest resume state of the run whose record (held) is `local`, and the rows already logged after it."""
    run_id = local.run_id
    if local.state_path.exists():
        try:
            state = mlflow_run.load_state_file(local.state_path, str(local.state_path))
        except ValueError as error:
            raise ConfigError(f"resume: {error}; remove it to resume from MLflow's {schema.checkpoint_path('last')}") from None
        return state, local.epoch_rows()
    verdict = stale_runs.resumability(local, client)  # the answer the description and `runs --stale` give too
    if not verdict.resumable:
        raise ConfigError(f"resume: run {run_id} {verdict.why}")
    try:
        state = mlflow_run.load_checkpoint(client, run_id, schema.CHECKPOINT_LAST)
    except MlflowException:
        raise ConfigError(
            f"resume: run {run_id} has no resume state: looked for {local.state_path} and for the MLflow artifact "
            f"{schema.checkpoint_path(schema.CHECKPOINT_LAST)} in {client.tracking_uri}"
        ) from None
    except ValueError as error:
        raise ConfigError(f"resume: {error}") from None
    local.files_dir.mkdir(parents=True, exist_ok=True)  # a record here for a run from another machine
    keys = (*schema.PER_EPOCH_METRICS, *optional_metrics.optional_metric_names(config))
    return state, mlflow_run.logged_epoch_rows(client, run_id, after=int(state["epoch"]), keys=keys)


def resume(
    run_id: str,
    *,
    tracking_uri: str = "",
    progress: bool = True,
    force: bool = False,
    record_dir: str | Path | None = None,
    ship_timeout_s: float | None = SHIP_TIMEOUT_S,
) -> TrainResult:
    """Continue a run whose process ended (crash, Ctrl-C, SIGTERM, SIGKILL, OOM) in the same MLflow run.

    Every epoch gets exactly one row: epochs already logged before the process died are retrained to rebuild
    the state but keep their logged rows. Refuses (ConfigError) a live run (its record held by another process,
    or its heartbeat fresh), a FINISHED run without `force`, a run that is not an ncflow training run, and a
    missing or unreadable resume state. The record is held before any work, so of two resumes one refuses.
    """
    client = mlflow_run.client_for_uri(tracking_uri or None)
    mlflow_run.require_run(client, run_id, "resume")
    resumable_run(client, run_id, force)  # refused before the record is touched
    record = RunRecord(record_root(record_dir) / run_id)
    hold_record(record)
    try:
        run = resumable_run(client, run_id, force)  # again: another process may have finished it meanwhile
        refuse_live_run(run, record)
        config = mlflow_run.config_of_run(client, run_id)
        state, recorded = resume_state(client, record, config)
        setup = run_setup.prepare(config.replace(init_from="none", rescale_alpha=1.0),
                                  run.data.metrics.get(schema.FN_REF))
        setup.config = config
        run_setup.restore(setup, state, recorded)
    except BaseException:
        record.let_go()  # refused or failed before it wrote anything: the record is as it was
        raise
    record.claim({"tracking_uri": client.tracking_uri})
    record.status("RUNNING")
    logged = {key: value for key, value in run.data.tags.items() if key in schema.PROVENANCE_TAGS}
    changed = provenance.resumed_with(logged, provenance.collect(setup).tags)
    tags = {schema.TAG_STATUS: schema.STATUS_RUNNING, schema.TAG_FAIL_REASON: ""}
    if changed:  # the run started on other code or numerics: say so (its start's provenance stays as logged)
        tags[schema.TAG_RESUMED_WITH] = changed
    record.tags(tags)
    return run_recorded(setup, client, record, progress, ship_timeout_s, place_of(client, run_id), {**logged, **tags})
