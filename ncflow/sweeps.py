"""Sweeps: the paper's grids as data, resolved into validated grid points, planned against MLflow, and run.

A sweep is a list of product grids (blocks) over RunConfig fields, `seed` always a dimension, on top of a preset
and the sweep's fixed settings; `optuna.samplers.GridSampler` enumerates each block. A grid point is identified
by `ncflow.condition` + seed: a point with a FINISHED MLflow run is done and reused, whatever made it. The to-do
points are enqueued once into the Optuna study `ncflow-NAME` and trained by worker processes
(`ncflow.sweep_workers`), each the child of the sweep's parent MLflow run `sweep-NAME`. See docs/sweeps.md.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import optuna
import yaml
from mlflow.tracking import MlflowClient
from tqdm.auto import tqdm

from ncflow import sweep_workers as sw
from ncflow.config import PRESETS, ConfigError, RunConfig, build_config, condition_hash, format_value, parse_field

SEEDS = (0, 1, 2)
BASE_PRESET = "paper-mnist-mlp"
MAIN, PHASE1 = "main", "phase1"
POLL_S = 0.5  # how often the parent looks at the study while workers run
MLP5_RELU = {"arch": "mlp", "depth": 5, "activation": "relu"}


@dataclass(frozen=True)
class Block:
    """One product grid: field name (or `preset`) → values; `extra_seeds` adds seeds after the sweep's."""

    dims: Mapping[str, Sequence[Any]]
    extra_seeds: int = 0


@dataclass(frozen=True)
class Sweep:
    """A named grid: blocks over `preset` + `fixed`; `chain_phase1` makes it an intervention sweep."""

    name: str
    blocks: tuple[Block, ...]
    fixed: Mapping[str, Any] = field(default_factory=dict)
    preset: str = BASE_PRESET
    seeds: tuple[int, ...] = SEEDS
    chain_phase1: bool = False  # one Phase-1 run per seed; each point starts Phase 2 from it (init_from)


# MISSION.md §2. Everything not named here comes from the preset paper-mnist-mlp (MNIST, Adam 1e-3, cosine, 200+400).
NAMED_SWEEPS: dict[str, Sweep] = {
    "depth": Sweep("depth", (Block({"depth": (2, 3, 5, 7)}),), {**MLP5_RELU, "weight_decay": 1e-4}),
    "activation": Sweep(
        "activation",
        (Block({"activation": ("relu",)}), Block({"activation": ("gelu",)}, extra_seeds=1), Block({"activation": ("tanh",)})),
        {**MLP5_RELU, "weight_decay": 1e-4},
    ),
    "weight-decay": Sweep("weight-decay", (Block({"weight_decay": (1e-5, 5e-5, 1e-4, 5e-4)}),), MLP5_RELU),
    "width": Sweep("width", (Block({"width": (128, 256, 512, 1024)}),), MLP5_RELU),
    "grid": Sweep(
        "grid", (Block({"preset": ("paper-mnist-mlp", "paper-cifar-resnet20"), "dataset": ("mnist", "cifar10")}),)
    ),
    "intervention": Sweep(
        "intervention", (Block({"rescale_alpha": (1.0, 0.3, 3.0)}),), {**MLP5_RELU, "dataset": "mnist"}, chain_phase1=True
    ),
    "protocol": Sweep("protocol", (Block({"protocol": ("ce-only", "two-phase")}),), MLP5_RELU),
}


