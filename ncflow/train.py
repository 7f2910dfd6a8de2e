"""Train one condition: Phase 1 (cross-entropy) → Phase 2 (MSE on one-hot targets), collapse measured every epoch.

Reads top to bottom: set-up (data, model, optimiser, detector, MLflow run), small named helpers, one loop.
Each epoch: one pass of mini-batches over the in-memory training tensors, then one no-grad eval-mode pass over
the full training set that gives every collapse metric, then one asynchronous MLflow `log_batch`.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from tqdm.auto import tqdm

from ncflow import tracking
from ncflow.collapse import CollapseDetector, resolve_threshold
from ncflow.config import ConfigError, RunConfig
from ncflow.data import InMemoryData, batch_indices, load_dataset
from ncflow.metrics import METRIC_NAMES, NonFiniteFeaturesError, collapse_metrics
from ncflow.models import build_model, predict_in_chunks, rescale_final_hidden

# Fields of a Phase-1 checkpoint's configuration that an intervention run must share with it: the model, and the
# training settings whose state (optimiser moments, schedule position) the checkpoint carries into Phase 2.
SHARED_WITH_SOURCE_FIELDS = (
    "dataset", "arch", "depth", "width", "activation", "phase1_epochs", "phase2_epochs", "optimizer", "lr",
    "momentum", "nesterov", "weight_decay", "schedule", "milestones", "lr_gamma", "batch_size",
)


@dataclass
class TrainResult:
    """What a finished (or stopped) run reports back to its caller, e.g. a sweep trial."""

    run_id: str
    status: str  # collapsed | not_collapsed | diverged
    t_nc: int | None
    fn_star: float | None
    summary: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)


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


def resolve_fn_ref(client: MlflowClient, config: RunConfig) -> float | None:
    if config.fn_ref == "none":
        return None
    if config.fn_ref == "auto":
        return tracking.reference_fn_star(client, config)
    return float(config.fn_ref)


def start_from_phase1_checkpoint(setup: Setup, client: MlflowClient) -> None:
    """The intervention: load `init_from`'s end-of-Phase-1 state, rescale by α, continue with Phase 2."""
    config = setup.config
    try:
        state = tracking.load_checkpoint(client, config.init_from, "phase1_end")
    except MlflowException:
        raise ConfigError(
            f"init_from: run {config.init_from} has no checkpoints/phase1_end.pt (train it with protocol two-phase)"
        ) from None
    source = state["config"]
    for name in SHARED_WITH_SOURCE_FIELDS:
        if source[name] != config.as_params()[name]:
            raise ConfigError(
                f"init_from: run {config.init_from} has {name}={source[name]}, this run has {name}={config.as_params()[name]}"
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
        "intervention/fn_before": fn_before,
        "intervention/fn_after": mean_feature_norm(setup.model, train_x),
    }


