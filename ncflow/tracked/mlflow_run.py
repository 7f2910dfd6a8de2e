"""Training's side of MLflow: open (or adopt) the run and write its params and tags; read runs back.

Everything a run logs while it trains goes through its local record (`ncflow.record.local_record`) and the
shipper (`ncflow.record.shipper`); the calls here run before training starts (the store checked, the run
created, params written) or read what MLflow holds (checkpoints, earlier runs, logged rows for a resume).
Every name comes from `ncshared.schema` (listed in docs/tracking.md).
"""

from __future__ import annotations

import sys
import tempfile
from contextlib import suppress
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from mlflow.entities import DatasetInput, Param, Run, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from ncflow.engine.config import ConfigError, build_config, condition_hash, parse_field, run_name
from ncflow.record.retry import is_database_locked, retried
from ncshared import schema
from ncshared.mlflow_env import (
    StoreUnavailable,
    adopted_experiment_name,
    adopted_run_id,
    check_store,
    open_store,
    resolve_tracking_uri,
)
from ncshared.run_config import RunConfig


def client_for(config: RunConfig) -> MlflowClient:
    """A client for the run's store, checked first: a bad or unreachable store is a one-line ConfigError."""
    return client_for_uri(config.tracking_uri)


def client_for_uri(tracking_uri: str | None) -> MlflowClient:
    """`ncshared.mlflow_env.open_store`, its one-line refusal as a ConfigError."""
    try:
        return open_store(tracking_uri)
    except StoreUnavailable as error:
        raise ConfigError(str(error)) from None


class _NotCreated(Exception):
    """`create_experiment` failed: another worker created the experiment first, or the store was busy."""


def ensure_experiment(client: MlflowClient, name: str) -> str:
    """The experiment's id, creating it once; safe when several workers race to create it."""

    def find_or_create() -> str:
        experiment = client.get_experiment_by_name(name)
        if experiment is not None:
            if experiment.lifecycle_stage == "deleted":
                client.restore_experiment(experiment.experiment_id)
            return experiment.experiment_id
        try:
            return client.create_experiment(name)
        except MlflowException as error:
            raise _NotCreated() from error

    try:  # after a failed create, look again: 0.2 s, 0.4 s, … apart, five looks in all
        return retried(find_or_create, when=lambda error: isinstance(error, _NotCreated),
                       delays=[0.2 * (k + 1) for k in range(4)], attempts=5)
    except _NotCreated as error:
        raise MlflowException(f"could not create or find MLflow experiment {name!r}") from error.__cause__