@dataclass(frozen=True)
class GridPoint:
    """One condition and seed: what one trial trains."""

    stage: str  # main, or phase1 for an intervention sweep's Phase-1 runs
    params: tuple[tuple[str, Any], ...]  # the dims that vary here, in the sweep's order
    seed: int
    config: RunConfig
    order: tuple[int, ...] = ()  # sort key: block, value positions, seed
    requires: str | None = None  # intervention: the key of the Phase-1 point whose run is init_from

    @property
    def condition(self) -> str:
        return condition_hash(self.config)

    @property
    def key(self) -> str:
        return f"{self.condition}-s{self.seed}"

    def label(self) -> str:
        parts = [f"{name}={format_value(value)}" for name, value in self.params]
        if self.stage == PHASE1:
            parts.append("control run (Phase-1 source)")
        return " ".join(parts) or "-"

    def task(self, sweep_name: str) -> sw.PointTask:
        requires = {"study": f"ncflow-{sweep_name}-{PHASE1}", "key": self.requires} if self.requires else None
        return sw.PointTask(self.key, self.stage, {**dict(self.params), "seed": self.seed}, self.config.as_params(), requires)


# ---------------------------------------------------------------- resolution: overrides, spec files, grid points


def parse_settings(items: Iterable[str]) -> dict[str, Any]:
    """`--set k=v` values (each may hold several `k=v` joined by commas; `none` is nothing), parsed and checked."""
    settings: dict[str, Any] = {}
    for item in items:
        if item.strip().lower() in ("", "none"):
            continue
        for pair in re.split(r",(?=\s*[A-Za-z_]\w*\s*=)", item):
            name, sep, raw = pair.partition("=")
            name = name.strip()
            if not sep or not name:
                raise ConfigError(f"--set: expected key=value, got {pair!r}")
            if name == "seed":
                raise ConfigError("--set: seed is a sweep dimension; use --seeds 0,1,2")
            settings[name] = parse_field(name, raw)
    return settings


def parse_seeds(raw: str | None) -> tuple[int, ...] | None:
    """`0,1,2` → (0, 1, 2); None or `none` → the sweep's own seeds."""
    if raw is None or raw.strip().lower() in ("", "none"):
        return None
    try:
        seeds = tuple(dict.fromkeys(int(part) for part in raw.replace(" ", "").split(",") if part))
    except ValueError:
        raise ConfigError(f"--seeds: expected comma-separated integers like 0,1,2, got {raw!r}") from None
    if not seeds or min(seeds) < 0:
        raise ConfigError(f"--seeds: expected integers >= 0, got {raw!r}")
    return seeds


def _spec_block(raw: Any, where: str) -> Block:
    if not isinstance(raw, Mapping) or not raw:
        raise ConfigError(f"{where}: expected a mapping of field → list of values")
    dims = dict(raw)
    extra = dims.pop("extra_seeds", 0)
    if not isinstance(extra, int) or extra < 0:
        raise ConfigError(f"{where}: extra_seeds must be an integer >= 0")
    if "seed" in dims:
        raise ConfigError(f"{where}: seed is not a grid dim; use seeds (top level) or extra_seeds")
    return Block({name: tuple(v) if isinstance(v, list) else (v,) for name, v in dims.items()}, extra)


