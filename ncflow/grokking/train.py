"""A grokking run: the transformer trained in optimiser steps, measured every `eval_every` steps by a CollapseMonitor.

The task's tensors live on the training device; each step draws the next `batch` rows of a per-epoch seeded
permutation (full batch when batch_size is 0 or ≥ n_train). The loss is CE − λ·R with R the configured regulariser of
the batch's penultimate features (ncflow.collapse.regularisers), until `unplug_step`; then the regulariser is
removed and, when set, the weight decay, a learning-rate factor and a cosine schedule over the remaining steps are
switched in — each logged (`reg/active`, `lr`, and the params). Every evaluation logs, at step = the optimiser step
(the run is tagged `ncflow.step_unit = step`), what the monitor measures on the training set and on the validation
set (as `test/*`), the regulariser's value, and the learning rate; at the end the grokking markers
(ncshared.grokking_markers) join the summary metrics. A run cut off mid-way (a crash, a signal, the machine gone)
continues from its last evaluation when the same settings are trained again into the same store and experiment
(`train_grokking`, `record_folder`).
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import mlflow
import torch
import torch.nn.functional as F
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from ncflow.collapse.regularisers import regulariser_value
from ncflow.grokking.config import GrokConfig
from ncflow.grokking.task import SYMBOLS, ModularTask, modular_task, vocabulary_size
from ncflow.grokking.transformer import GrokTransformer
from ncflow.library.monitor import CollapseMonitor, monitor_params
from ncflow.library.monitor_run import condition_tag
from ncflow.record.local_record import record_root
from ncflow.record.record_lock import WRITE, RecordLock
from ncflow.record.retry import is_database_locked, retried
from ncshared import schema
from ncshared.grokking_markers import grokking_markers

EVAL_BATCH = 4096
RESUME_FILE = "state.pt"  # in `record_folder`: a run's resume state while it trains
REG_ACTIVE, REG_VALUE, LR = schema.REG_ACTIVE, schema.REG_VALUE, schema.LR


def arch_name(config: GrokConfig) -> str:
    return f"transformer-L{config.layers}-d{config.d_model}"


def dataset_name(config: GrokConfig) -> str:
    return f"{config.operation}-mod{config.p}-f{config.train_fraction:g}"


def build(config: GrokConfig, device: torch.device) -> tuple[ModularTask, GrokTransformer]:
    torch.manual_seed(config.seed)
    task = modular_task(config.p, config.operation, config.train_fraction, config.seed)
    model = GrokTransformer(vocabulary_size(config.p), config.p, config.layers, config.d_model, config.heads,
                            config.mlp_width).to(device)
    return task, model


def batches(x: torch.Tensor, y: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The evaluation loader: the set in order, in EVAL_BATCH-row batches."""
    return list(zip(x.split(EVAL_BATCH), y.split(EVAL_BATCH)))


class StepSchedule:
    """The learning rate at each step: linear warm-up, then constant; after an unplug with a cosine schedule, cosine
    decay from the (factored) rate to 0 over the remaining steps."""

    def __init__(self, config: GrokConfig) -> None:
        self.config = config

    def __call__(self, step: int) -> float:
        config = self.config
        rate = config.lr * min(1.0, step / config.warmup_steps) if config.warmup_steps else config.lr
        if config.unplug_step and step > config.unplug_step:
            rate = config.lr * config.unplug_lr_factor
            if config.unplug_schedule == "cosine":
                done = (step - config.unplug_step) / (config.steps - config.unplug_step)
                rate *= 0.5 * (1.0 + math.cos(math.pi * done))
        return rate


