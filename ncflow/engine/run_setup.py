"""Everything the epoch loop needs, built before any MLflow run exists (so bad input creates no run).

Torch only. `prepare` validates a configuration against the world (the data, the device) and builds the model,
optimiser, schedule and collapse detector at epoch 1; `start_from_phase1` starts the intervention from a Phase-1
checkpoint; `restore` continues from a resume state; `unplug` removes Han et al.'s regulariser after `unplug_epoch`
and switches the weight decay, learning rate and schedule as configured (a state after it rebuilds that schedule
from the configuration, `schedule_for`). `Sink` is where the loop (`ncflow.engine.loop`) sends its
outputs: the local run record in `ncflow.tracked.train`, or `NullSink` for benchmarks and machines without MLflow.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol

import torch

from ncflow.collapse.detector import CollapseDetector, resolve_threshold
from ncflow.engine.config import ConfigError, parse_field, validate_classes
from ncflow.engine.data import DataUnavailable, InMemoryData, load_dataset
from ncflow.engine.imbalance import minority_classes, subsample
from ncflow.engine.models import (
    build_model,
    fix_head_to_etf,
    predict_in_chunks,
    rescale_final_hidden,
)
from ncflow.engine.optional_metrics import imbalanced, optional_metric_names
from ncflow.engine.own_data import OwnDataError
from ncshared import schema
from ncshared.run_config import SOURCE, RunConfig, added_param_defaults, format_value, params_marked

# Fields of a Phase-1 checkpoint's configuration that an intervention run must share with it (marked SOURCE): the
# model, and the training settings whose state (optimiser moments, schedule position) the checkpoint carries into
# Phase 2.
SHARED_WITH_SOURCE_FIELDS = params_marked(SOURCE)


class Sink(Protocol):
    """Where the loop's outputs go. Calls come from the training thread, in epoch order."""

    def epoch(self, epoch: int, row: Mapping[str, float]) -> None: ...  # one per-epoch row
    def summary(self, metrics: Mapping[str, float]) -> None: ...  # summary metrics known so far
    def checkpoint(self, name: str, state: Mapping[str, Any]) -> None: ...  # a named checkpoint
    def state(self, state: Mapping[str, Any]) -> None: ...  # the resume state after the epoch just finished


class NullSink:
    """Keeps nothing: the engine alone (benchmarks, a machine without MLflow)."""

    def epoch(self, epoch: int, row: Mapping[str, float]) -> None:
        pass

    def summary(self, metrics: Mapping[str, float]) -> None:
        pass

    def checkpoint(self, name: str, state: Mapping[str, Any]) -> None:
        pass

    def state(self, state: Mapping[str, Any]) -> None:
        pass


@dataclass
class Setup:
    """Everything the loop needs, built before any MLflow run exists (so bad input creates no run)."""

    config: RunConfig
    device: torch.device
    data: InMemoryData
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    detector: CollapseDetector
    batch_order: torch.Generator
    start_epoch: int = 1
    history: list[dict[str, float]] = field(default_factory=list)
    intervention: dict[str, float] = field(default_factory=dict)
    recorded: dict[int, dict[str, float]] = field(default_factory=dict)  # rows already kept (resume): not re-emitted
    angles_at_collapse: list[float] | None = None  # class-mean angles at T_NC (not kept across a resume)
    class_counts: list[int] = field(default_factory=list)  # training samples per class (after any subsample)
    minority: list[int] | None = None  # under class imbalance, the minority classes
    epoch_metrics: tuple[str, ...] = schema.PER_EPOCH_METRICS  # what each epoch's row logs (+ the optional ones)
    reg_value: float = float("nan")  # with a regulariser: the last training pass's mean R (`reg/value`)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: cuda was asked for but torch sees no CUDA device; use auto or cpu")
    return torch.device(name)


def make_optimizer(model: torch.nn.Module, config: RunConfig) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(
        model.parameters(),
        lr=config.lr,
        momentum=config.momentum,
        nesterov=config.nesterov and config.momentum > 0,
        weight_decay=config.weight_decay,
    )


def make_scheduler(optimizer: torch.optim.Optimizer, config: RunConfig) -> torch.optim.lr_scheduler.LRScheduler:
    """Stepped once per epoch; cosine anneals over all epochs of both phases."""
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.total_epochs)
    if config.schedule == "multistep":
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(config.milestones), gamma=config.lr_gamma)
    return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)