def sweep_parent_run(client: MlflowClient, experiment_id: str | None, sweep: str) -> Run | None:
    """The sweep's parent run: the run `mlflow run` made for this process, else the latest run tagged
    kind=sweep and sweep=`sweep` in the experiment; None when there is none (or no experiment)."""
    adopted = adopted_run_id()
    if adopted:
        return client.get_run(adopted)
    if experiment_id is None:
        return None
    found = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{schema.TAG_KIND}` = '{schema.KIND_SWEEP}' and tags.`{schema.TAG_SWEEP}` = '{sweep}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return found[0] if found else None


def logged_param_matches(name: str, logged: str, wanted: str) -> bool:
    """`mlflow run -P weight_decay=2e-4` logs `2e-4`; ncflow means the same number `0.0002`."""
    if logged == wanted:
        return True
    with suppress(ConfigError):
        return parse_field(name, logged) == parse_field(name, wanted)
    return False


def log_config_params(client: MlflowClient, run_id: str, config: RunConfig) -> None:
    """Log every RunConfig field; params MLflow already holds (from `mlflow run -P`) must agree."""
    logged = client.get_run(run_id).data.params
    missing = []
    for name, value in config.as_params().items():
        if name not in logged:
            missing.append(Param(name, value))
        elif not logged_param_matches(name, logged[name], value):
            raise ConfigError(f"{name}: the run already has {logged[name]!r}, the configuration says {value!r}")
    for start in range(0, len(missing), 100):
        client.log_batch(run_id, params=missing[start : start + 100], synchronous=True)


def with_adopted_experiment(client: MlflowClient, config: RunConfig) -> RunConfig:
    """Under `mlflow run` the experiment is the one MLflow put the run in."""
    experiment = adopted_experiment_name(client)
    return config if experiment is None else config.replace(experiment=experiment)


def open_run(
    client: MlflowClient,
    config: RunConfig,
    *,
    sweep: str | None = None,
    parent_run_id: str | None = None,
    extra_tags: Mapping[str, str] | None = None,
    inputs: Sequence[DatasetInput] = (),
) -> str:
    """Start (or, under `mlflow run`, adopt) the training run and write its params, tags (the provenance among
    `extra_tags`) and dataset inputs; its id."""
    adopted = adopted_run_id()
    if adopted:  # under `mlflow run`: MLflow made the run, in the experiment it was told
        run_id = adopted
        config = with_adopted_experiment(client, config)
    else:
        experiment_id = ensure_experiment(client, config.experiment)
        run_id = client.create_run(experiment_id, run_name=run_name(config)).info.run_id
    tags = {
        schema.TAG_RUN_NAME: run_name(config),
        schema.TAG_KIND: schema.KIND_TRAIN,
        schema.TAG_CONDITION: condition_hash(config),
        schema.TAG_STATUS: schema.STATUS_RUNNING,
    }
    if sweep:
        tags[schema.TAG_SWEEP] = sweep
    if parent_run_id:
        tags[schema.TAG_PARENT_RUN] = parent_run_id
    tags.update(extra_tags or {})
    client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()], synchronous=True)
    log_config_params(client, run_id, config)
    if inputs:
        # Two workers opening runs on the same data race to insert the one dataset row: the loser's transaction
        # fails on the store's unique key and rolls back; called again, it finds the row and links it.
        retried(lambda: client.log_inputs(run_id, datasets=list(inputs)), when=dataset_insert_race, delays=(0.2,),
                attempts=5)
    return run_id


def dataset_insert_race(error: BaseException) -> bool:
    """Another process inserted the same dataset (experiment, name, digest) first, or the store was busy."""
    text = str(error)
    return "UNIQUE constraint failed: datasets" in text or "duplicate key value" in text or is_database_locked(error)


def set_tags(client: MlflowClient, run_id: str, tags: Mapping[str, str]) -> None:
    client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()], synchronous=True)


def load_checkpoint(client: MlflowClient, run_id: str, name: str) -> dict[str, Any]:
    """Download and load `checkpoints/<name>.pt` of a run (weights_only: no code runs on load).

    Raises MlflowException when the run has no such artifact, and ValueError naming the artifact when it
    is not a readable checkpoint (truncated, empty, or not a torch file).
    """
    with tempfile.TemporaryDirectory() as tmp:
        path = client.download_artifacts(run_id, schema.checkpoint_path(name), tmp)
        return load_state_file(Path(path), f"MLflow artifact {schema.checkpoint_path(name)} of run {run_id}")


def load_state_file(path: Path, label: str) -> dict[str, Any]:
    """`torch.load(weights_only=True)` of a checkpoint file; ValueError naming `label` when unreadable."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated, zero bytes, or another format: torch raises several types
        detail = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        raise ValueError(f"{label} is not a readable checkpoint ({detail})") from None
    if not isinstance(state, dict) or "model" not in state or "epoch" not in state:
        raise ValueError(f"{label} is not an ncflow checkpoint (no model and epoch)")
    return state


def logged_epoch_rows(
    client: MlflowClient, run_id: str, after: int, keys: Sequence[str] = schema.PER_EPOCH_METRICS
) -> dict[int, dict[str, float]]:
    """Per-epoch rows (`keys`) MLflow already holds for steps > `after`, complete rows only, each with its timestamp."""
    values: dict[int, dict[str, float]] = {}
    stamps: dict[int, int] = {}
    for key in keys:
        for metric in client.get_metric_history(run_id, key):
            if metric.step > after:
                values.setdefault(metric.step, {})[key] = metric.value
                stamps[metric.step] = metric.timestamp
    logged = {key for row in values.values() for key in row}  # a run from before a metric existed lacks it
    complete = {step: row for step, row in values.items() if len(row) == len(logged)}
    return {step: {"ts": stamps[step], **row} for step, row in complete.items()}


def tell_run(client: MlflowClient, run_id: str, tags: Mapping[str, str], status: str | None,
             quiet: bool = False) -> None:
    """Tags and the final status straight to MLflow, for what a run's local record could not take (a full disk, a
    bad start). A store that is away too is one line on stderr (none when `quiet`): the run stays as MLflow last
    heard of it."""
    try:
        if tags:
            client.log_batch(run_id, tags=[RunTag(key, value) for key, value in tags.items()], synchronous=True)
        if status is not None:
            client.set_terminated(run_id, status=status)
    except Exception as error:
        if quiet:
            return
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        print(f"ncflow: could not tell MLflow at {client.tracking_uri} how run {run_id} ended: {first}",
              file=sys.stderr)


def fail_adopted_run(reason: str) -> None:
    """Under `mlflow run`, end the run MLflow made for us FAILED, with the reason as tag and description.

    Best effort: it runs on the way out of a bad start, where the store itself may be what failed.
    """
    run_id = adopted_run_id()
    if run_id is None:
        return
    with suppress(Exception):
        uri = resolve_tracking_uri(None)
        check_store(uri)  # a store that is down would otherwise keep this exit waiting for minutes
        tags = {
            schema.TAG_STATUS: schema.STATUS_FAILED,
            schema.TAG_FAIL_REASON: reason[:5000],
            schema.TAG_NOTE: f"**ncflow did not start:** {reason}",
        }
        tell_run(MlflowClient(tracking_uri=uri), run_id, tags, "FAILED", quiet=True)


def config_of_run(client: MlflowClient, run_id: str) -> RunConfig:
    """The RunConfig a run was trained with, rebuilt from its params."""
    params = client.get_run(run_id).data.params
    known = {name: value for name, value in params.items() if name in RunConfig.__dataclass_fields__}
    return build_config(None, known)


def require_run(client: MlflowClient, run_id: str, parameter: str) -> None:
    """Fail with one line naming `parameter` when `run_id` is not a run in the store."""
    try:
        client.get_run(run_id)
    except MlflowException:
        raise ConfigError(f"{parameter}: no MLflow run {run_id!r} in {client.tracking_uri}") from None


def reference_fn_star(client: MlflowClient, config: RunConfig) -> float | None:
    """Mean fn* of the finished, collapsed runs of this condition in the store, other seeds only (no leak)."""
    experiment = client.get_experiment_by_name(config.experiment)
    if experiment is None:
        return None
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=(
            f"tags.`{schema.TAG_CONDITION}` = '{condition_hash(config)}' "
            f"and tags.`{schema.TAG_STATUS}` = '{schema.STATUS_COLLAPSED}' "
            f"and attributes.status = 'FINISHED'"
        ),
        max_results=1000,
    )
    values = [
        run.data.metrics[schema.FN_STAR]
        for run in runs
        if schema.FN_STAR in run.data.metrics and not schema.same_number(run.data.params.get("seed", ""), config.seed)
    ]
    return sum(values) / len(values) if values else None
