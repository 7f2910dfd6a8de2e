"""`ncflow sweep`: the parent process of a sweep, which trains every grid point exactly once.

One invocation plans every point (`ncflow.sweeps.plan`; `--dry-run` stops there), opens the sweep's parent MLflow
run `sweep-NAME`, enqueues each todo point once into the Optuna study `ncflow-NAME` under the sweep lock, starts
worker processes (`python -m ncflow.sweeps.worker`) that train the points as child runs, fails the trials of any
worker that dies, logs the progress to the parent run and ends it with a summary CSV. The pieces:

| module | job |
|---|---|
| `ncflow.sweeps.grids` | sweep definitions as data, `--set`/`--seeds`/`--spec`, grid points |
| `ncflow.sweeps.plan` | each point's state (done, running, failed, todo) and the dry-run table |
| `ncflow.sweeps.storage` | the Optuna storage (journal file, SQLite, PostgreSQL) and the sweep lock |
| `ncflow.sweeps.trials` | what a trial carries: the point, its claim, its result (user attributes) |
| `ncflow.sweeps.runs` | the MLflow side: a point's finished run, the child runs of lost trials |
| `ncflow.sweeps.trial_liveness` | owner + heartbeat of claimed trials, failing stale ones |
| `ncflow.sweeps.worker` | the worker process: claim, train, tell |

See docs/sweeps.md.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

import optuna
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from tqdm.auto import tqdm

from ncflow.record.signals import termination_as_interrupt
from ncflow.sweeps import worker
from ncflow.sweeps.grids import MAIN, GridPoint, Sweep, stages, study_name
from ncflow.sweeps.plan import DONE, FAILED, RUNNING, PointState, counts, latest_states, plan, point_trials, render_plan
from ncflow.sweeps.runs import finished_result, with_retry
from ncflow.sweeps.storage import open_storage, study_trials, sweep_lock
from ncflow.sweeps.trial_liveness import fail_stale_trials
from ncflow.sweeps.trials import (
    ATTR_FN_STAR,
    ATTR_PARENT,
    ATTR_POINT,
    ATTR_RUN_ID,
    ATTR_STATUS,
    ATTR_T_NC,
    STUDY_ATTR_SWEEP,
    enqueue,
    record_reused,
)
from ncflow.sweeps.worker import WorkerArgs
from ncshared.mlflow_env import adopted_experiment_name, adopted_run_id, environment_without_adopted_run
from ncshared.run_config import RunConfig, format_value
from ncshared.schema import (
    KIND_SWEEP,
    SWEEP_DONE,
    SWEEP_FAILED,
    SWEEP_REMAINING,
    SWEEP_RUNNING,
    SWEEP_SPEC_FILE,
    SWEEP_SUMMARY_FILE,
    TAG_KIND,
    TAG_RUN_NAME,
    TAG_SWEEP,
)

POLL_S = 0.5  # how often the parent looks at the study while workers run


@dataclass(frozen=True)
class SweepRun:
    """One invocation's settings."""

    sweep: Sweep
    overrides: dict[str, Any]
    storage: str  # normalised storage URL or journal path
    tracking_uri: str
    experiment: str
    workers: int = 1
    progress: bool = True
    pack: str = "1"  # `--pack`: points per pack in each worker, a whole number or `auto`


def default_experiment(tracking_uri: str) -> str:
    """The experiment of the run `mlflow run` made for us, else MLFLOW_EXPERIMENT_NAME, else `ncflow`."""
    adopted = adopted_experiment_name(MlflowClient(tracking_uri=tracking_uri)) if adopted_run_id() else None
    return adopted or os.environ.get("MLFLOW_EXPERIMENT_NAME") or RunConfig.experiment


def open_parent(client: MlflowClient, experiment_id: str, name: str) -> str:
    """The sweep's parent run: the one `mlflow_run.sweep_parent_run` finds (the `mlflow run` run, tagged as the
    parent; else the latest `sweep-NAME`, RUNNING again), else a new one."""
    from ncflow.tracked import mlflow_run

    tags = {TAG_KIND: KIND_SWEEP, TAG_SWEEP: name}
    found = with_retry(mlflow_run.sweep_parent_run, client, experiment_id, name)
    if found is None:
        return with_retry(client.create_run, experiment_id, run_name=f"sweep-{name}", tags=tags).info.run_id
    if found.info.run_id == adopted_run_id():  # MLflow made it (and ends it): make it the sweep's parent
        with_retry(mlflow_run.set_tags, client, found.info.run_id, {**tags, TAG_RUN_NAME: f"sweep-{name}"})
    else:
        with_retry(client.update_run, found.info.run_id, status="RUNNING")
    return found.info.run_id


