"""Sweep definitions as data, and their resolution into validated grid points.

A sweep is a list of product grids (blocks) over RunConfig fields on top of a preset and the sweep's fixed
settings; `seed` is always a dimension. Each block is listed with `itertools.product` (dims in the block's order,
the seed last), and the points are ordered by block, then each dim's value position, then seed. A grid point is
identified by its `ncflow.condition` hash + seed. Named sweeps (`NAMED_SWEEPS`), `--spec` files, `--set` and
`--seeds` all end here; every point's RunConfig is built and validated before anything starts.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import yaml

from ncflow.engine.config import PRESETS, ConfigError, build_config, condition_hash, parse_field
from ncflow.grokking.config import PRESETS as GROK_PRESETS
from ncflow.grokking.config import GrokConfig, build_grok_config, parse_grok_field
from ncflow.sweeps.trials import TASK_ENGINE, TASK_GROKKING, PointTask
from ncshared import schema
from ncshared.run_config import RunConfig, format_value

SEEDS = (0, 1, 2)
BASE_PRESET = "paper-mnist-mlp"
MAIN, PHASE1 = "main", "phase1"  # stages: a grid point, or an intervention sweep's Phase-1 source
MLP5_RELU = {"arch": "mlp", "depth": 5, "activation": "relu"}
ENGINE, GROKKING = TASK_ENGINE, TASK_GROKKING  # what trains a sweep's points: ncflow's engine, or the grokking loop
# Where and on what a point trains, not what: no GrokConfig field (a grokking sweep's `--set` takes them as RunConfig's).
LOCAL_SETTINGS = ("experiment", "tracking_uri", "data_dir", "device", "threads")


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
    task: str = ENGINE  # ENGINE: points are RunConfigs; GROKKING: GrokConfigs (`ncflow.grokking`), preset a GROK_PRESETS key
    on_data: Sweep | None = None  # a grokking sweep's counterpart trained by the engine when `--dataset` is given


# The regulariser sweeps' settings. On the grokking task: 6,000 optimiser steps (an unregularised run generalises
# by about step 3,000 here), the flatness regulariser unplugged at step 3,000. Through the engine: Han et al.'s SGD
# (lr 0.01, momentum 0.9, batch 64, no weight decay, constant rate, cross-entropy only), 100 epochs, the flatness
# regulariser unplugged after epoch 30.
GROK_REGULARISED = {"operation": "add", "train_fraction": 0.3, "steps": 6000}
# The control of both regulariser sweeps: no regulariser (λ = 0), one condition, so the second sweep reuses its runs.
UNREGULARISED = Block({"reg": ("none",), "reg_lambda": (0.0,)})
HAN_SGD = {**MLP5_RELU, "dataset": "mnist-5k", "optimizer": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 0.0,
           "batch_size": 64, "schedule": "constant", "protocol": "ce-only", "phase1_epochs": 100, "phase2_epochs": 0}

# The paper's experiment grids, and studies beyond it, each under its name in `schema.SWEEP_FAMILIES` (the table the
# analysis reads the runs' families by). Everything not named here comes from the preset paper-mnist-mlp
# (MNIST, Adam 1e-3, cosine, 200 + 400 epochs).
NAMED_SWEEPS: dict[str, Sweep] = {sweep.name: sweep for sweep in (
    Sweep(schema.DEPTH_SWEEP, (Block({"depth": (2, 3, 5, 7)}),), {**MLP5_RELU, "weight_decay": 1e-4}),
    Sweep(
        schema.ACTIVATION_SWEEP,
        (Block({"activation": ("relu",)}), Block({"activation": ("gelu",)}, extra_seeds=1), Block({"activation": ("tanh",)})),
        {**MLP5_RELU, "weight_decay": 1e-4},
    ),
    Sweep(schema.WEIGHT_DECAY_SWEEP, (Block({"weight_decay": (1e-5, 5e-5, 1e-4, 5e-4)}),), MLP5_RELU),
    Sweep(schema.WIDTH_SWEEP, (Block({"width": (128, 256, 512, 1024)}),), MLP5_RELU),
    Sweep(
        schema.GRID_SWEEP,
        (Block({"preset": ("paper-mnist-mlp", "paper-cifar-resnet20"), "dataset": ("mnist", "cifar10")}),),
    ),
    Sweep(
        schema.INTERVENTION_SWEEP, (Block({"rescale_alpha": (1.0, 0.3, 3.0)}),), {**MLP5_RELU, "dataset": "mnist"},
        chain_phase1=True,
    ),
    Sweep(schema.PROTOCOL_SWEEP, (Block({"protocol": ("ce-only", "two-phase")}),), MLP5_RELU),
    # Beyond the paper: the head learned as usual vs fixed to a simplex ETF (MLP-5, ReLU, λ = 1e-4).
    Sweep(schema.ETF_SWEEP, (Block({"classifier": ("learned", "etf")}),), {**MLP5_RELU, "weight_decay": 1e-4}),
    # Beyond the paper: collapse through the layers of an MLP-7 (every hidden layer measured each epoch).
    Sweep(schema.LAYERWISE_SWEEP, (Block({"depth": (7,)}),), {**MLP5_RELU, "weight_decay": 1e-4, "layerwise": True}),
    # Beyond the paper: class imbalance (step profile: half the classes n_max, half n_max / ρ) and minority collapse.
    Sweep(schema.IMBALANCE_SWEEP, (Block({"imbalance_ratio": (1.0, 10.0, 100.0)}),),
          {**MLP5_RELU, "weight_decay": 1e-4, "imbalance_profile": "step"}),
    # Han et al.: grokking on modular arithmetic (the `power` preset: p = 97, 20,000 steps), each operation at two
    # training fractions.
    Sweep(schema.GROKKING_SWEEP, (Block({"operation": ("add", "subtract", "multiply", "divide"),
                                         "train_fraction": (0.3, 0.5)}),), preset="power", task=GROKKING),
    # Han et al.'s regularisers (loss = CE − λ·R), on the grokking task (x + y mod 97, 30 %, 6,000 steps), or with
    # `--dataset` on that data set through the engine with their SGD setting (an MLP-5 for 100 CE epochs).
    Sweep(schema.NCC_REGULARISER_SWEEP, (UNREGULARISED, Block({"reg_lambda": (1e-4, 1e-3, 1e-2)})),
          {"reg": "ncc", **GROK_REGULARISED}, preset="power", task=GROKKING,
          on_data=Sweep(schema.NCC_REGULARISER_SWEEP, (UNREGULARISED, Block({"reg_lambda": (1e-4, 1e-3, 1e-2)})),
                        {"reg": "ncc", **HAN_SGD})),
    Sweep(schema.FLATNESS_REGULARISER_SWEEP,
          (UNREGULARISED, Block({"reg_lambda": (1e-4,), "unplug_step": (0, 3000)})),
          {"reg": "flatness", **GROK_REGULARISED}, preset="power", task=GROKKING,
          on_data=Sweep(schema.FLATNESS_REGULARISER_SWEEP,
                        (UNREGULARISED, Block({"reg_lambda": (1e-4,), "unplug_epoch": (0, 30)})),
                        {"reg": "flatness", **HAN_SGD})),
)}


def stages(sweep: Sweep) -> tuple[str, ...]:
    """The sweep's stages in the order workers claim them."""
    return (PHASE1, MAIN) if sweep.chain_phase1 else (MAIN,)