def load_spec(path: str | Path) -> Sweep:
    """A user sweep from YAML or JSON: name, preset, fixed, grid (a mapping or a list of them), seeds."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError(f"--spec: cannot read {path}: {str(error).splitlines()[0]}") from None
    if not isinstance(data, Mapping):
        raise ConfigError(f"--spec: {path} must hold a mapping with name, preset, fixed, grid, seeds")
    unknown = set(data) - {"name", "preset", "fixed", "grid", "seeds"}
    if unknown:
        raise ConfigError(f"--spec: unknown key(s) {', '.join(sorted(unknown))}; allowed: name, preset, fixed, grid, seeds")
    name = str(data.get("name", ""))
    if not re.fullmatch(r"[a-z0-9][a-z0-9_.-]*", name):
        raise ConfigError(f"--spec: name must be lower-case letters, digits, . _ -; got {name!r}")
    if name in NAMED_SWEEPS:
        raise ConfigError(f"--spec: {name!r} is a named sweep; choose another name")
    grid = data.get("grid")
    blocks = grid if isinstance(grid, list) else [grid]
    fixed = data.get("fixed") or {}
    if not isinstance(fixed, Mapping):
        raise ConfigError("--spec: fixed must be a mapping of field → value")
    seeds = parse_seeds(",".join(str(s) for s in data["seeds"])) if data.get("seeds") is not None else SEEDS
    return Sweep(
        name,
        tuple(_spec_block(block, f"--spec grid[{i}]") for i, block in enumerate(blocks)),
        dict(fixed),
        str(data.get("preset", BASE_PRESET)),
        seeds or SEEDS,
    )


def lookup_sweep(name: str | None, spec: str | None) -> Sweep:
    """A named sweep, or the one a spec file defines (NAME, when also given, must match it)."""
    if spec:
        sweep = load_spec(spec)
        if name and name != sweep.name:
            raise ConfigError(f"NAME {name!r} differs from the spec's name {sweep.name!r}")
        return sweep
    if not name:
        raise ConfigError(f"give a sweep NAME ({', '.join(NAMED_SWEEPS)}) or --spec FILE")
    if name not in NAMED_SWEEPS:
        raise ConfigError(f"unknown sweep {name!r}; named sweeps: {', '.join(NAMED_SWEEPS)} (or --spec FILE)")
    return NAMED_SWEEPS[name]


def grid_points(space: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Every point of a product grid, as `optuna.samplers.GridSampler` hands them out (in-memory study)."""
    size = math.prod(len(values) for values in space.values())
    points: list[dict[str, Any]] = []

    def record(trial: optuna.Trial) -> float:
        points.append({name: trial.suggest_categorical(name, list(values)) for name, values in space.items()})
        return 0.0

    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        optuna.create_study(sampler=optuna.samplers.GridSampler(dict(space), seed=0)).optimize(record, n_trials=size)
    finally:
        optuna.logging.set_verbosity(verbosity)
    return points


def _dim_values(name: str, values: Sequence[Any]) -> tuple[Any, ...]:
    """Grid values parsed to the field's type (lists as their `300,450` string: GridSampler takes scalars)."""
    if name == "preset":
        for value in values:
            if value not in PRESETS:
                raise ConfigError(f"preset: unknown preset {value!r}; allowed: {', '.join(PRESETS)}")
        return tuple(dict.fromkeys(values))
    if name == "seed":
        raise ConfigError("seed: a sweep's seeds are --seeds / seeds, not a grid dim")
    parsed = [parse_field(name, value) for value in values]
    return tuple(dict.fromkeys(format_value(v) if isinstance(v, tuple) else v for v in parsed))


def _point_config(sweep: Sweep, dims: Mapping[str, Any], overrides: Mapping[str, Any], label: str) -> RunConfig:
    values = {k: v for k, v in dims.items() if k != "preset"}
    try:
        return build_config(dims.get("preset", sweep.preset), {**sweep.fixed, **values, **overrides})
    except ConfigError as error:
        raise ConfigError(f"sweep {sweep.name}, point {label}: {error}") from None


def block_points(sweep: Sweep, index: int, block: Block, overrides: Mapping[str, Any]) -> list[GridPoint]:
    """The points of one block; dims the user pinned with --set/--dataset stop varying."""
    dims = {name: _dim_values(name, values) for name, values in block.dims.items() if name not in overrides}
    top = max(sweep.seeds)
    seeds = tuple(sweep.seeds) + tuple(range(top + 1, top + 1 + block.extra_seeds))
    points = []
    for raw in grid_points({**dims, "seed": seeds}):
        seed = int(raw.pop("seed"))
        label = " ".join(f"{k}={format_value(v)}" for k, v in raw.items()) + f" seed={seed}"
        extra = {"init_from": f"phase1-run-of-seed-{seed}"} if sweep.chain_phase1 else {}
        config = _point_config(sweep, raw, {**overrides, **extra, "seed": seed}, label)
        order = (index, *(list(dims[k]).index(v) for k, v in raw.items()), seeds.index(seed))
        points.append(GridPoint(MAIN, tuple(raw.items()), seed, config, order))
    return points


