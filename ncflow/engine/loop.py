"""The training engine: Phase 1 (cross-entropy) → Phase 2 (MSE on one-hot targets), collapse measured every epoch.

Torch only — no MLflow: the loop hands every epoch's row, summary, checkpoint and resume state to a `Sink`
(the local run record in `ncflow.tracked.train`, or `NullSink` for benchmarks and machines without MLflow).
Reads top to bottom: set-up, small named helpers, one loop. Each epoch: one pass of mini-batches over the
in-memory training tensors, then one no-grad eval-mode pass over the full training set that gives every
collapse metric, with one host sync.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ncflow.collapse.detector import CollapseDetector, resolve_threshold, view_metrics
from ncflow.collapse.metrics import (
    METRIC_NAMES,
    MINORITY_NAMES,
    NonFiniteFeaturesError,
    class_mean_angles,
    collapse_metrics,
)
from ncflow.engine.config import ConfigError, RunConfig, run_name
from ncflow.engine.data import DataUnavailable, InMemoryData, batch_indices, load_dataset
from ncflow.engine.imbalance import minority_classes, subsample
from ncflow.engine.models import (
    build_model,
    fix_head_to_etf,
    predict_in_chunks,
    predict_layers_in_chunks,
    rescale_final_hidden,
)
from ncflow.engine.optional_metrics import imbalanced, layer_collapse, optional_metric_names
from ncshared import schema

# Fields of a Phase-1 checkpoint's configuration that an intervention run must share with it: the model, and the
# training settings whose state (optimiser moments, schedule position) the checkpoint carries into Phase 2.
SHARED_WITH_SOURCE_FIELDS = (
    "dataset", "arch", "depth", "width", "activation", "phase1_epochs", "phase2_epochs", "optimizer", "lr",
    "momentum", "nesterov", "weight_decay", "schedule", "milestones", "lr_gamma", "batch_size",
)


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


def mean_feature_norm(model: torch.nn.Module, inputs: torch.Tensor) -> float:
    _, features = predict_in_chunks(model, inputs)
    return features.double().norm(dim=1).mean().item()


def prepare(config: RunConfig, fn_ref: float | None = None) -> Setup:
    """Validate against the world (data, device) and build the training state at epoch 1."""
    threshold = resolve_threshold(config.nc1_threshold, config.arch, config.depth, config.activation)
    device = resolve_device(config.device)
    # Weight decay drives weights and gradients into float32's denormal range late in training, where CPU
    # arithmetic takes a slow path: 4.9x slower epochs at epoch 200 of the default run (benchmarks/bench_denormal.py).
    # Flushing them to zero keeps late epochs as fast as early ones. The flag is per thread and pool threads copy it
    # when created, so it is set here, before the first parallel op of a training process.
    torch.set_flush_denormal(True)
    torch.set_float32_matmul_precision(config.matmul_precision)  # process-wide: a pack's members share it
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
    source = state["config"]
    for name in SHARED_WITH_SOURCE_FIELDS:
        if source[name] != config.as_params()[name]:
            raise ConfigError(
                f"init_from: run {source_run} has {name}={source[name]}, this run has {name}={config.as_params()[name]}"
            )
    setup.model.load_state_dict(state["model"])
    setup.optimizer.load_state_dict(state["optimizer"])
    setup.scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])  # α = 1 then continues the source run exactly
    setup.batch_order.set_state(state["batch_order_rng"])
    setup.start_epoch = int(state["epoch"]) + 1
    train_x = setup.data.train_x
    fn_before = mean_feature_norm(setup.model, train_x)
    rescale_final_hidden(setup.model, config.rescale_alpha)
    setup.intervention = {
        schema.INTERVENTION_FN_BEFORE: fn_before,
        schema.INTERVENTION_FN_AFTER: mean_feature_norm(setup.model, train_x),
    }


def restore(setup: Setup, state: Mapping[str, Any], recorded: Mapping[int, Mapping[str, float]] | None = None) -> None:
    """Continue from a resume state: weights, optimiser, schedule, RNG, history; the detector replays the history.

    `recorded`: rows of later epochs already kept (they were logged before the process died); the loop
    retrains those epochs to rebuild the state, but keeps these rows instead of emitting new ones.
    """
    setup.model.load_state_dict(state["model"])
    setup.optimizer.load_state_dict(state["optimizer"])
    setup.scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    setup.batch_order.set_state(state["batch_order_rng"])
    setup.history = [dict(row) for row in state["history"]]
    for row in setup.history:
        update_detector(setup, row)
    setup.start_epoch = int(state["epoch"]) + 1
    setup.recorded = {int(epoch): dict(row) for epoch, row in (recorded or {}).items() if int(epoch) >= setup.start_epoch}


def update_detector(setup: Setup, row: Mapping[str, float]) -> list[str]:
    metrics = {"nc1": row[schema.NC1], "fn": row[schema.FN]}
    return setup.detector.update(int(row[schema.HISTORY_EPOCH]), int(row[schema.PHASE]), metrics, row[schema.TRAIN_LOSS])


def train_one_epoch(setup: Setup, phase: int) -> float:
    """One pass of shuffled mini-batches; returns the mean training loss (one host sync per epoch)."""
    model, optimizer, data = setup.model, setup.optimizer, setup.data
    model.train()
    loss_sum = torch.zeros((), device=setup.device)
    batches = batch_indices(len(data.train_y), setup.config.batch_size, setup.batch_order, device=setup.device)
    for index in batches:
        inputs, labels = data.train_x[index], data.train_y[index]
        logits, _ = model(inputs)
        if phase == 1:
            loss = F.cross_entropy(logits, labels)
        else:
            loss = F.mse_loss(logits, F.one_hot(labels, data.num_classes).to(logits.dtype))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach()
    return (loss_sum / len(batches)).item()


def measure_epoch(setup: Setup) -> dict[str, float]:
    """One eval-mode pass over the full training set (collapse metrics, train accuracy) and the test set."""
    data, model = setup.data, setup.model
    if setup.config.layerwise:  # the same pass, keeping every layer's output
        logits, features, layers = predict_layers_in_chunks(model, data.train_x)
    else:
        (logits, features), layers = predict_in_chunks(model, data.train_x), []
    head = model.head
    try:
        metrics = collapse_metrics(features, data.train_y, head.weight.detach(), head.bias.detach(), data.num_classes,
                                   minority_classes=setup.minority)
    except NonFiniteFeaturesError:  # the weights blew up: record NaNs, and the detector calls it divergence
        metrics = dict.fromkeys((*METRIC_NAMES, *(MINORITY_NAMES if setup.minority else ())), math.nan)
    train_acc = (logits.argmax(dim=1) == data.train_y).double().mean()
    test_logits, test_features = predict_in_chunks(model, data.test_x)
    test_acc = (test_logits.argmax(dim=1) == data.test_y).double().mean()
    accuracies = torch.stack([train_acc, test_acc]).tolist()  # one sync for both
    nc = {schema.NC_PREFIX + name: value for name, value in metrics.items()}
    by_layer = layer_collapse(layers, data.train_y, data.num_classes, nc) if layers else {}
    return {schema.TRAIN_ACC: accuracies[0], schema.TEST_ACC: accuracies[1], **nc,
            **test_collapse(test_features, data.test_y, head, data.num_classes), **by_layer}


def training_set_angles(setup: Setup, features: torch.Tensor | None = None) -> list[float] | None:
    """The pairwise angles between the training set's centred class means now (one extra eval pass unless the
    training set's `features` are given), or None when the features are not finite."""
    if features is None:
        _, features = predict_in_chunks(setup.model, setup.data.train_x)
    if not torch.isfinite(features).all():
        return None
    return class_mean_angles(features, setup.data.train_y, setup.data.num_classes)