def monitor_settings(config: GrokConfig) -> dict[str, Any]:
    """The CollapseMonitor's settings for a run of `config` (all but the model and the loaders)."""
    return dict(classifier="unembed", arch=arch_name(config), dataset=dataset_name(config), seed=config.seed,
                params={k: v for k, v in config.as_params().items() if k not in ("seed", "nc1_threshold")},
                nc1_threshold=config.nc1_threshold, step_unit="step", passes=2,
                run_name=f"grok-{SYMBOLS[config.operation]}-p{config.p}-f{config.train_fraction:g}-{config.reg}"
                         f"{'' if config.reg == 'none' else f'{config.reg_lambda:g}'}"
                         f"{f'-u{config.unplug_step}' if config.unplug_step else ''}-s{config.seed}")


def condition(config: GrokConfig) -> str:
    """The `ncflow.condition` tag a run of `config` gets (every setting but the seed), known before it trains: how a
    sweep finds a grokking point's finished run."""
    settings = monitor_settings(config)
    return condition_tag(monitor_params(config.p, settings["classifier"], settings["arch"], settings["dataset"],
                                        config.seed, settings["params"], config.nc1_threshold, None,
                                        schema.DEFAULT_LEAD, settings["passes"], settings["step_unit"]))


def record_folder(config: GrokConfig, tracking_uri: str, experiment: str) -> Path:
    """Where a run of `config` in this store and experiment keeps its resume state (`state.pt`) and its writer's lock
    while it trains: `grokking/<condition>-s<seed>-<store and experiment hash>/` under the run records' folder
    (NCFLOW_RECORD_DIR, else .ncflow/runs). The store and experiment are part of it, so a run is only ever continued
    where it was logged (`ncflow grok` and `ncflow sweep grokking` of the same settings are two runs)."""
    where = hashlib.sha256(f"{tracking_uri}\n{experiment}".encode()).hexdigest()[:8]
    return record_root() / "grokking" / f"{condition(config)}-s{config.seed}-{where}"


def saved_state(folder: Path, config: GrokConfig, client: MlflowClient) -> dict[str, Any] | None:
    """The resume state of an interrupted run of `config`, or None: none kept, or its run is finished or deleted
    (then the file is stale and removed). A store that cannot answer now raises: the state is kept for a retry."""
    path = folder / RESUME_FILE
    if not path.exists():
        return None
    state = torch.load(path, map_location="cpu", weights_only=False)
    try:
        run = retried(lambda: client.get_run(state["run_id"]), when=is_database_locked, delays=(1.0, 2.0, 4.0),
                      attempts=4)
        gone = run.info.status == "FINISHED" or run.info.lifecycle_stage == "deleted"
    except MlflowException as error:
        if error.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        gone = True
    if gone or state.get("config") != config.as_params():
        path.unlink(missing_ok=True)
        return None
    return state


def keep_state(folder: Path, state: dict[str, Any]) -> None:
    """Write the resume state atomically (a crash mid-write leaves the previous one), once MLflow holds every row it
    says was logged (the monitor sends them in the background)."""
    mlflow.flush_async_logging()
    path = folder / RESUME_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    torch.save(state, partial)
    os.replace(partial, path)


def train_grokking(config: GrokConfig, tracking_uri: str | None = None, experiment: str = "grokking",
                   device: str = "cpu", progress: Callable[[int, dict[str, float]], None] | None = None,
                   tags: Mapping[str, str] | None = None) -> CollapseMonitor:
    """Train one grokking run into MLflow; the finished monitor (run id, detector, history). `tags`: more tags for
    the run (a sweep's trial and parent run).

    Resumable: after each evaluation the weights, optimiser, batch order and position, the run id and the logged
    rows are kept (`record_folder`); a run of the same settings that finds them continues that MLflow run from that
    step, as the uninterrupted run would have (same batches, same numbers), and removes them when it finishes."""
    torch_device = torch.device(device)
    task, model = build(config, torch_device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, betas=(config.beta1, config.beta2),
                                  weight_decay=config.weight_decay)
    monitor = CollapseMonitor(
        model, config.p, batches(task.train_x.to(torch_device), task.train_y.to(torch_device)),
        batches(task.val_x.to(torch_device), task.val_y.to(torch_device)),
        tracking_uri=tracking_uri, experiment=experiment, tags=tags, **monitor_settings(config))
    folder = record_folder(config, monitor.run.tracking_uri, experiment)
    lock = RecordLock(folder)
    lock.take(WRITE)  # one writer per run: a second process training these settings gets RecordTaken at once
    try:
        train_steps(config, task, model, optimizer, monitor, folder, device, progress)
    finally:
        lock.let_go()
    return monitor