def unplug_scheduler(optimizer: torch.optim.Optimizer, config: RunConfig) -> torch.optim.lr_scheduler.LRScheduler:
    """After an unplug with `unplug_schedule` cosine: cosine from the factored rate to 0 over the epochs after
    `unplug_epoch` (the first of them trains at that rate, as the run's own cosine starts at `lr`). Its base rate is
    the param groups' `initial_lr`, which `unplug` set to the factored rate (and the optimiser's state keeps)."""
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.total_epochs - config.unplug_epoch)


def schedule_for(optimizer: torch.optim.Optimizer, config: RunConfig, epoch: int,
                 scheduler: torch.optim.lr_scheduler.LRScheduler) -> torch.optim.lr_scheduler.LRScheduler:
    """The schedule a state saved after `epoch` was stepping: `scheduler` (the run's own), or after an unplug with a
    cosine schedule the unplug's, rebuilt from the configuration (its position comes from the state)."""
    if config.unplug_epoch and epoch >= config.unplug_epoch and config.unplug_schedule == "cosine":
        return unplug_scheduler(optimizer, config)
    return scheduler


def unplug(setup: Setup) -> None:
    """The unplug, at the end of `unplug_epoch` (the regulariser leaves the loss from the next epoch on): the weight
    decay switches to `unplug_weight_decay` (unless −1), the next epoch's learning rate is multiplied by
    `unplug_lr_factor`, and with `unplug_schedule` cosine a cosine schedule from that rate to 0 replaces the run's
    own. Without one, the run's schedule goes on from the factored rate (cosine, multistep and constant each scale
    the rate the optimiser holds, so the factor stays in)."""
    config = setup.config
    for group in setup.optimizer.param_groups:
        if config.unplug_weight_decay >= 0:
            group["weight_decay"] = config.unplug_weight_decay
        group["lr"] = group["lr"] * config.unplug_lr_factor
        if config.unplug_schedule == "cosine":
            group["initial_lr"] = group["lr"]  # the unplug's cosine starts here
    setup.scheduler = schedule_for(setup.optimizer, config, config.unplug_epoch, setup.scheduler)


def mean_feature_norm(model: torch.nn.Module, inputs: torch.Tensor) -> float:
    _, features = predict_in_chunks(model, inputs)
    return features.double().norm(dim=1).mean().item()


_DEFAULT_THREADS: list[int] = []  # torch's thread count when this process first set its numerics


def set_numerics(config: RunConfig, device: torch.device) -> None:
    """How this process computes, as the run asks: threads, determinism, matmul precision, denormals.

    Process-wide settings (a pack's members share them: they are PACK fields), set again for every run, so a sweep
    worker's next trial does not inherit the last one's. `threads` 0 restores the count the process started with.
    `deterministic` makes torch refuse an op that has no deterministic kernel and, on CUDA, gives cuBLAS a fixed
    workspace (CUBLAS_WORKSPACE_CONFIG, read when cuBLAS first starts in the process, so it is set before the model
    exists); the same configuration, seed, threads, device and versions then give the same history bit for bit.
    """
    if not _DEFAULT_THREADS:
        _DEFAULT_THREADS.append(torch.get_num_threads())
    torch.set_num_threads(config.threads or _DEFAULT_THREADS[0])
    if config.deterministic and device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(config.deterministic)
    torch.backends.cudnn.benchmark = False  # cuDNN's autotuner picks kernels by timing: a source of run-to-run change
    # Weight decay drives weights and gradients into float32's denormal range late in training, where CPU
    # arithmetic takes a slow path: 4.9x slower epochs at epoch 200 of the default run (benchmarks/bench_denormal.py).
    # Flushing them to zero keeps late epochs as fast as early ones. The flag is per thread and pool threads copy it
    # when created, so it is set here, after the thread count and before the first parallel op of a training process.
    torch.set_flush_denormal(True)
    torch.set_float32_matmul_precision(config.matmul_precision)


