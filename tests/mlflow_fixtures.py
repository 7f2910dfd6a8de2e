"""Populate a real MLflow store exactly as ncflow training logs it (docs/tracking.md), for analysis tests.

No torch: these helpers write the names of `ncshared.schema` directly through `MlflowClient` (the torch-free
`ncflow.engine.config` and `ncflow.collapse.detector` give the default params and the ε rule), so analysis tests (and
`benchmarks/bench_analysis.py`) run on any machine.

Typical use::

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    experiment_id = client.create_experiment("ncflow", artifact_location=(tmp_path / "art").as_uri())
    nc1 = np.array([0.9, 0.2, 0.008, 0.004])        # T_NC = 3 at ε = 0.01 (depth 5, ReLU)
    fn = np.array([5.0, 9.0, 1.1, 1.0])              # fn* = fn[T_NC - 1] = 1.1
    run_id = log_fake_training_run(client, experiment_id, depth=5, seed=0, nc1_curve=nc1, fn_curve=fn,
                                   phase1_epochs=2, sweep="depth")

`start_mlflow_server` runs a real `mlflow server` on 127.0.0.1 for tests that need the REST path.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from ncflow.collapse.detector import auto_threshold as _auto_threshold  # torch-free, the rule training applies
from ncflow.engine.config import build_config
from ncshared import schema
from ncshared.schema import EXTRA_THRESHOLDS, PER_EPOCH_METRICS, condition_hash, run_name

# Every RunConfig field as the string training logs, paper MNIST/MLP protocol.
DEFAULT_PARAMS: dict[str, str] = build_config("paper-mnist-mlp", {"dataset": "mnist"}).as_params()
BATCH_LIMIT = 1000  # MLflow's maximum number of metrics in one log_batch call


def auto_threshold(params: Mapping[str, str]) -> float:
    """ε of the run's `nc1_threshold` (`auto`: the paper's rule)."""
    if params["nc1_threshold"] != "auto":
        return float(params["nc1_threshold"])
    return _auto_threshold(params["arch"], int(params["depth"]), params["activation"])


def first_epoch_below(curve: np.ndarray, level: float, epochs: np.ndarray) -> int | None:
    """The first epoch whose value is < level, or None."""
    hits = np.flatnonzero(curve < level)
    return int(epochs[hits[0]]) if hits.size else None


def nc1_trajectory(epochs: int, phase1_epochs: int, t_nc: int, threshold: float = 0.01) -> np.ndarray:
    """A plausible NC1 curve: log-linear 1.0 → 0.2 over Phase 1, then log-linear down through ε at exactly t_nc.

    Phase 2 follows 0.2·(ε/0.2)^((t − p1)/(t_nc − p1 − 0.5)), so NC1(t_nc − 1) > ε > NC1(t_nc);
    it floors at ε/5.
    """
    t = np.arange(1, epochs + 1, dtype=float)
    phase1 = np.exp(np.log(0.2) * t / max(phase1_epochs, 1))
    progress = (t - phase1_epochs) / (t_nc - phase1_epochs - 0.5)
    phase2 = np.maximum(0.2 * (threshold / 0.2) ** progress, threshold / 5)
    return np.where(t <= phase1_epochs, phase1, phase2)


def fn_trajectory(epochs: int, phase1_epochs: int, t_nc: int, fn_star: float, fn_peak: float = 16.2) -> np.ndarray:
    """A plausible mean-feature-norm curve: rises 5 → fn_peak in Phase 1, decays through fn_star at t_nc."""
    t = np.arange(1, epochs + 1, dtype=float)
    phase1 = 5.0 + (fn_peak - 5.0) * t / max(phase1_epochs, 1)
    floor = 0.9 * fn_star
    rate = math.log((fn_peak - floor) / (fn_star - floor)) / max(t_nc - phase1_epochs, 1)
    phase2 = floor + (fn_peak - floor) * np.exp(-rate * (t - phase1_epochs))
    return np.where(t <= phase1_epochs, phase1, phase2)


def history_columns(
    nc1: np.ndarray, fn: np.ndarray, epochs: np.ndarray, phase1_epochs: int, lr: float
) -> dict[str, np.ndarray]:
    """Every per-epoch metric of docs/tracking.md for given NC1 and fn curves (others derived deterministically)."""
    total = float(epochs[-1])
    phase = np.where(epochs <= phase1_epochs, 1.0, 2.0)
    columns = {
        schema.TRAIN_LOSS: 0.5 * nc1 + 1e-3,
        schema.TRAIN_ACC: 1.0 - 0.1 * np.minimum(nc1, 1.0),
        schema.TEST_ACC: 0.98 - 0.05 * np.minimum(nc1, 1.0),
        schema.NC1: nc1,
        schema.NC1_PINV: 0.9 * nc1,
        schema.NC2: 0.5 * np.sqrt(nc1),
        schema.NC2_EQUINORM: 0.1 * np.sqrt(nc1),
        schema.NC3: 0.3 * np.sqrt(nc1),
        schema.NC4: 0.05 * nc1,
        schema.FN: fn,
        schema.NCC: 20.0 * nc1,
        schema.FLATNESS: 0.01 * fn,
        schema.ANGLE_MEAN: 96.38 - 10.0 * np.minimum(nc1, 1.0),
        schema.ANGLE_STD: 5.0 * np.minimum(nc1, 1.0),
        schema.TEST_NC1: 2.0 * nc1,
        schema.TEST_NC2: 0.6 * np.sqrt(nc1),
        schema.TEST_FN: 1.05 * fn,
        schema.TEST_NCC: 30.0 * nc1,
        schema.LR: lr * 0.5 * (1.0 + np.cos(np.pi * epochs / total)),
        schema.PHASE: phase,
        schema.EPOCH_TIME: np.full(epochs.shape, 0.25),
    }
    return {name: columns[name] for name in PER_EPOCH_METRICS}


def history_csv(columns: Mapping[str, np.ndarray], epochs: np.ndarray) -> str:
    """history.csv text: `epoch` then every per-epoch metric, one row per epoch, floats in repr form."""
    lines = [",".join((schema.HISTORY_EPOCH, *columns))]
    for row, epoch in enumerate(epochs):
        lines.append(",".join((str(int(epoch)), *(repr(float(values[row])) for values in columns.values()))))
    return "\n".join(lines) + "\n"


def summary_metrics(nc1: np.ndarray, fn: np.ndarray, epochs: np.ndarray, threshold: float, fn_ref: float | None,
                    lead: int, phase1_epochs: int) -> dict[str, float]:
    """The step-0 `collapse/*` metrics training logs when known."""
    summary = {schema.COLLAPSE_THRESHOLD: threshold}
    for eps in EXTRA_THRESHOLDS:
        t = first_epoch_below(nc1, eps, epochs)
        if t is not None:
            summary[schema.t_nc_at(eps)] = float(t)
            summary[schema.fn_star_at(eps)] = float(fn[epochs == t][0])
    t_nc = first_epoch_below(nc1, threshold, epochs)
    if t_nc is not None:
        summary[schema.T_NC] = float(t_nc)
        summary[schema.FN_STAR] = float(fn[epochs == t_nc][0])
    if fn_ref is not None:
        summary[schema.FN_REF] = fn_ref
        phase2 = epochs > phase1_epochs
        t_cross = first_epoch_below(np.where(phase2, fn, np.inf), fn_ref, epochs)
        if t_cross is not None:
            summary[schema.T_CROSS] = float(t_cross)
            summary[schema.T_NC_PRED] = float(t_cross + lead)
    return summary


@dataclass(frozen=True)
class FakeRun:
    """Everything one training run logs: params, tags, name, per-epoch columns, summary metrics."""

    params: dict[str, str]
    tags: dict[str, str]
    run_name: str
    status: str  # the ncflow.status tag
    epochs: np.ndarray  # global epochs (steps), 1-based
    columns: dict[str, np.ndarray]  # per-epoch metric key -> values, in history.csv order
    summary: dict[str, float]  # step-0 summary metrics

    def epoch_metrics(self, start_ms: int) -> list[Metric]:
        """Per-epoch metrics as MLflow entities (timestamp start_ms + 1 s per epoch)."""
        return [
            Metric(key, float(values[row]), start_ms + 1000 * int(epoch), int(epoch))
            for row, epoch in enumerate(self.epochs)
            for key, values in self.columns.items()
        ]

    def history_csv(self) -> str:
        """The run's history.csv artifact text."""
        return history_csv(self.columns, self.epochs)