def prepare(config: RunConfig, client: MlflowClient) -> Setup:
    """Validate against the world (data, init_from, device) and build the training state."""
    if config.init_from != "none":
        tracking.require_run(client, config.init_from, "init_from")
    threshold = resolve_threshold(config.nc1_threshold, config.arch, config.depth, config.activation)
    device = resolve_device(config.device)
    # Weight decay drives weights and gradients into float32's denormal range late in training, where CPU
    # arithmetic takes a slow path: 4.9x slower epochs at epoch 200 of the default run (benchmarks/bench_denormal.py).
    # Flushing them to zero keeps late epochs as fast as early ones. The flag is per thread and pool threads copy it
    # when created, so it is set here, before the first parallel op of a training process.
    torch.set_flush_denormal(True)
    data = load_dataset(
        config.dataset,
        config.data_dir,
        synthetic_classes=config.synthetic_classes,
        synthetic_shape=config.synthetic_dims,
        synthetic_per_class=config.synthetic_per_class,
    ).to(device)
    torch.manual_seed(config.seed)
    model = build_model(
        config.arch, data.input_shape, data.num_classes, config.depth, config.width, config.activation
    ).to(device)
    optimizer = make_optimizer(model, config)
    scheduler = make_scheduler(optimizer, config)
    detector = CollapseDetector(threshold=threshold, fn_ref=resolve_fn_ref(client, config), lead=config.lead)
    setup = Setup(
        config=config,
        device=device,
        data=data,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        detector=detector,
        batch_order=torch.Generator().manual_seed(config.seed),
    )
    if config.init_from != "none":
        start_from_phase1_checkpoint(setup, client)
    return setup


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
    logits, features = predict_in_chunks(model, data.train_x)
    head = model.head
    try:
        metrics = collapse_metrics(features, data.train_y, head.weight.detach(), head.bias.detach(), data.num_classes)
    except NonFiniteFeaturesError:  # the weights blew up: record NaNs, and the detector calls it divergence
        metrics = dict.fromkeys(METRIC_NAMES, math.nan)
    train_acc = (logits.argmax(dim=1) == data.train_y).double().mean()
    test_logits, _ = predict_in_chunks(model, data.test_x)
    test_acc = (test_logits.argmax(dim=1) == data.test_y).double().mean()
    accuracies = torch.stack([train_acc, test_acc]).tolist()  # one sync for both
    return {"train/acc": accuracies[0], "test/acc": accuracies[1], **{f"nc/{k}": v for k, v in metrics.items()}}


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


def run_epochs(setup: Setup, client: MlflowClient, run_id: str, progress: bool) -> None:
    """The loop: train, measure, detect, log; checkpoints at the phase switch, at collapse and periodically."""
    config, detector = setup.config, setup.detector
    logger = tracking.EpochLogger(client, run_id)
    bar = tqdm(
        range(setup.start_epoch, config.total_epochs + 1),
        desc=tracking.run_name(config),
        disable=not progress,
        dynamic_ncols=True,
    )
    finished: dict[str, Any] | None = None  # the state after the last finished epoch
    if setup.history and should_stop(setup, setup.start_epoch - 1):  # resumed after the run had already stopped
        bar = tqdm(range(0), disable=True)
    try:
        for epoch in bar:
            started = time.perf_counter()
            phase = config.phase_of(epoch)
            lr = setup.optimizer.param_groups[0]["lr"]
            loss = train_one_epoch(setup, phase)
            setup.scheduler.step()
            measured = measure_epoch(setup)
            row = {"train/loss": loss, **measured, "lr": lr, "phase": float(phase)}
            row["time/epoch_s"] = time.perf_counter() - started
            events = detector.update(epoch, phase, {"nc1": row["nc/nc1"], "fn": row["nc/fn"]}, loss)
            setup.history.append({"epoch": float(epoch), **row})
            finished = checkpoint_state(setup, epoch)
            logger.log(epoch, row)
            bar.set_postfix(phase=phase, loss=f"{loss:.4f}", nc1=f"{row['nc/nc1']:.4f}", fn=f"{row['nc/fn']:.3f}")
            if events:  # T_NC, fn*, T_cross are logged as soon as they are known, not only at the end
                logger.log(0, detector.summary_metrics())
            if "collapsed" in events:
                tracking.log_checkpoint(client, run_id, "collapse", finished)
            if config.protocol == "two-phase" and epoch == config.phase1_epochs:
                tracking.log_checkpoint(client, run_id, "phase1_end", finished)
            if epoch % config.checkpoint_every == 0:
                tracking.log_checkpoint(client, run_id, "last", finished)
            if should_stop(setup, epoch):
                break
    finally:
        bar.close()
        try:
            if finished is not None:  # at the end, and after a crash or Ctrl-C: resumable from here
                tracking.log_checkpoint(client, run_id, "last", finished)
        finally:
            logger.close()