def phase1_points(sweep: Sweep, seeds: Iterable[int], overrides: Mapping[str, Any]) -> list[GridPoint]:
    """An intervention sweep's Phase-1 sources: the two-phase control run of the sweep's condition, one per seed.

    Its `checkpoints/phase1_end.pt` (epoch phase1_epochs) carries the cosine schedule over all epochs, so each
    α run continues exactly the schedule the control follows (a phase2_epochs=0 run would anneal to zero by the
    end of Phase 1 and its α runs' learning rate would climb back up). It is also the control of the t-tests.
    """
    forced = {"init_from": "none", "rescale_alpha": 1.0, "protocol": "two-phase"}
    return [
        GridPoint(PHASE1, (), seed, _point_config(sweep, {}, {**overrides, **forced, "seed": seed}, f"phase1 seed={seed}"), (-1, seed))
        for seed in sorted(set(seeds))
    ]


def resolve_points(sweep: Sweep, overrides: Mapping[str, Any]) -> list[GridPoint]:
    """Every grid point, validated (one-line ConfigError), duplicates merged, Phase-1 runs first."""
    unique: dict[tuple[str, str], GridPoint] = {}
    for index, block in enumerate(sweep.blocks):
        for point in block_points(sweep, index, block, overrides):
            unique.setdefault((point.stage, point.key), point)
    points = sorted(unique.values(), key=lambda p: p.order)
    if sweep.chain_phase1:
        sources = phase1_points(sweep, (p.seed for p in points), overrides)
        key_of = {source.seed: source.key for source in sources}
        points = sources + [dataclasses.replace(p, requires=key_of[p.seed]) for p in points]
    return points


def with_seeds(sweep: Sweep, seeds: tuple[int, ...] | None) -> Sweep:
    return sweep if seeds is None else Sweep(sweep.name, sweep.blocks, sweep.fixed, sweep.preset, seeds, sweep.chain_phase1)


# ---------------------------------------------------------------- the plan: what is done, running, failed, to do


@dataclass
class PointState:
    point: GridPoint
    status: str  # done | running | failed | to do
    result: dict[str, Any] = field(default_factory=dict)  # trial-style attrs of the finished run
    trial: int | None = None
    init_from: str | None = None  # an intervention point's Phase-1 run


def study_name(sweep: Sweep, stage: str) -> str:
    """`ncflow-NAME`; an intervention's Phase-1 runs live in `ncflow-NAME-phase1`."""
    return f"ncflow-{sweep.name}" if stage == MAIN else f"ncflow-{sweep.name}-{stage}"


def point_state(point: GridPoint, trials: list[Any], client: MlflowClient, experiment_id: str | None) -> PointState:
    """Done (FINISHED run in MLflow) › running (a live RUNNING trial) › failed (last attempt failed) › to do."""
    done = sw.finished_result(client, experiment_id, point.condition, point.seed) if experiment_id else None
    mine = sorted((t for t in trials if t.user_attrs.get(sw.ATTR_POINT) == point.key), key=lambda t: t.number)
    last = mine[-1].number if mine else None
    if done is not None:
        return PointState(point, "done", done, last)
    if any(t.state == optuna.trial.TrialState.RUNNING and not sw.is_stale(t) for t in mine):
        return PointState(point, "running", trial=last)
    finished = [t for t in mine if t.state != optuna.trial.TrialState.WAITING]
    if finished and finished[-1].state in (optuna.trial.TrialState.FAIL, optuna.trial.TrialState.RUNNING):
        return PointState(point, "failed", {sw.ATTR_FAIL_REASON: finished[-1].user_attrs.get(sw.ATTR_FAIL_REASON, "")}, last)
    return PointState(point, "to do", trial=last)


def read_trials(storage_url: str, name: str) -> list[Any]:
    """The study's trials without creating anything (a missing journal file means no trials)."""
    if sw.storage_kind(storage_url) == "journal" and not Path(storage_url).exists():
        return []
    return sw.study_trials(sw.open_storage(storage_url), name)


