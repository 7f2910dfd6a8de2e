"""Everything MLflow: the run's name, params, tags, metrics, checkpoints and resume.

What is written here is the contract in docs/tracking.md; `analysis/store.py` reads it back.
Per-epoch metrics go through MLflow's asynchronous `log_batch`, so a slow store never stalls training.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from contextlib import suppress
from pathlib import Path
from typing import Any, Iterable, Mapping

import mlflow
import pandas as pd
import torch
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from ncflow import __version__
from ncflow.config import ConfigError, RunConfig, build_config, condition_hash, parse_field, run_name

TAG_KIND = "ncflow.kind"
TAG_CONDITION = "ncflow.condition"
TAG_SWEEP = "ncflow.sweep"
TAG_STATUS = "ncflow.status"
TAG_FAIL_REASON = "ncflow.fail_reason"
TAG_DIVERGENCE_REASON = "ncflow.divergence_reason"
TAG_PARENT = "mlflow.parentRunId"

CHECKPOINT_DIR = "checkpoints"
HISTORY_FILE = "history.csv"
CONFIG_FILE = "config.json"


def resolve_tracking_uri(tracking_uri: str | None = None) -> str:
    """The given URI, else MLFLOW_TRACKING_URI, else MLflow's embedded default (sqlite:///mlflow.db).

    Read afresh each time and never set globally, so one process can train into several stores.
    """
    return tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or mlflow.get_tracking_uri()


def client_for(config: RunConfig) -> MlflowClient:
    return MlflowClient(tracking_uri=resolve_tracking_uri(config.tracking_uri))


def ensure_experiment(client: MlflowClient, name: str) -> str:
    """The experiment's id, creating it once; safe when several workers race to create it."""
    for attempt in range(5):
        experiment = client.get_experiment_by_name(name)
        if experiment is not None:
            if experiment.lifecycle_stage == "deleted":
                client.restore_experiment(experiment.experiment_id)
            return experiment.experiment_id
        try:
            return client.create_experiment(name)
        except MlflowException:
            time.sleep(0.2 * (attempt + 1))  # another worker created it (or the store was busy): look again
    raise MlflowException(f"could not create or find MLflow experiment {name!r}")


def git_commit() -> str:
    """The commit of the ncflow checkout, or `unknown` when not run from a git checkout."""
    source = Path(__file__).resolve().parent
    with suppress(OSError, subprocess.SubprocessError):
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=source, capture_output=True, text=True, timeout=5, check=False
        )
        if result.returncode == 0:
            return result.stdout.strip()
    return "unknown"


def _same_value(name: str, logged: str, wanted: str) -> bool:
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
        elif not _same_value(name, logged[name], value):
            raise ConfigError(f"{name}: the run already has {logged[name]!r}, the configuration says {value!r}")
    for start in range(0, len(missing), 100):
        client.log_batch(run_id, params=missing[start : start + 100], synchronous=True)


def with_adopted_experiment(client: MlflowClient, config: RunConfig) -> RunConfig:
    """Under `mlflow run` (MLFLOW_RUN_ID set) the experiment is the one MLflow put the run in."""
    adopted_run_id = os.environ.get("MLFLOW_RUN_ID")
    if not adopted_run_id:
        return config
    experiment_id = client.get_run(adopted_run_id).info.experiment_id
    return config.replace(experiment=client.get_experiment(experiment_id).name)


def open_run(
    config: RunConfig,
    *,
    sweep: str | None = None,
    parent_run_id: str | None = None,
    extra_tags: Mapping[str, str] | None = None,
) -> tuple[MlflowClient, str]:
    """Start (or, under `mlflow run`, adopt) the training run and write its params and tags."""
    client = client_for(config)
    adopted_run_id = os.environ.get("MLFLOW_RUN_ID")
    if adopted_run_id:  # under `mlflow run`: MLflow made the run, in the experiment it was told
        run_id = adopted_run_id
        config = with_adopted_experiment(client, config)
    else:
        experiment_id = ensure_experiment(client, config.experiment)
        run_id = client.create_run(experiment_id, run_name=run_name(config)).info.run_id
    tags = {
        "mlflow.runName": run_name(config),
        TAG_KIND: "train",
        TAG_CONDITION: condition_hash(config),
        TAG_STATUS: "running",
        "ncflow.version": __version__,
        "ncflow.git_commit": git_commit(),
    }
    if sweep:
        tags[TAG_SWEEP] = sweep
    if parent_run_id:
        tags[TAG_PARENT] = parent_run_id
    tags.update(extra_tags or {})
    client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()], synchronous=True)
    log_config_params(client, run_id, config)
    return client, run_id