def study_name(sweep: Sweep, stage: str) -> str:
    """`ncflow-NAME`; an intervention's Phase-1 runs live in `ncflow-NAME-phase1`."""
    return f"ncflow-{sweep.name}" if stage == MAIN else f"ncflow-{sweep.name}-{stage}"


@dataclass(frozen=True)
class GridPoint:
    """One condition and seed: what one trial trains."""

    stage: str  # MAIN, or PHASE1 for an intervention sweep's Phase-1 runs
    params: tuple[tuple[str, Any], ...]  # the dims that vary here, in the sweep's order
    seed: int
    config: RunConfig | GrokConfig  # a GrokConfig in a grokking sweep
    order: tuple[int, ...] = ()  # sort key: block, value positions, seed
    requires: str | None = None  # intervention: the key of the Phase-1 point whose run is init_from

    @property
    def condition(self) -> str:
        if isinstance(self.config, GrokConfig):  # the tag its monitor run gets (the model's settings: torch)
            from ncflow.grokking.train import condition

            return condition(self.config)
        return condition_hash(self.config)

    @property
    def key(self) -> str:
        return f"{self.condition}-s{self.seed}"

    def label(self) -> str:
        parts = [f"{name}={format_value(value)}" for name, value in self.params]
        if self.stage == PHASE1:
            parts.append("control run (Phase-1 source)")
        return " ".join(parts) or "-"

    def task(self, sweep: Sweep) -> PointTask:
        requires = {"study": study_name(sweep, PHASE1), "key": self.requires} if self.requires else None
        return PointTask(self.key, self.stage, {**dict(self.params), "seed": self.seed}, self.config.as_params(), requires,
                         sweep.task)


