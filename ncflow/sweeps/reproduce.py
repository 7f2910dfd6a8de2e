"""`ncflow reproduce`: the paper's MLP program as one resumable job, then the report.

The program is the named sweeps `depth`, `weight-decay`, `activation`, `width`, `protocol` and
`intervention` on one data set, plus the `grid` sweep's cells whose data is present (`--grid-data mnist-5k` puts
the grid's MNIST half — MLP-5 and ResNet-20, each with its paper protocol — on mnist-5k). They run one after
another through the ordinary sweep machinery, so every grid point is trained exactly once across stages,
re-invocations and machines: a condition several sweeps share (the MLP-5 / ReLU / λ = 1e-4 / width-512
baseline is in four) is trained by the first and reused by the others, because a point with a FINISHED run
of its condition and seed is done whatever made it. Order: `depth` and `weight-decay` with every seed first
(their statistics need three seeds), then one seed of every other sweep, then the remaining seeds — so an
interrupted job has the most complete tables it can. With several workers, a one-seed stage with fewer points left
to train than workers is left to its sweep's every-seed stage (`busy_stages`): the idle workers take the next seeds
instead of waiting for the last point of the stage (the grid's ResNet-20 runs take hours each).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from ncflow.engine import run_setup
from ncflow.engine.config import ConfigError
from ncflow.sweeps.grids import NAMED_SWEEPS, GridPoint, Sweep, resolve_points, with_datasets, with_seeds
from ncshared.run_config import DATASETS, RunConfig

PROGRAM_SWEEPS = ("depth", "weight-decay", "activation", "width", "protocol", "intervention", "grid")
ALL_SEEDS_FIRST = ("depth", "weight-decay")
OWN_DATA_SETS = ("grid",)  # sweeps whose data set is a dimension of their own, not --dataset
TIMED_EPOCHS = 2  # epochs timed per model shape for the projection (after one untimed warm-up epoch)


@dataclass(frozen=True)
class Stage:
    """One sweep with the seeds it trains in this pass."""

    sweep: Sweep
    overrides: Mapping[str, Any]

    @property
    def label(self) -> str:
        return f"{self.sweep.name} (seeds {','.join(map(str, self.sweep.seeds))})"


def parse_grid_data(raw: str | None) -> tuple[str, ...] | None:
    """`--grid-data mnist-5k` → ("mnist-5k",): the grid sweep's data sets in place of its MNIST and CIFAR-10; None or
    `none` → the grid's own. Each must be a data set ncflow knows by name."""
    if raw is None or raw.strip().lower() in ("", "none"):
        return None
    names = tuple(dict.fromkeys(name.strip() for name in raw.split(",") if name.strip()))
    unknown = [name for name in names if name not in DATASETS]
    if unknown or not names:
        raise ConfigError(f"--grid-data: expected data sets from {', '.join(DATASETS)}; got {raw!r}")
    return names


def parse_sweeps(raw: str | None) -> tuple[str, ...]:
    """`--sweeps depth,width` → those of the program, in program order; None → all."""
    if raw is None or raw.strip().lower() in ("", "all"):
        return PROGRAM_SWEEPS
    names = [name.strip() for name in raw.split(",") if name.strip()]
    unknown = [name for name in names if name not in PROGRAM_SWEEPS]
    if unknown or not names:
        raise ConfigError(f"--sweeps: expected names from {', '.join(PROGRAM_SWEEPS)}; got {raw!r}")
    return tuple(name for name in PROGRAM_SWEEPS if name in names)


def program(names: Sequence[str], seeds: tuple[int, ...] | None, overrides: Mapping[str, Any],
            grid_data: tuple[str, ...] | None = None) -> list[Stage]:
    """The stages in the order they run (see the module docstring); `grid_data` replaces the grid's data sets."""
    def stage(name: str, chosen: tuple[int, ...] | None) -> Stage:
        sweep = with_seeds(NAMED_SWEEPS[name], chosen)
        if name in OWN_DATA_SETS:
            sweep = with_datasets(sweep, grid_data)
        own = {k: v for k, v in overrides.items() if not (name in OWN_DATA_SETS and k == "dataset")}
        return Stage(sweep, own)

    every = {name: seeds or NAMED_SWEEPS[name].seeds for name in names}
    stages = [stage(name, every[name]) for name in names if name in ALL_SEEDS_FIRST]
    rest = [name for name in names if name not in ALL_SEEDS_FIRST]
    stages += [stage(name, every[name][:1]) for name in rest]
    stages += [stage(name, every[name]) for name in rest if len(every[name]) > 1]
    return stages


def missing_data(config: RunConfig) -> str | None:
    """Why a point cannot train here (its torchvision files are absent), or None."""
    from ncflow.engine.data import missing_data_files

    missing = missing_data_files(config.dataset, Path(config.data_dir))
    if not missing:
        return None
    return f"{config.dataset} is not under data_dir={config.data_dir!r} (missing {missing[0]})"


@dataclass(frozen=True)
class PlannedPoint:
    point: GridPoint
    sweeps: tuple[str, ...]  # every sweep of the program that has this point
    skipped: str | None  # why it cannot train here


