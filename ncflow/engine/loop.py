"""The epoch loop: Phase 1 (cross-entropy) → Phase 2 (MSE on one-hot targets), collapse measured every epoch.

Torch only — no MLflow: the loop hands every epoch's row, summary, checkpoint and resume state to a `Sink`
(`ncflow.engine.run_setup`, where the `Setup` it trains is built). Reads top to bottom: small named helpers, then
one loop. Each epoch: one pass of mini-batches over the in-memory training tensors, then one no-grad eval-mode
pass over the full training set that gives every collapse metric, with one host sync. After the last epoch,
`measure_end_of_run` reads the training set's features once more for what a run keeps at its end.

Han et al.'s regulariser (`reg`): in an epoch where it is active (`RunConfig.regularised`) each batch's loss is
CE (or MSE, as the phase says) − λ·R(the batch's penultimate features, labels, the head's W and b); `train/loss` stays
the CE or MSE alone. Every epoch of a regularised run logs `reg/value`, the mean R over its batches (after the unplug
measured on the detached features, not trained on), and `reg/active`. At the end of `unplug_epoch` the unplug
(`run_setup.unplug`) switches the weight decay, the learning-rate factor and the schedule, so the next epoch's `lr`
shows them.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ncflow.collapse.detector import view_metrics
from ncflow.collapse.metrics import (
    METRIC_NAMES,
    MINORITY_NAMES,
    NonFiniteFeaturesError,
    class_mean_angles,
    collapse_metrics,
)
from ncflow.collapse.regularisers import regulariser_value
from ncflow.engine.config import run_name
from ncflow.engine.data import batch_indices
from ncflow.engine.models import (
    predict_in_chunks,
    predict_layers_in_chunks,
)
from ncflow.engine.optional_metrics import class_nc1_csv, layer_collapse
from ncflow.engine.run_setup import Setup, Sink, unplug, update_detector
from ncshared import schema


def train_one_epoch(setup: Setup, phase: int, epoch: int | None = None) -> float:
    """One pass of shuffled mini-batches; returns the mean training loss (one host sync per epoch).

    With a regulariser (`reg`), `epoch` (1-based, global; None: an epoch before any unplug) says whether it is in
    the loss, and the epoch's mean R is left in `setup.reg_value` (the same single host sync)."""
    model, optimizer, data, config = setup.model, setup.optimizer, setup.data, setup.config
    model.train()
    loss_sum = torch.zeros((), device=setup.device)
    reg_sum = torch.zeros((), device=setup.device)
    regularised = config.reg != "none"
    active = regularised and (epoch is None or config.regularised(epoch))
    head = model.head
    batches = batch_indices(len(data.train_y), config.batch_size, setup.batch_order, device=setup.device)
    for index in batches:
        inputs, labels = data.train_x[index], data.train_y[index]
        logits, features = model(inputs)
        if phase == 1:
            loss = F.cross_entropy(logits, labels)
        else:
            loss = F.mse_loss(logits, F.one_hot(labels, data.num_classes).to(logits.dtype))
        objective = loss
        if active:
            value = regulariser_value(config.reg, features, labels, head.weight, head.bias)
            objective = loss - config.reg_lambda * value
            reg_sum += value.detach()
        elif regularised:  # unplugged: R is still measured, on the detached features
            with torch.no_grad():
                reg_sum += regulariser_value(config.reg, features.detach(), labels, head.weight, head.bias)
        optimizer.zero_grad(set_to_none=True)
        objective.backward()
        optimizer.step()
        loss_sum += loss.detach()
    if not regularised:
        return (loss_sum / len(batches)).item()
    loss_mean, setup.reg_value = (torch.stack([loss_sum, reg_sum]) / len(batches)).tolist()
    return loss_mean


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
    training set's `features` are given), or None when they are not all finite (non-finite features, or a class
    mean equal to the global one: its angles are 0/0, as after a divergence that zeroed every feature)."""
    if features is None:
        _, features = predict_in_chunks(setup.model, setup.data.train_x)
    if not torch.isfinite(features).all():
        return None
    angles = class_mean_angles(features, setup.data.train_y, setup.data.num_classes)
    return angles if all(math.isfinite(angle) for angle in angles) else None


@dataclass(frozen=True)
class EndOfRun:
    """What a run measures once after its last epoch, from one eval pass over the training set."""

    angles: list[float] | None  # the pairwise class-mean angles (None when they are not finite)
    class_nc1_table: bytes | None  # under class imbalance: class_nc1.csv (per-class NC1); else None


def measure_end_of_run(setup: Setup) -> EndOfRun:
    """The training set's final features, read once for the class-mean angles and the per-class NC1; after a
    divergence too (non-finite features give no angles and NaN per-class NC1, never an error)."""
    _, features = predict_in_chunks(setup.model, setup.data.train_x)
    table = None
    if setup.minority is not None:
        table = class_nc1_csv(features, setup.data.train_y, setup.class_counts, setup.minority)
    return EndOfRun(training_set_angles(setup, features), table)


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


def epoch_row(setup: Setup, epoch: int, train: Callable[[Setup, int, int], float] | None = None) -> dict[str, float]:
    """Train one epoch and measure it: the epoch's row (a kept row replaces it when the epoch is a replay).

    `train`: the epoch's training pass, `train_one_epoch` unless given (a pack trains its members together and
    hands each member's loss in)."""
    started = time.perf_counter()
    phase = setup.config.phase_of(epoch)
    lr = setup.optimizer.param_groups[0]["lr"]
    loss = (train or train_one_epoch)(setup, phase, epoch)
    return finish_row(setup, epoch, phase, lr, loss, started)


def finish_row(setup: Setup, epoch: int, phase: int, lr: float, loss: float, started: float) -> dict[str, float]:
    """The rest of an epoch after its training pass: the schedule step (and the unplug after `unplug_epoch`) and the
    measurement, as the epoch's row."""
    config = setup.config
    setup.scheduler.step()
    if config.unplug_epoch and epoch == config.unplug_epoch:
        unplug(setup)
    measured = measure_epoch(setup)
    row = {schema.TRAIN_LOSS: loss, **measured, schema.LR: lr, schema.PHASE: float(phase)}
    if config.reg != "none":
        row[schema.REG_VALUE] = setup.reg_value
        row[schema.REG_ACTIVE] = float(config.regularised(epoch))
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