def plan(sweep: Sweep, points: list[GridPoint], storage_url: str, client: MlflowClient, experiment_id: str | None) -> list[PointState]:
    """Each point's state; an intervention point also gets its seed's Phase-1 run, once that is done."""
    trials = {stage: read_trials(storage_url, study_name(sweep, stage)) for stage in {p.stage for p in points}}
    states = [point_state(p, trials[p.stage], client, experiment_id) for p in points]
    phase1_runs = {s.point.seed: s.result[sw.ATTR_RUN_ID] for s in states if s.point.stage == PHASE1 and s.status == "done"}
    for state in states:
        if sweep.chain_phase1 and state.point.stage == MAIN:
            state.init_from = phase1_runs.get(state.point.seed)
    return states


def render_plan(sweep: Sweep, states: list[PointState], storage_url: str, tracking_uri: str, experiment: str) -> str:
    """The dry-run table: every point, its varying params and seed, and its state."""
    lines = [
        f"sweep {sweep.name}: {len(states)} points; study {', '.join(study_name(sweep, s) for s in stages(sweep))} in {storage_url}; "
        f"MLflow {tracking_uri}, experiment {experiment}",
        f"{'stage':<7} {'params':<38} {'seed':>4}  {'status':<8} run",
    ]
    for state in states:
        run = state.result.get(sw.ATTR_RUN_ID, "")
        note = ""
        if state.point.stage == MAIN and sweep.chain_phase1:
            note = f"(init_from {state.init_from or 'the Phase-1 run of seed ' + str(state.point.seed)})"
        lines.append(f"{state.point.stage:<7} {state.point.label():<38} {state.point.seed:>4}  {state.status:<8} {run} {note}".rstrip())
    lines.append(counts_line(states))
    return "\n".join(lines)


def dry_run(run: "SweepRun", points: list[GridPoint]) -> str:
    """The plan of every point, read from MLflow and the study; nothing is created, enqueued or trained."""
    client = MlflowClient(tracking_uri=run.tracking_uri)
    experiment = sw.with_retry(client.get_experiment_by_name, run.experiment)
    states = plan(run.sweep, points, run.storage, client, experiment.experiment_id if experiment else None)
    return render_plan(run.sweep, states, run.storage, run.tracking_uri, run.experiment)


def counts(states: list[PointState]) -> dict[str, int]:
    tally = {"done": 0, "running": 0, "failed": 0, "to do": 0}
    for state in states:
        tally[state.status] += 1
    return tally


def counts_line(states: list[PointState]) -> str:
    """`12 points: 3 done, 0 running, 0 failed, 9 to do`."""
    return f"{len(states)} points: " + ", ".join(f"{n} {status}" for status, n in counts(states).items())


# ---------------------------------------------------------------- running: parent run, enqueue, workers, summary


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


def resolve_tracking(tracking_uri: str | None) -> str:
    import mlflow

    return tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or mlflow.get_tracking_uri()


def default_experiment(tracking_uri: str) -> str:
    """The experiment of MLFLOW_RUN_ID (under `mlflow run`), else MLFLOW_EXPERIMENT_NAME, else `ncflow`."""
    adopted = os.environ.get("MLFLOW_RUN_ID")
    if adopted:
        client = MlflowClient(tracking_uri=tracking_uri)
        return client.get_experiment(client.get_run(adopted).info.experiment_id).name
    return os.environ.get("MLFLOW_EXPERIMENT_NAME") or RunConfig.experiment