def make_fake_run(
    *,
    depth: int,
    seed: int,
    nc1_curve: Sequence[float],
    fn_curve: Sequence[float],
    status: str | None = None,
    sweep: str | None = None,
    phase1_epochs: int = 200,
    start_epoch: int = 1,
    params: Mapping[str, object] | None = None,
    fn_ref: float | None = None,
    parent_run_id: str | None = None,
) -> FakeRun:
    """Build (without logging) what a training run with these curves logs; see `log_fake_training_run`."""
    nc1 = np.asarray(nc1_curve, dtype=float)
    fn = np.asarray(fn_curve, dtype=float)
    epochs = np.arange(start_epoch, start_epoch + nc1.size)
    logged = dict(DEFAULT_PARAMS, depth=str(depth), seed=str(seed), phase1_epochs=str(phase1_epochs))
    logged["phase2_epochs"] = str(int(epochs[-1]) - phase1_epochs)
    logged.update({key: str(value) for key, value in (params or {}).items()})
    if fn_ref is not None:
        logged["fn_ref"] = repr(float(fn_ref))
    threshold = auto_threshold(logged)
    columns = history_columns(nc1, fn, epochs, phase1_epochs, float(logged["lr"]))
    summary = summary_metrics(nc1, fn, epochs, threshold, fn_ref, int(logged["lead"]), phase1_epochs)
    if status is None:
        status = schema.STATUS_COLLAPSED if schema.T_NC in summary else schema.STATUS_NOT_COLLAPSED
    tags = {schema.TAG_KIND: schema.KIND_TRAIN, schema.TAG_CONDITION: condition_hash(logged),
            schema.TAG_STATUS: status, schema.TAG_GIT_COMMIT: "0" * 40, schema.TAG_VERSION: "0.1.0"}
    if sweep is not None:
        tags[schema.TAG_SWEEP] = sweep
    if parent_run_id is not None:
        tags[schema.TAG_PARENT_RUN] = parent_run_id
    if status == schema.STATUS_FAILED:
        tags[schema.TAG_FAIL_REASON] = "RuntimeError: CUDA out of memory"
    if status == schema.STATUS_DIVERGED:
        tags[schema.TAG_DIVERGENCE_REASON] = f"NC1 {nc1[-1]:.2f} > 0.5 after epoch 300"
    return FakeRun(logged, tags, run_name(logged), status, epochs, columns, summary)