def train_steps(config: GrokConfig, task: ModularTask, model: GrokTransformer, optimizer: torch.optim.Optimizer,
                monitor: CollapseMonitor, folder: Path, device: str,
                progress: Callable[[int, dict[str, float]], None] | None = None) -> None:
    """The step loop, from the start or from the resume state kept in `folder`; the monitor finished at its end."""
    torch_device = torch.device(device)
    train_x, train_y = task.train_x.to(torch_device), task.train_y.to(torch_device)
    batch = len(train_y) if config.batch_size == 0 else min(config.batch_size, len(train_y))
    schedule = StepSchedule(config)
    generator = torch.Generator(device=torch_device).manual_seed(config.seed)
    order, cursor, first = torch.randperm(len(train_y), generator=generator, device=torch_device), 0, 1
    saved = saved_state(folder, config, monitor.run.client)
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        generator.set_state(saved["generator"])
        order, cursor, first = saved["order"].to(torch_device), saved["cursor"], saved["step"] + 1
        monitor.resume(saved["run_id"], saved["history"], saved["angles_at_collapse"])
    loss_sum = torch.zeros((), device=torch_device)
    reg_sum = torch.zeros((), device=torch_device)
    since = regularised = 0
    with monitor:
        for step in range(first, config.steps + 1):
            if cursor + batch > len(train_y):
                order, cursor = torch.randperm(len(train_y), generator=generator, device=torch_device), 0
            index = order[cursor:cursor + batch]
            cursor += batch
            active = config.reg != "none" and (not config.unplug_step or step <= config.unplug_step)
            if step == config.unplug_step + 1 and config.unplug_step and config.unplug_weight_decay >= 0:
                for group in optimizer.param_groups:
                    group["weight_decay"] = config.unplug_weight_decay
            for group in optimizer.param_groups:
                group["lr"] = schedule(step)
            model.train()
            features = model.features(train_x[index])
            logits = model.unembed(features)
            loss = F.cross_entropy(logits, train_y[index])
            if active:
                value = regulariser_value(config.reg, features, train_y[index], model.unembed.weight,
                                          model.unembed.bias)
                objective = loss - config.reg_lambda * value
                reg_sum += value.detach()
                regularised += 1
            else:
                objective = loss
            optimizer.zero_grad(set_to_none=True)
            objective.backward()
            optimizer.step()
            loss_sum += loss.detach()
            since += 1
            if step % config.eval_every == 0 or step == config.steps:
                extra = {LR: optimizer.param_groups[0]["lr"], REG_ACTIVE: float(active)}
                if regularised:  # the mean over the window's steps that were regularised
                    extra[REG_VALUE] = float(reg_sum) / regularised
                row = monitor.measure(step, train_loss=float(loss_sum) / since, extra=extra)
                loss_sum.zero_()
                reg_sum.zero_()
                since = regularised = 0
                keep_state(folder, {"config": config.as_params(), "run_id": monitor.run_id, "step": step,
                                    "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                    "generator": generator.get_state(), "order": order.cpu(), "cursor": cursor,
                                    "history": monitor.history, "angles_at_collapse": monitor.angles_at_collapse})
                if progress:
                    progress(step, row)
        monitor.run.log_summary(grokking_markers(monitor.history), int(time.time() * 1000))
    (folder / RESUME_FILE).unlink(missing_ok=True)