def enqueue_stage(run: SweepRun, stage: str, points: list[GridPoint], client: MlflowClient, experiment_id: str) -> int:
    """Under the sweep lock: fail abandoned trials, record reused points, enqueue each todo point once.

    Returns how many trials are WAITING afterwards (this invocation's and any other's).
    """
    storage = open_storage(run.storage)
    name = study_name(run.sweep, stage)
    state = optuna.trial.TrialState
    with sweep_lock(run.storage, name):
        study = optuna.create_study(study_name=name, storage=storage, load_if_exists=True, direction="minimize")
        study.set_user_attr(STUDY_ATTR_SWEEP, run.sweep.name)
        fail_stale_trials(storage, name, client, experiment_id)
        trials = study_trials(storage, name)
        for point in points:
            mine = point_trials(trials, point)
            done = finished_result(client, experiment_id, point.condition, point.seed)
            if done is not None:
                if not any(t.state == state.COMPLETE for t in mine):
                    record_reused(study, point.task(run.sweep), done)
            elif not any(t.state in (state.WAITING, state.RUNNING) for t in mine):
                enqueue(study, point.task(run.sweep))
        return sum(1 for t in study_trials(storage, name) if t.state == state.WAITING and ATTR_POINT in t.user_attrs)


def worker_command(run: SweepRun, count: int, parent_id: str, experiment_id: str) -> list[str]:
    """`python -m ncflow.sweeps.worker ARGS`: the studies to claim from, the parent run, this machine's settings;
    the cores are split between the `count` workers."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    local = {"tracking_uri": run.tracking_uri}
    local.update({k: format_value(v) for k, v in run.overrides.items() if k in ("data_dir", "device")})
    args = WorkerArgs(
        storage=run.storage,
        studies=[study_name(run.sweep, stage) for stage in stages(run.sweep)],
        sweep=run.sweep.name,
        parent_run_id=parent_id,
        tracking_uri=run.tracking_uri,
        experiment_id=experiment_id,
        local=local,
        threads=int(run.overrides.get("threads") or 0) or max(1, cores // count),  # `--set threads=N`, else a share
        pack=run.pack,
    )
    return [sys.executable, "-m", worker.__name__, json.dumps(asdict(args))]


def worker_env(threads: int, tracking_uri: str) -> dict[str, str]:
    """The parent's environment without the `mlflow run` run (a child would adopt the parent run), threads capped."""
    env = environment_without_adopted_run()
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), MLFLOW_TRACKING_URI=tracking_uri)
    return env


def fail_lost_trials(run: SweepRun, client: MlflowClient, experiment_id: str) -> None:
    """After a worker died: fail the trials it held (and end their runs), in every study of the sweep."""
    storage = open_storage(run.storage)
    for stage in stages(run.sweep):
        name = study_name(run.sweep, stage)
        with sweep_lock(run.storage, name):
            fail_stale_trials(storage, name, client, experiment_id)


def run_workers(run: SweepRun, count: int, parent_id: str, experiment_id: str, on_poll: Callable[[], None]) -> None:
    """Start `count` worker processes and wait for them, failing the trials of any that dies."""
    command = worker_command(run, count, parent_id, experiment_id)
    threads = json.loads(command[-1])["threads"]
    client = MlflowClient(tracking_uri=run.tracking_uri)
    processes = [subprocess.Popen(command, env=worker_env(threads, run.tracking_uri)) for _ in range(count)]
    try:
        while processes:
            time.sleep(POLL_S)
            for process in [p for p in processes if p.poll() is not None]:
                processes.remove(process)
                if process.returncode != 0:
                    fail_lost_trials(run, client, experiment_id)
            on_poll()
    finally:
        for process in processes:  # interrupted: let each worker fail its trial and end its run, then reap it
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def summary_row(state: PointState, dims: list[str], parent_id: str) -> dict[str, Any]:
    """One point's CSV row; `reused` says its run came from another sweep or invocation's parent."""
    params, result = dict(state.point.params), state.result
    return {
        "stage": state.point.stage,
        **{dim: format_value(params[dim]) if dim in params else "" for dim in dims},
        "seed": state.point.seed,
        "condition": state.point.condition,
        "status": state.status,
        "run_id": result.get(ATTR_RUN_ID, ""),
        "reused": str(result.get(ATTR_PARENT) != parent_id).lower() if state.status == DONE else "",
        "ncflow_status": result.get(ATTR_STATUS, ""),
        "T_NC": result.get(ATTR_T_NC, ""),
        "fn_star": result.get(ATTR_FN_STAR, ""),
        "init_from": state.init_from or "",
        "trial": "" if state.trial is None else state.trial,
    }