def plan_points(stages: Sequence[Stage]) -> tuple[list[tuple[Stage, list[GridPoint]]], list[PlannedPoint]]:
    """Each stage's trainable points, and the distinct points of the whole program (shared ones once)."""
    by_key: dict[str, PlannedPoint] = {}
    runnable = []
    for stage in stages:
        points = resolve_points(stage.sweep, stage.overrides)
        keep = []
        for point in points:
            key = point.key  # condition + seed: an intervention's Phase-1 source is the baseline's run
            known = by_key.get(key)
            if known is None:
                known = PlannedPoint(point, (), missing_data(point.config))
            if stage.sweep.name not in known.sweeps:
                known = PlannedPoint(known.point, (*known.sweeps, stage.sweep.name), known.skipped)
            by_key[key] = known
            if known.skipped is None:
                keep.append(point)
        runnable.append((stage, keep))
    return runnable, list(by_key.values())


def shape_of(config: RunConfig) -> tuple[Any, ...]:
    """What an epoch's time depends on."""
    return (config.arch, config.depth, config.width, config.activation, config.dataset, config.batch_size, config.device)


def measure_epoch_seconds(config: RunConfig) -> float:
    """The median time of TIMED_EPOCHS epochs of this model shape, measured here (engine only, no MLflow)."""
    from ncflow.engine import loop

    setup = run_setup.prepare(config.replace(init_from="none", rescale_alpha=1.0))
    loop.epoch_row(setup, 1)  # warm-up: allocations, thread pools
    times = []
    for epoch in range(2, 2 + TIMED_EPOCHS):
        started = time.perf_counter()
        loop.epoch_row(setup, epoch)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def projected_seconds(
    todo: Sequence[GridPoint], workers: int, measure: Callable[[RunConfig], float] | None = None
) -> tuple[float, dict[tuple[Any, ...], float]]:
    """Wall seconds to train `todo` with `workers` processes (full epochs: an upper bound with stop_after_collapse).

    `measure` gives one model shape's seconds per epoch (default: `measure_epoch_seconds`, timed here).
    """
    measure = measure or measure_epoch_seconds
    seconds: dict[tuple[Any, ...], float] = {}
    total = 0.0
    for point in todo:
        shape = shape_of(point.config)
        if shape not in seconds:
            seconds[shape] = measure(point.config)
        epochs = point.config.total_epochs - (point.config.phase1_epochs if point.requires else 0)
        total += epochs * seconds[shape]
    return total / max(1, workers), seconds


def describe(planned: Sequence[PlannedPoint], done: set[str], projection: float | None, workers: int) -> str:
    """The dry-run listing: every distinct point once, with the sweeps that share it, its state and the totals."""
    lines = [f"{'point':<52} {'seed':>4}  {'sweeps':<34} state"]
    for item in planned:
        key = item.point.key
        state = f"skipped: {item.skipped}" if item.skipped else ("done" if key in done else "todo")
        label = f"{item.point.config.arch}{item.point.config.depth if item.point.config.arch == 'mlp' else ''} " + item.point.label()
        lines.append(f"{label[:52]:<52} {item.point.seed:>4}  {','.join(item.sweeps)[:34]:<34} {state}")
    shared = sum(1 for item in planned if len(item.sweeps) > 1)
    listed = sum(len(item.sweeps) for item in planned)
    skipped = sum(1 for item in planned if item.skipped)
    todo = sum(1 for item in planned if not item.skipped and item.point.key not in done)
    lines.append(
        f"{len(planned)} distinct points ({listed} across the sweeps, {shared} shared by several): "
        f"{len(planned) - todo - skipped} done, {todo} todo, {skipped} skipped"
    )
    if projection is not None:
        lines.append(f"projected time for the todo points with {workers} worker(s): {projection / 3600:.1f} h "
                     "(measured epoch times here, full epochs)")
    return "\n".join(lines)


def done_points(planned: Sequence[PlannedPoint], tracking_uri: str, experiment: str) -> set[str]:
    """The keys of the points with a FINISHED run of their condition and seed in the store."""
    from mlflow.tracking import MlflowClient

    from ncflow.sweeps.runs import finished_result

    client = MlflowClient(tracking_uri=tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return set()
    return {
        item.point.key
        for item in planned
        if finished_result(client, found.experiment_id, item.point.condition, item.point.seed) is not None
    }


def busy_stages(runnable: Sequence[tuple[Stage, list[GridPoint]]], done: set[str], workers: int
                ) -> list[tuple[Stage, list[GridPoint]]]:
    """The stages to run, without each one-seed stage that has 1 to `workers` − 1 points not `done` while a later
    stage of the same sweep (its every-seed stage, which has those points too) follows."""
    kept = []
    for index, (stage, points) in enumerate(runnable):
        left = sum(1 for point in points if point.key not in done)
        later = any(other.sweep.name == stage.sweep.name for other, _ in runnable[index + 1:])
        if not (later and 0 < left < workers):
            kept.append((stage, points))
    return kept


def run_program(
    runnable: Sequence[tuple[Stage, list[GridPoint]]], storage: str, tracking_uri: str, experiment: str,
    workers: int, progress: bool, pack: str = "1",
) -> list[tuple[str, str]]:
    """Run each stage as its sweep (exactly once per point, `pack` points per pack); (stage label, counts line)
    of each."""
    from ncflow.sweeps import coordinator
    from ncflow.sweeps.plan import counts_line

    outcomes = []
    for stage, points in runnable:
        if not points:
            continue
        run = coordinator.SweepRun(stage.sweep, dict(stage.overrides), storage, tracking_uri, experiment, workers, progress,
                              pack)
        states = coordinator.run_sweep(run, points)
        outcomes.append((stage.label, counts_line(states)))
    return outcomes