def log_run(
    client: MlflowClient,
    experiment_id: str,
    run: FakeRun,
    *,
    write_history_csv: bool = True,
    log_epoch_metrics: bool = True,
    start_time_ms: int | None = None,
) -> str:
    """Log a `FakeRun` through the MLflow client as training does; return the run id.

    `log_epoch_metrics=False` skips the per-epoch metrics (a benchmark inserts them in bulk instead).
    """
    start_ms = int(time.time() * 1000) if start_time_ms is None else start_time_ms
    created = client.create_run(experiment_id, start_time=start_ms, tags=run.tags, run_name=run.run_name)
    run_id = created.info.run_id
    summary = [Metric(key, value, start_ms, 0) for key, value in run.summary.items()]
    client.log_batch(run_id, params=[Param(key, value) for key, value in run.params.items()], metrics=summary)
    if log_epoch_metrics:
        metrics = run.epoch_metrics(start_ms)
        for begin in range(0, len(metrics), BATCH_LIMIT):
            client.log_batch(run_id, metrics=metrics[begin:begin + BATCH_LIMIT])
    if write_history_csv:
        client.log_text(run_id, run.history_csv(), schema.HISTORY_FILE)
    if run.status != "running":
        mlflow_status = "FAILED" if run.status == "failed" else "FINISHED"
        client.set_terminated(run_id, mlflow_status, end_time=start_ms + 1000 * (int(run.epochs[-1]) + 1))
    return run_id


def log_fake_training_run(
    client: MlflowClient,
    experiment_id: str,
    *,
    depth: int,
    seed: int,
    nc1_curve: Sequence[float],
    fn_curve: Sequence[float],
    status: str | None = None,
    sweep: str | None = None,
    phase1_epochs: int = 200,
    start_epoch: int = 1,
    params: Mapping[str, object] | None = None,
    fn_ref: float | None = None,
    write_history_csv: bool = True,
    parent_run_id: str | None = None,
    start_time_ms: int | None = None,
) -> str:
    """Log one training run as ncflow does (docs/tracking.md); return its run id.

    - params: every RunConfig field as a string (`DEFAULT_PARAMS`, then depth/seed/phase epochs, then `params`
      overrides, e.g. `{"activation": "gelu", "weight_decay": "2e-4"}` — values are logged verbatim via `str`).
    - per-epoch metrics (step = epoch, from `start_epoch`; an intervention run starts at phase1_epochs + 1),
      derived from `nc1_curve` and `fn_curve` (see `history_columns`), logged with `log_batch` in chunks.
    - summary metrics (step 0): threshold, T_NC/fn* at the run's ε and at 0.01/0.02/0.05, T_cross with `fn_ref`.
    - tags: ncflow.kind=train, condition, sweep, status, git commit/version, and fail/divergence reasons.
    - artifact `history.csv` unless `write_history_csv` is False (to exercise the metric-history fallback).
    `status` defaults to `collapsed` if NC1 crosses ε else `not_collapsed`; `failed` ends the MLflow run FAILED,
    `running` leaves it RUNNING (no end time), anything else ends it FINISHED.
    """
    run = make_fake_run(depth=depth, seed=seed, nc1_curve=nc1_curve, fn_curve=fn_curve, status=status, sweep=sweep,
                        phase1_epochs=phase1_epochs, start_epoch=start_epoch, params=params, fn_ref=fn_ref,
                        parent_run_id=parent_run_id)
    return log_run(client, experiment_id, run, write_history_csv=write_history_csv, start_time_ms=start_time_ms)