# ---------------------------------------------------------------- the command line's --set and --seeds


def parse_settings(items: Iterable[str], task: str = ENGINE) -> dict[str, Any]:
    """`--set k=v` values (each may hold several `k=v` joined by commas; `none` is nothing), parsed and checked as
    RunConfig fields, or GrokConfig fields for a grokking sweep's `task`."""
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
            engine_field = task == ENGINE or name in LOCAL_SETTINGS
            settings[name] = parse_field(name, raw) if engine_field else grok_field(name, raw)
    return settings


def grok_field(name: str, raw: Any) -> Any:
    """A GrokConfig field's value (`parse_grok_field`), its error as a ConfigError."""
    try:
        return parse_grok_field(name, raw)
    except ValueError as error:
        raise ConfigError(str(error)) from None


def for_data(sweep: Sweep, dataset: str | None) -> Sweep:
    """The sweep that trains on `dataset` (`--dataset`): a grokking sweep's engine counterpart when it has one (a
    grokking sweep without one refuses a data set); the sweep itself otherwise."""
    if dataset is None or dataset.strip().lower() == "none" or sweep.task == ENGINE:
        return sweep
    if sweep.on_data is None:
        raise ConfigError(f"dataset: the {sweep.name} sweep trains on modular arithmetic only; drop --dataset")
    return dataclasses.replace(sweep.on_data, seeds=sweep.seeds)


def parse_seeds(raw: str | None, what: str = "--seeds") -> tuple[int, ...] | None:
    """`0,1,2` → (0, 1, 2); None or `none` → the sweep's own seeds. A seed given twice is refused (it would train
    once, silently); `what` names the parameter in the one-line error."""
    if raw is None or raw.strip().lower() in ("", "none"):
        return None
    try:
        seeds = tuple(int(part) for part in raw.replace(" ", "").split(",") if part)
    except ValueError:
        raise ConfigError(f"{what}: expected comma-separated integers like 0,1,2, got {raw!r}") from None
    if not seeds or min(seeds) < 0:
        raise ConfigError(f"{what}: expected integers >= 0, got {raw!r}")
    repeated = sorted({seed for seed in seeds if seeds.count(seed) > 1})
    if repeated:
        raise ConfigError(f"{what}: seed {', '.join(map(str, repeated))} given more than once in {raw!r}; "
                          "give each seed once (one run per seed)")
    return seeds


def with_seeds(sweep: Sweep, seeds: tuple[int, ...] | None) -> Sweep:
    """The sweep with `--seeds` in place of its own (None keeps them)."""
    return sweep if seeds is None else dataclasses.replace(sweep, seeds=seeds)


def with_datasets(sweep: Sweep, datasets: tuple[str, ...] | None) -> Sweep:
    """The sweep with these data sets in place of the values of its `dataset` dimension (the grid's MNIST and
    CIFAR-10: `ncflow reproduce --grid-data mnist-5k` runs its MNIST half on mnist-5k); None keeps them."""
    if datasets is None:
        return sweep
    blocks = tuple(dataclasses.replace(block, dims={**block.dims, "dataset": datasets}) if "dataset" in block.dims
                   else block for block in sweep.blocks)
    return dataclasses.replace(sweep, blocks=blocks)


# ---------------------------------------------------------------- spec files


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
        raise ConfigError(f"--spec: cannot read {path}: {yaml_reason(error)}") from None
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
    listed = data.get("seeds")
    listed = listed if isinstance(listed, list) or listed is None else [listed]
    seeds = parse_seeds(",".join(str(s) for s in listed), "--spec seeds") if listed is not None else SEEDS
    return Sweep(
        name,
        tuple(_spec_block(block, f"--spec grid[{i}]") for i, block in enumerate(blocks)),
        dict(fixed),
        str(data.get("preset", BASE_PRESET)),
        seeds or SEEDS,
    )