def open_parent(client: MlflowClient, experiment_id: str, name: str) -> str:
    """The sweep's parent run: MLFLOW_RUN_ID under `mlflow run`, else the latest `sweep-NAME`, else a new one."""
    from ncflow import tracking

    tags = {tracking.TAG_KIND: "sweep", tracking.TAG_SWEEP: name}
    adopted = os.environ.get("MLFLOW_RUN_ID")
    if adopted:
        sw.with_retry(tracking.set_tags, client, adopted, {**tags, "mlflow.runName": f"sweep-{name}"})
        return adopted
    found = sw.with_retry(
        client.search_runs,
        [experiment_id],
        filter_string=f"tags.`{tracking.TAG_KIND}` = 'sweep' and tags.`{tracking.TAG_SWEEP}` = '{name}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if found:
        sw.with_retry(client.update_run, found[0].info.run_id, status="RUNNING")
        return found[0].info.run_id
    return sw.with_retry(client.create_run, experiment_id, run_name=f"sweep-{name}", tags=tags).info.run_id


def enqueue_stage(run: SweepRun, stage: str, points: list[GridPoint], client: MlflowClient, experiment_id: str) -> int:
    """Under the sweep lock: fail abandoned trials, record reused points, enqueue each to-do point once.

    Returns how many trials are WAITING afterwards (this invocation's and any other's).
    """
    storage = sw.open_storage(run.storage)
    name = study_name(run.sweep, stage)
    with sw.sweep_lock(run.storage, name):
        study = optuna.create_study(study_name=name, storage=storage, load_if_exists=True, direction="minimize")
        study.set_user_attr("ncflow_sweep", run.sweep.name)
        sw.fail_stale_trials(storage, name, client, experiment_id)
        trials = sw.study_trials(storage, name)
        for point in points:
            mine = [t for t in trials if t.user_attrs.get(sw.ATTR_POINT) == point.key]
            done = sw.finished_result(client, experiment_id, point.condition, point.seed)
            if done is not None:
                if not any(t.state == optuna.trial.TrialState.COMPLETE for t in mine):
                    value = sw.objective_value(done[sw.ATTR_STATUS], done.get(sw.ATTR_T_NC), point.config.total_epochs)
                    sw.record_reused(study, point.task(run.sweep.name), done, value)
            elif not any(t.state in (optuna.trial.TrialState.WAITING, optuna.trial.TrialState.RUNNING) for t in mine):
                sw.enqueue(study, point.task(run.sweep.name))
        waiting = optuna.trial.TrialState.WAITING
        return sum(1 for t in sw.study_trials(storage, name) if t.state == waiting and sw.ATTR_POINT in t.user_attrs)


def worker_command(run: SweepRun, count: int, parent_id: str, experiment_id: str) -> list[str]:
    """`python -m ncflow.sweep_workers ARGS`: the studies to claim from, the parent run, this machine's settings;
    the cores are split between the `count` workers."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    local = {"tracking_uri": run.tracking_uri}
    local.update({k: format_value(v) for k, v in run.overrides.items() if k in ("data_dir", "device")})
    args = sw.WorkerArgs(
        storage=run.storage,
        studies=[study_name(run.sweep, stage) for stage in stages(run.sweep)],
        sweep=run.sweep.name,
        parent_run_id=parent_id,
        tracking_uri=run.tracking_uri,
        experiment_id=experiment_id,
        local=local,
        threads=max(1, cores // count),
    )
    return [sys.executable, "-m", "ncflow.sweep_workers", json.dumps(asdict(args))]


def worker_env(threads: int, tracking_uri: str) -> dict[str, str]:
    """The parent's environment without MLFLOW_RUN_ID (a child would adopt the parent run), threads capped."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_RUN_ID"}
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), MLFLOW_TRACKING_URI=tracking_uri)
    return env