def prepare(config: RunConfig, fn_ref: float | None = None) -> Setup:
    """Validate against the world (data, device) and build the training state at epoch 1."""
    threshold = resolve_threshold(config.nc1_threshold, config.arch, config.depth, config.activation)
    device = resolve_device(config.device)
    set_numerics(config, device)
    try:
        data = load_dataset(
            config.dataset,
            config.data_dir,
            synthetic_classes=config.synthetic_classes,
            synthetic_shape=config.synthetic_dims,
            synthetic_per_class=config.synthetic_per_class,
        ).to(device)
    except DataUnavailable as error:
        raise ConfigError(f"data_dir: {error}") from None
    except OwnDataError as error:
        raise ConfigError(f"dataset: {error}") from None
    validate_classes(config, data.num_classes)
    data, counts = subsample(data, config.imbalance_ratio, config.imbalance_profile, config.seed)
    torch.manual_seed(config.seed)
    model = build_model(
        config.arch, data.input_shape, data.num_classes, config.depth, config.width, config.activation
    ).to(device)
    if config.classifier == "etf":
        fix_head_to_etf(model, config.seed)  # frozen: Adam/SGD skip parameters without a gradient
    optimizer = make_optimizer(model, config)
    return Setup(
        config=config,
        device=device,
        data=data,
        model=model,
        optimizer=optimizer,
        scheduler=make_scheduler(optimizer, config),
        detector=CollapseDetector(threshold=threshold, fn_ref=fn_ref, lead=config.lead),
        batch_order=torch.Generator().manual_seed(config.seed),
        class_counts=counts,
        minority=minority_classes(data.num_classes) if imbalanced(config) else None,
        epoch_metrics=(*schema.PER_EPOCH_METRICS, *optional_metric_names(config)),
    )


def start_from_phase1(setup: Setup, state: Mapping[str, Any], source_run: str) -> None:
    """The intervention: continue from a source run's end-of-Phase-1 state, final hidden layer scaled by α."""
    config = setup.config
    added = added_param_defaults()
    for name in SHARED_WITH_SOURCE_FIELDS:
        raw = state["config"].get(name, added.get(name))  # a field added later: the value older runs trained with
        theirs = format_value(parse_field(name, raw))  # typed, or an older checkpoint's string
        if theirs != config.as_params()[name]:
            raise ConfigError(
                f"init_from: run {source_run} has {name}={theirs}, this run has {name}={config.as_params()[name]}"
            )
    load_training_state(setup, state)  # α = 1 then continues the source run exactly
    setup.start_epoch = int(state["epoch"]) + 1
    train_x = setup.data.train_x
    fn_before = mean_feature_norm(setup.model, train_x)
    rescale_final_hidden(setup.model, config.rescale_alpha)
    setup.intervention = {
        schema.INTERVENTION_FN_BEFORE: fn_before,
        schema.INTERVENTION_FN_AFTER: mean_feature_norm(setup.model, train_x),
    }


def load_training_state(setup: Setup, state: Mapping[str, Any]) -> None:
    """Weights, optimiser (its rates and weight decay too, as switched by an unplug), the schedule the state was
    stepping (`schedule_for`) at its position, and the RNG states."""
    setup.model.load_state_dict(state["model"])
    setup.optimizer.load_state_dict(state["optimizer"])
    setup.scheduler = schedule_for(setup.optimizer, setup.config, int(state["epoch"]), setup.scheduler)
    setup.scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    setup.batch_order.set_state(state["batch_order_rng"])


def restore(setup: Setup, state: Mapping[str, Any], recorded: Mapping[int, Mapping[str, float]] | None = None) -> None:
    """Continue from a resume state: weights, optimiser, schedule, RNG, history; the detector replays the history.

    `recorded`: rows of later epochs already kept (they were logged before the process died); the loop
    retrains those epochs to rebuild the state, but keeps these rows instead of emitting new ones.
    """
    load_training_state(setup, state)
    setup.history = [dict(row) for row in state["history"]]
    for row in setup.history:
        update_detector(setup, row)
    setup.start_epoch = int(state["epoch"]) + 1
    setup.recorded = {int(epoch): dict(row) for epoch, row in (recorded or {}).items() if int(epoch) >= setup.start_epoch}


def update_detector(setup: Setup, row: Mapping[str, float]) -> list[str]:
    """Feed one epoch's row to the detector: NC1 and fn, and every training-set metric (`nc/*`, `layers/*`), any of
    which non-finite is divergence (the test set's are NaN by design when it lacks a class, so they are not given)."""
    watched = {key: value for key, value in row.items() if key.startswith((schema.NC_PREFIX, schema.LAYER_PREFIX))}
    metrics = {"nc1": row[schema.NC1], "fn": row[schema.FN], **watched}
    return setup.detector.update(int(row[schema.HISTORY_EPOCH]), int(row[schema.PHASE]), metrics, row[schema.TRAIN_LOSS])