def log_sweep_parent(client: MlflowClient, experiment_id: str, sweep: str) -> str:
    """A sweep parent run (`sweep-NAME`, tag ncflow.kind=sweep), FINISHED; return its run id."""
    run = client.create_run(experiment_id, tags={schema.TAG_KIND: schema.KIND_SWEEP, schema.TAG_SWEEP: sweep},
                            run_name=f"sweep-{sweep}")
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


@dataclass(frozen=True)
class LocalStore:
    """A throwaway SQLite tracking store: its URI, a client, and a directory for experiment artifacts."""

    uri: str
    db_path: Path
    artifact_root: Path
    client: MlflowClient

    def experiment(self, name: str = "ncflow") -> str:
        """Create an experiment whose artifacts live under `artifact_root/name`; return its id."""
        return self.client.create_experiment(name, artifact_location=(self.artifact_root / name).as_uri())


def make_template_db(path: Path) -> Path:
    """An empty SQLite store with MLflow's schema (migrations take ~8 s: build once, copy per test)."""
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


def local_store(root: Path, template_db: Path | None = None) -> LocalStore:
    """A SQLite store under root (a copy of template_db when given, else migrated from scratch)."""
    root.mkdir(parents=True, exist_ok=True)
    db_path = root / "mlflow.db"
    if template_db is not None:
        shutil.copyfile(template_db, db_path)
    uri = f"sqlite:///{db_path}"
    return LocalStore(uri, db_path, root / "artifacts", MlflowClient(tracking_uri=uri))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_healthy(url: str, process: subprocess.Popen, log_path: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {process.returncode}: {log_path.read_text()[-2000:]}")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(f"{url}/health", timeout=1) as response:
                if response.status == 200:
                    return
        time.sleep(0.1)
    raise RuntimeError(f"mlflow server at {url} not healthy after {timeout_s:.0f} s: {log_path.read_text()[-2000:]}")


class MlflowServer:
    """A real `mlflow server` on 127.0.0.1 that a test can stop and start again on the same port (an outage).

    SQLite backend `root/server.db` (a copy of template_db when given), proxied artifacts under `root/artifacts`.
    """

    def __init__(self, root: Path, workers: int = 2, template_db: Path | None = None, port: int | None = None) -> None:
        self.root, self.workers = root, workers
        root.mkdir(parents=True, exist_ok=True)
        if template_db is not None and not (root / "server.db").exists():
            shutil.copyfile(template_db, root / "server.db")
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self, timeout_s: float = 90.0) -> str:
        log_path = self.root / "server.log"
        command = [
            sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{self.root / 'server.db'}",
            "--artifacts-destination", str(self.root / "artifacts"), "--host", "127.0.0.1", "--port", str(self.port),
            "--workers", str(self.workers),
        ]
        env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # no background job workers: faster start, fewer processes
        with open(log_path, "a") as log:
            self.process = subprocess.Popen(command, cwd=self.root, stdout=log, stderr=subprocess.STDOUT, env=env,
                                            start_new_session=True)
        _wait_healthy(self.url, self.process, log_path, timeout_s)
        return self.url

    def stop(self) -> None:
        if self.process is not None:
            _stop(self.process)
            self.process = None


@contextlib.contextmanager
def start_mlflow_server(root: Path, workers: int = 2, timeout_s: float = 90.0,
                        template_db: Path | None = None) -> Iterator[str]:
    """Run `mlflow server` on 127.0.0.1 (free port); yields its URI once `/health` answers, stops it on exit."""
    server = MlflowServer(root, workers, template_db)
    try:
        yield server.start(timeout_s)
    finally:
        server.stop()


def _stop(process: subprocess.Popen) -> None:
    """Terminate the server's process group (uvicorn workers included) and reap it."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, 15)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, 9)
        process.wait(timeout=5)