def fail_lost_trials(run: SweepRun, client: MlflowClient, experiment_id: str) -> None:
    """After a worker died: fail the trials it held (and end their runs), in every study of the sweep."""
    storage = sw.open_storage(run.storage)
    for stage in stages(run.sweep):
        name = study_name(run.sweep, stage)
        with sw.sweep_lock(run.storage, name):
            sw.fail_stale_trials(storage, name, client, experiment_id)


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
        "run_id": result.get(sw.ATTR_RUN_ID, ""),
        "reused": str(result.get(sw.ATTR_PARENT) != parent_id).lower() if state.status == "done" else "",
        "ncflow_status": result.get(sw.ATTR_STATUS, ""),
        "T_NC": result.get(sw.ATTR_T_NC, ""),
        "fn_star": result.get(sw.ATTR_FN_STAR, ""),
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
        self.storage = sw.open_storage(run.storage)
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
        """Cheap refresh between plans: a point whose latest trial completed counts as done."""
        latest: dict[str, Any] = {}
        for stage in {p.stage for p in self.points}:
            for trial in sorted(sw.study_trials(self.storage, study_name(self.run.sweep, stage)), key=lambda t: t.number):
                if sw.ATTR_POINT in trial.user_attrs:
                    latest[trial.user_attrs[sw.ATTR_POINT]] = trial.state
        state = optuna.trial.TrialState
        by_state = {state.COMPLETE: "done", state.RUNNING: "running", state.FAIL: "failed", state.WAITING: "to do"}
        states = [
            PointState(s.point, s.status if s.status == "done" else by_state.get(latest.get(s.point.key), s.status))
            for s in self.base
        ]
        self._report(states)

    def _report(self, states: list[PointState]) -> None:
        from mlflow.entities import Metric

        tally = counts(states)
        now = (tally["done"], tally["failed"], tally["running"])
        if now == self.last:
            return
        self.bar.update(tally["done"] - self.bar.n)
        values = {"sweep/done": tally["done"], "sweep/failed": tally["failed"], "sweep/running": tally["running"],
                  "sweep/remaining": len(states) - tally["done"]}
        stamp = int(time.time() * 1000)
        sw.with_retry(self.client.log_batch, self.parent_id, metrics=[Metric(k, float(v), stamp, self.step) for k, v in values.items()])
        self.step += 1
        self.last = now

    def close(self) -> None:
        self.bar.close()


def stages(sweep: Sweep) -> tuple[str, ...]:
    return (PHASE1, MAIN) if sweep.chain_phase1 else (MAIN,)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """In the main thread, SIGTERM unwinds like Ctrl-C: workers are stopped, the summary is logged."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, sw.raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_sweep(run: SweepRun, points: list[GridPoint]) -> list[PointState]:
    """Run every to-do point once across workers; the final state of each point.

    An intervention's Phase-1 points and α points are enqueued together: a worker takes an α point once its
    seed's Phase-1 trial completed (its run becomes init_from), so one pool pipelines both.
    """
    from ncflow import tracking

    client = MlflowClient(tracking_uri=run.tracking_uri)
    experiment_id = sw.with_retry(tracking.ensure_experiment, client, run.experiment)  # store + experiment, once
    with sw.sweep_lock(run.storage, study_name(run.sweep, MAIN)):
        parent_id = open_parent(client, experiment_id, run.sweep.name)
    described = {"sweep": asdict(run.sweep), "overrides": {k: format_value(v) for k, v in run.overrides.items()}}
    sw.with_retry(client.log_dict, parent_id, {**described, "storage": run.storage}, "sweep.json")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    progress = Progress(run, points, client, experiment_id, parent_id)
    status = "KILLED"
    try:
        with sigterm_as_interrupt():
            progress.full()
            waiting = sum(
                enqueue_stage(run, stage, [p for p in points if p.stage == stage], client, experiment_id)
                for stage in stages(run.sweep)
            )
            if waiting:
                run_workers(run, min(run.workers, waiting), parent_id, experiment_id, progress.poll)
            final = progress.full()
            status = "FINISHED" if counts(final)["done"] == len(final) else "FAILED"
            return final
    finally:
        if status == "KILLED":  # interrupted: record what is known now
            with contextlib.suppress(Exception):
                progress.full()
        progress.close()
        sw.with_retry(client.log_text, parent_id, summary_csv(progress.base, parent_id), "sweep_summary.csv")
        if not os.environ.get("MLFLOW_RUN_ID"):  # under `mlflow run`, MLflow ends its own run
            sw.with_retry(client.set_terminated, parent_id, status)