def yaml_reason(error: Exception) -> str:
    """One line: a YAML syntax error's problem with its line and column (1-based), else the error's first line."""
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None)
    if mark is not None and problem:
        context = getattr(error, "context", None)
        start = getattr(error, "context_mark", None) if context else None
        where = f" ({context} that starts at line {start.line + 1}, column {start.column + 1})" if start else ""
        return f"line {mark.line + 1}, column {mark.column + 1}: {problem}{where}"
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


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


# ---------------------------------------------------------------- grid points


def _dim_values(name: str, values: Sequence[Any], task: str = ENGINE) -> tuple[Any, ...]:
    """Grid values parsed to the field's type, duplicates dropped; a list value as its `300,450` string, so that
    a trial's params stay JSON scalars."""
    if name == "preset":
        presets = PRESETS if task == ENGINE else GROK_PRESETS
        for value in values:
            if value not in presets:
                raise ConfigError(f"preset: unknown preset {value!r}; allowed: {', '.join(presets)}")
        return tuple(dict.fromkeys(values))
    if name == "seed":
        raise ConfigError("seed: a sweep's seeds are --seeds / seeds, not a grid dim")
    parsed = [parse_field(name, value) if task == ENGINE else grok_field(name, value) for value in values]
    return tuple(dict.fromkeys(format_value(v) if isinstance(v, tuple) else v for v in parsed))


def _point_config(sweep: Sweep, dims: Mapping[str, Any], overrides: Mapping[str, Any],
                  label: str) -> RunConfig | GrokConfig:
    values = {k: v for k, v in dims.items() if k != "preset"}
    try:
        if sweep.task == GROKKING:
            settings = {k: v for k, v in {**sweep.fixed, **values, **overrides}.items() if k not in LOCAL_SETTINGS}
            return build_grok_config(dims.get("preset", sweep.preset), **settings)
        return build_config(dims.get("preset", sweep.preset), {**sweep.fixed, **values, **overrides})
    except ValueError as error:  # ConfigError included
        raise ConfigError(f"sweep {sweep.name}, point {label}: {error}") from None


def block_points(sweep: Sweep, index: int, block: Block, overrides: Mapping[str, Any]) -> list[GridPoint]:
    """The points of one block in product order; dims the user pinned with --set/--dataset stop varying."""
    dims = {name: _dim_values(name, values, sweep.task) for name, values in block.dims.items() if name not in overrides}
    top = max(sweep.seeds)
    seeds = tuple(sweep.seeds) + tuple(range(top + 1, top + 1 + block.extra_seeds))
    axes = [list(enumerate(values)) for values in dims.values()] + [list(enumerate(seeds))]
    points = []
    for combination in itertools.product(*axes):
        *chosen, (seed_position, seed) = combination
        raw = {name: value for name, (_, value) in zip(dims, chosen)}
        label = " ".join(f"{k}={format_value(v)}" for k, v in raw.items()) + f" seed={seed}"
        extra = {"init_from": f"phase1-run-of-seed-{seed}"} if sweep.chain_phase1 else {}
        config = _point_config(sweep, raw, {**overrides, **extra, "seed": seed}, label)
        order = (index, *(position for position, _ in chosen), seed_position)
        points.append(GridPoint(MAIN, tuple(raw.items()), seed, config, order))
    return points


def phase1_points(sweep: Sweep, seeds: Iterable[int], overrides: Mapping[str, Any]) -> list[GridPoint]:
    """An intervention sweep's Phase-1 sources: the two-phase control run of the sweep's condition, one per seed.

    Its `checkpoints/phase1_end.pt` (epoch phase1_epochs) carries the cosine schedule over all epochs, so each
    α run continues exactly the schedule the control follows (a phase2_epochs=0 run would anneal to zero by the
    end of Phase 1 and its α runs' learning rate would climb back up). It is also the control of the t-tests.
    """
    forced = {"init_from": "none", "rescale_alpha": 1.0, "protocol": "two-phase"}
    chosen = str(overrides.get("checkpoints", sweep.fixed.get("checkpoints", "phase")))
    if chosen in ("last", "none"):
        raise ConfigError(f"checkpoints: the {sweep.name} sweep starts Phase 2 from its Phase-1 runs' "
                          f"checkpoints/phase1_end.pt; use phase or all, got {chosen!r}")
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