class EpochLogger:
    """Buffers per-epoch metrics and sends them as asynchronous `log_batch` calls, a few seconds' worth at a time.

    Each store write has a fixed cost (~25 ms against local sqlite, more through a server) that the logging
    thread takes from the cores training runs on; one write per `flush_every_s` instead of one per epoch keeps
    logging a few percent of the loop (benchmarks/bench_logging.py). `close` sends the rest and waits for all.
    """

    MAX_METRICS_PER_BATCH = 1000  # MLflow's limit for one log_batch

    def __init__(self, client: MlflowClient, run_id: str, flush_every_s: float = 5.0) -> None:
        self.client = client
        self.run_id = run_id
        self.flush_every_s = flush_every_s
        self._buffer: list[Metric] = []
        self._last_flush = time.monotonic()
        self._pending: list[Any] = []

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        timestamp = int(time.time() * 1000)
        self._buffer.extend(Metric(key, float(value), timestamp, step) for key, value in metrics.items())
        due = time.monotonic() - self._last_flush >= self.flush_every_s
        if due or len(self._buffer) >= self.MAX_METRICS_PER_BATCH - 100:
            self.flush()

    def flush(self) -> None:
        """Queue everything buffered (without waiting for the store)."""
        buffer, self._buffer = self._buffer, []
        self._last_flush = time.monotonic()
        for start in range(0, len(buffer), self.MAX_METRICS_PER_BATCH):
            batch = buffer[start : start + self.MAX_METRICS_PER_BATCH]
            operation = self.client.log_batch(self.run_id, metrics=batch, synchronous=False)
            if operation is not None:
                self._pending.append(operation)

    def close(self) -> None:
        self.flush()
        pending, self._pending = self._pending, []
        for operation in pending:
            operation.wait()


def log_summary(client: MlflowClient, run_id: str, metrics: Mapping[str, float]) -> None:
    timestamp = int(time.time() * 1000)
    batch = [Metric(key, float(value), timestamp, 0) for key, value in metrics.items()]
    if batch:
        client.log_batch(run_id, metrics=batch, synchronous=True)


def set_tags(client: MlflowClient, run_id: str, tags: Mapping[str, str]) -> None:
    client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()], synchronous=True)


def log_checkpoint(client: MlflowClient, run_id: str, name: str, state: Mapping[str, Any]) -> None:
    """Save `state` as `checkpoints/<name>.pt` in the run's artifacts."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{name}.pt"
        torch.save(dict(state), path)
        client.log_artifact(run_id, str(path), artifact_path=CHECKPOINT_DIR)


def load_checkpoint(client: MlflowClient, run_id: str, name: str) -> dict[str, Any]:
    """Download and load `checkpoints/<name>.pt` of a run (weights_only: no code runs on load)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = client.download_artifacts(run_id, f"{CHECKPOINT_DIR}/{name}.pt", tmp)
        return torch.load(path, map_location="cpu", weights_only=True)


def log_history(client: MlflowClient, run_id: str, rows: Iterable[Mapping[str, float]]) -> None:
    """Every epoch's metrics as `history.csv` (columns: epoch, then the per-epoch metric keys)."""
    frame = pd.DataFrame(list(rows))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / HISTORY_FILE
        frame.to_csv(path, index=False)
        client.log_artifact(run_id, str(path))


def log_json(client: MlflowClient, run_id: str, payload: Mapping[str, Any], file_name: str) -> None:
    client.log_dict(run_id, dict(payload), file_name)


def log_figure(client: MlflowClient, run_id: str, figure: Any, artifact_file: str) -> None:
    client.log_figure(run_id, figure, artifact_file)


def finish_run(client: MlflowClient, run_id: str, status: str) -> None:
    client.set_terminated(run_id, status=status)


def config_of_run(client: MlflowClient, run_id: str) -> RunConfig:
    """The RunConfig a run was trained with, rebuilt from its params."""
    params = client.get_run(run_id).data.params
    known = {name: value for name, value in params.items() if name in RunConfig.__dataclass_fields__}
    return build_config(None, known)


def reopen_run(client: MlflowClient, run_id: str) -> None:
    """Mark a FAILED/KILLED run RUNNING again so training can continue in it."""
    client.update_run(run_id, status="RUNNING")
    set_tags(client, run_id, {TAG_STATUS: "running", TAG_FAIL_REASON: ""})


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
            f"tags.`{TAG_CONDITION}` = '{condition_hash(config)}' and tags.`{TAG_STATUS}` = 'collapsed' "
            f"and attributes.status = 'FINISHED'"
        ),
        max_results=1000,
    )
    values = [
        run.data.metrics["collapse/fn_star"]
        for run in runs
        if "collapse/fn_star" in run.data.metrics and not _same_value("seed", run.data.params.get("seed", ""), str(config.seed))
    ]
    return sum(values) / len(values) if values else None


def finished_runs_of(client: MlflowClient, experiment_id: str, condition: str, seed: int) -> list[Any]:
    """FINISHED training runs of a condition and seed (how sweeps recognise a done grid point)."""
    return client.search_runs(
        [experiment_id],
        filter_string=(
            f"tags.`{TAG_CONDITION}` = '{condition}' and params.seed = '{seed}' and attributes.status = 'FINISHED'"
        ),
        max_results=100,
    )


def log_dynamics_figure(
    client: MlflowClient,
    run_id: str,
    history: list[Mapping[str, float]],
    summary: Mapping[str, float],
    config: RunConfig,
) -> None:
    """`figures/dynamics.png`: the analysis package's Figure-1 drawing of this run's history."""
    from analysis.figures import plot_dynamics  # one drawing for the run's artifact and the report

    run = {**summary, **config.as_params(), "run_id": run_id, "run_name": run_name(config)}
    axes = plot_dynamics(pd.DataFrame(list(history)), run)
    client.log_figure(run_id, axes[0].figure, "figures/dynamics.png")