def summary_csv(states: list[PointState], parent_id: str) -> str:
    """One row per point: stage, varying params, seed, condition, state, run id and result."""
    dims = list(dict.fromkeys(name for state in states for name, _ in state.point.params))
    rows = [summary_row(state, dims, parent_id) for state in states]
    columns = ["stage", *dims, "seed", "condition", "status", "run_id", "reused", "ncflow_status", "T_NC", "fn_star"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=[*columns, "init_from", "trial"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


class Progress:
    """The sweep's progress bar (grid points done) and the parent run's done/failed/remaining metrics.

    A full `plan` (MLflow + studies) runs before and after the workers; while they run, polls read the studies.
    """

    def __init__(self, run: SweepRun, points: list[GridPoint], client: MlflowClient, experiment_id: str, parent_id: str) -> None:
        self.run, self.points, self.client = run, points, client
        self.experiment_id, self.parent_id = experiment_id, parent_id
        self.storage = open_storage(run.storage)
        self.base: list[PointState] = []
        self.step = 0
        self.last: tuple[int, ...] = ()
        self.bar = tqdm(total=len(points), desc=f"sweep {run.sweep.name}", unit="point", disable=not run.progress)

    def full(self) -> list[PointState]:
        """Every point's state from MLflow and the studies; logged when it changed."""
        self.base = plan(self.run.sweep, self.points, self.run.storage, self.client, self.experiment_id)
        self._report(self.base)
        return self.base

    def poll(self) -> None:
        """Cheap refresh between plans, from the studies only."""
        latest: dict[str, Any] = {}
        for stage in {p.stage for p in self.points}:
            for trial in sorted(study_trials(self.storage, study_name(self.run.sweep, stage)), key=lambda t: t.number):
                if ATTR_POINT in trial.user_attrs:
                    latest[trial.user_attrs[ATTR_POINT]] = trial.state
        self._report(latest_states(self.base, latest))

    def _report(self, states: list[PointState]) -> None:
        tally = counts(states)
        now = (tally[DONE], tally[FAILED], tally[RUNNING])
        if now == self.last:
            return
        self.bar.update(tally[DONE] - self.bar.n)
        values = {SWEEP_DONE: tally[DONE], SWEEP_FAILED: tally[FAILED], SWEEP_RUNNING: tally[RUNNING],
                  SWEEP_REMAINING: len(states) - tally[DONE]}
        stamp = int(time.time() * 1000)
        with_retry(self.client.log_batch, self.parent_id, metrics=[Metric(k, float(v), stamp, self.step) for k, v in values.items()])
        self.step += 1
        self.last = now

    def close(self) -> None:
        self.bar.close()


def dry_run(run: SweepRun, points: list[GridPoint]) -> str:
    """The plan of every point, read from MLflow and the study; nothing is created, enqueued or trained."""
    client = MlflowClient(tracking_uri=run.tracking_uri)
    experiment = with_retry(client.get_experiment_by_name, run.experiment)
    states = plan(run.sweep, points, run.storage, client, experiment.experiment_id if experiment else None)
    return render_plan(run.sweep, states, run.storage, run.tracking_uri, run.experiment)


def run_sweep(run: SweepRun, points: list[GridPoint]) -> list[PointState]:
    """Run every todo point once across workers; the final state of each point.

    An intervention's Phase-1 points and α points are enqueued together: a worker takes an α point once its
    seed's Phase-1 trial completed (its run becomes init_from), so one pool pipelines both. SIGTERM and SIGHUP
    unwind like Ctrl-C: the workers are stopped, the summary is logged.
    """
    from ncflow.tracked import mlflow_run

    client = MlflowClient(tracking_uri=run.tracking_uri)
    experiment_id = with_retry(mlflow_run.ensure_experiment, client, run.experiment)  # store + experiment, once
    with sweep_lock(run.storage, study_name(run.sweep, MAIN)):
        parent_id = open_parent(client, experiment_id, run.sweep.name)
    described = {"sweep": asdict(run.sweep), "overrides": {k: format_value(v) for k, v in run.overrides.items()}}
    with_retry(client.log_dict, parent_id, {**described, "storage": run.storage}, SWEEP_SPEC_FILE)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    progress = Progress(run, points, client, experiment_id, parent_id)
    status = "KILLED"
    try:
        with termination_as_interrupt():
            progress.full()
            waiting = sum(
                enqueue_stage(run, stage, [p for p in points if p.stage == stage], client, experiment_id)
                for stage in stages(run.sweep)
            )
            if waiting:
                run_workers(run, min(run.workers, waiting), parent_id, experiment_id, progress.poll)
            final = progress.full()
            status = "FINISHED" if counts(final)[DONE] == len(final) else "FAILED"
            return final
    finally:
        if status == "KILLED":  # interrupted: record what is known now
            with contextlib.suppress(Exception):
                progress.full()
        progress.close()
        with_retry(client.log_text, parent_id, summary_csv(progress.base, parent_id), SWEEP_SUMMARY_FILE)
        if not adopted_run_id():  # under `mlflow run`, MLflow ends its own run
            with_retry(client.set_terminated, parent_id, status)