def log_results(setup: Setup, client: MlflowClient, run_id: str) -> dict[str, float]:
    """Summary metrics, status tags, history.csv, config.json and the dynamics figure."""
    detector = setup.detector
    summary = detector.summary_metrics()
    tracking.log_summary(client, run_id, summary)
    tags = {tracking.TAG_STATUS: detector.status}
    if detector.diverged and detector.divergence_reason:
        tags[tracking.TAG_DIVERGENCE_REASON] = detector.divergence_reason
    tracking.set_tags(client, run_id, tags)
    tracking.log_history(client, run_id, setup.history)
    tracking.log_json(client, run_id, setup.config.as_params(), tracking.CONFIG_FILE)
    tracking.log_dynamics_figure(client, run_id, setup.history, summary, setup.config)
    return summary


def restore_from_checkpoint(setup: Setup, state: Mapping[str, Any]) -> None:
    """Continue a run from its `last.pt`: weights, optimiser, schedule, RNG, history, detector (replayed)."""
    setup.model.load_state_dict(state["model"])
    setup.optimizer.load_state_dict(state["optimizer"])
    setup.scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    setup.batch_order.set_state(state["batch_order_rng"])
    setup.history = [dict(row) for row in state["history"]]
    for row in setup.history:
        metrics = {"nc1": row["nc/nc1"], "fn": row["nc/fn"]}
        setup.detector.update(int(row["epoch"]), int(row["phase"]), metrics, row["train/loss"])
    setup.start_epoch = int(state["epoch"]) + 1


def resume(run_id: str, *, tracking_uri: str = "", progress: bool = True) -> TrainResult:
    """Continue a FAILED or KILLED run from its last checkpoint, in the same MLflow run.

    Steps logged after that checkpoint and before the crash are logged again (MLflow keeps both values);
    `history.csv` holds each epoch once.
    """
    client = tracking.client_for(RunConfig(tracking_uri=tracking_uri))
    tracking.require_run(client, run_id, "resume")
    config = tracking.config_of_run(client, run_id)
    state = tracking.load_checkpoint(client, run_id, "last")
    setup = prepare(config.replace(init_from="none", rescale_alpha=1.0), client)
    setup.config = config
    # The reference the run started with, not one re-resolved against a store that has changed since.
    setup.detector.fn_ref = client.get_run(run_id).data.metrics.get("collapse/fn_ref")
    restore_from_checkpoint(setup, state)
    tracking.reopen_run(client, run_id)
    return run_tracked(setup, client, run_id, progress)


def run_tracked(setup: Setup, client: MlflowClient, run_id: str, progress: bool) -> TrainResult:
    """The loop inside an open run; any exception (Ctrl-C too) leaves the run FAILED/KILLED with its reason."""
    try:
        tracking.log_summary(client, run_id, setup.intervention)
        run_epochs(setup, client, run_id, progress)
        summary = log_results(setup, client, run_id)
    except BaseException as error:  # KeyboardInterrupt and SystemExit too: the run must not stay RUNNING
        reason = "interrupted" if isinstance(error, KeyboardInterrupt) else f"{type(error).__name__}: {error}"
        tracking.set_tags(client, run_id, {tracking.TAG_STATUS: "failed", tracking.TAG_FAIL_REASON: reason[:5000]})
        tracking.finish_run(client, run_id, "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED")
        raise
    tracking.finish_run(client, run_id, "FINISHED")
    detector = setup.detector
    return TrainResult(
        run_id=run_id,
        status=detector.status,
        t_nc=detector.t_nc,
        fn_star=detector.fn_star,
        summary=summary,
        history=setup.history,
    )


def train(
    config: RunConfig,
    *,
    sweep: str | None = None,
    parent_run_id: str | None = None,
    extra_tags: Mapping[str, str] | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train one condition and track it in MLflow. Bad input raises ConfigError before a run exists."""
    client = tracking.client_for(config)
    config = tracking.with_adopted_experiment(client, config)
    setup = prepare(config, client)
    client, run_id = tracking.open_run(config, sweep=sweep, parent_run_id=parent_run_id, extra_tags=extra_tags)
    return run_tracked(setup, client, run_id, progress)