def test_collapse(features: torch.Tensor, labels: torch.Tensor, head: torch.nn.Linear, num_classes: int) -> dict[str, float]:
    """`test/nc1`, `test/nc2`, `test/fn`, `test/ncc`: the collapse metrics of the test features with the test labels
    (NaN when the test set lacks a class or the features are not finite)."""
    try:
        found = collapse_metrics(features, labels, head.weight.detach(), head.bias.detach(), num_classes)
    except ValueError:  # NonFiniteFeaturesError, or a class with no test sample
        found = dict.fromkeys(schema.TEST_COLLAPSE_NAMES, math.nan)
    return {f"test/{name}": found[name] for name in schema.TEST_COLLAPSE_NAMES}


def cpu_copy(value: Any) -> Any:
    """A copy with every tensor on the CPU, so a GPU run's checkpoint loads anywhere and frees no GPU memory."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {key: cpu_copy(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(cpu_copy(item) for item in value)
    return copy.deepcopy(value)


def checkpoint_state(setup: Setup, epoch: int) -> dict[str, Any]:
    """A copy of everything needed to continue after `epoch`: weights, optimiser, schedule, RNG, history.

    Copied, not referenced, so the state of the last finished epoch survives a crash in the next one
    (a few MB per epoch for the paper's models: negligible next to an epoch).
    """
    return {
        "model": cpu_copy(setup.model.state_dict()),
        "optimizer": cpu_copy(setup.optimizer.state_dict()),
        "scheduler": copy.deepcopy(setup.scheduler.state_dict()),
        "epoch": epoch,
        "config": setup.config.as_params(),
        "torch_rng": torch.get_rng_state(),
        "batch_order_rng": setup.batch_order.get_state(),
        "history": list(setup.history),
    }


def should_stop(setup: Setup, epoch: int) -> bool:
    detector, config = setup.detector, setup.config
    if detector.diverged:
        return True
    if config.stop_after_collapse != "off" and detector.t_nc is not None:
        return epoch >= detector.t_nc + int(config.stop_after_collapse)
    return False


def epoch_row(setup: Setup, epoch: int, train: Callable[[Setup, int], float] | None = None) -> dict[str, float]:
    """Train one epoch and measure it: the epoch's row (a kept row replaces it when the epoch is a replay).

    `train`: the epoch's training pass, `train_one_epoch` unless given (a pack trains its members together and
    hands each member's loss in)."""
    started = time.perf_counter()
    phase = setup.config.phase_of(epoch)
    lr = setup.optimizer.param_groups[0]["lr"]
    loss = (train or train_one_epoch)(setup, phase)
    return finish_row(setup, epoch, phase, lr, loss, started)


def finish_row(setup: Setup, epoch: int, phase: int, lr: float, loss: float, started: float) -> dict[str, float]:
    """The rest of an epoch after its training pass: the schedule step and the measurement, as the epoch's row."""
    setup.scheduler.step()
    measured = measure_epoch(setup)
    row = {schema.TRAIN_LOSS: loss, **measured, schema.LR: lr, schema.PHASE: float(phase)}
    row[schema.EPOCH_TIME] = time.perf_counter() - started
    return {schema.HISTORY_EPOCH: float(epoch), **row}


def already_stopped(setup: Setup) -> bool:
    """Resumed after the run had already stopped (collapse + stop_after_collapse, or divergence)."""
    return bool(setup.history) and should_stop(setup, setup.start_epoch - 1)


def record_epoch(setup: Setup, sink: Sink, epoch: int, row: dict[str, float]) -> bool:
    """Detect and emit one epoch's row; checkpoints at the phase switch and at collapse. True when the run stops.

    The resume state goes to the sink after every epoch; the sink decides how often to keep it.
    """
    config, detector = setup.config, setup.detector
    kept = setup.recorded.pop(epoch, None)
    if kept is not None:  # a replayed epoch: its row is already logged
        # (a row logged before a metric existed keeps the recomputed value of that metric)
        row = {schema.HISTORY_EPOCH: float(epoch), **{k: kept.get(k, row[k]) for k in setup.epoch_metrics}}
    events = update_detector(setup, row)
    setup.history.append(row)
    if kept is None:
        views = view_metrics(row[schema.NC1], row[schema.FN], detector.threshold)
        sink.epoch(epoch, {**{k: row[k] for k in setup.epoch_metrics}, **views})
    state = checkpoint_state(setup, epoch)
    sink.state(state)
    if events:  # T_NC, fn*, T_cross are logged as soon as they are known, not only at the end
        sink.summary(detector.summary_metrics())
    if "collapsed" in events:
        sink.checkpoint(schema.CHECKPOINT_COLLAPSE, state)
        setup.angles_at_collapse = training_set_angles(setup)
    if config.protocol == "two-phase" and epoch == config.phase1_epochs:
        sink.checkpoint(schema.CHECKPOINT_PHASE1_END, state)
    return should_stop(setup, epoch)


def progress_fields(row: Mapping[str, float]) -> dict[str, Any]:
    return {"phase": int(row[schema.PHASE]), "loss": f"{row[schema.TRAIN_LOSS]:.4f}",
            "nc1": f"{row[schema.NC1]:.4f}", "fn": f"{row[schema.FN]:.3f}"}


def run_epochs(setup: Setup, sink: Sink, progress: bool) -> None:
    """The loop: train, measure, detect, emit (`record_epoch`), until the last epoch or a stop."""
    if already_stopped(setup):
        return
    bar = tqdm(range(setup.start_epoch, setup.config.total_epochs + 1), desc=run_name(setup.config),
               disable=not progress, dynamic_ncols=True)
    try:
        for epoch in bar:
            row = epoch_row(setup, epoch)
            stop = record_epoch(setup, sink, epoch, row)
            bar.set_postfix(**progress_fields(setup.history[-1]))
            if stop:
                break
    finally:
        bar.close()
