"""A grokking run: the transformer trained in optimiser steps, measured every `eval_every` steps by a CollapseMonitor.

The task's tensors live on the training device; each step draws the next `batch` rows of a per-epoch seeded
permutation (full batch when batch_size is 0 or ≥ n_train). The loss is CE − λ·R with R the configured regulariser of
the batch's penultimate features (ncflow.collapse.regularisers), until `unplug_step`; then the regulariser is
removed and, when set, the weight decay, a learning-rate factor and a cosine schedule over the remaining steps are
switched in — each logged (`reg/active`, `lr`, and the params). Every evaluation logs, at step = the optimiser step
(the run is tagged `ncflow.step_unit = step`), what the monitor measures on the training set and on the validation
set (as `test/*`), the regulariser's value, and the learning rate; at the end the grokking markers
(ncflow.grokking.markers) join the summary metrics.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ncflow.collapse.regularisers import regulariser_value
from ncflow.grokking.config import GrokConfig
from ncflow.grokking.markers import grokking_markers
from ncflow.grokking.task import SYMBOLS, ModularTask, modular_task, vocabulary_size
from ncflow.grokking.transformer import GrokTransformer
from ncflow.library.monitor import CollapseMonitor

EVAL_BATCH = 4096
REG_ACTIVE, REG_VALUE, LR = "reg/active", "reg/value", "lr"


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


def train_grokking(config: GrokConfig, tracking_uri: str | None = None, experiment: str = "grokking",
                   device: str = "cpu", progress: Callable[[int, dict[str, float]], None] | None = None
                   ) -> CollapseMonitor:
    """Train one grokking run into MLflow; the finished monitor (run id, detector, history)."""
    torch_device = torch.device(device)
    task, model = build(config, torch_device)
    train_x, train_y = task.train_x.to(torch_device), task.train_y.to(torch_device)
    batch = len(train_y) if config.batch_size == 0 else min(config.batch_size, len(train_y))
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, betas=(config.beta1, config.beta2),
                                  weight_decay=config.weight_decay)
    schedule = StepSchedule(config)
    monitor = CollapseMonitor(
        model, config.p, batches(train_x, train_y),
        batches(task.val_x.to(torch_device), task.val_y.to(torch_device)),
        classifier="unembed", arch=arch_name(config), dataset=dataset_name(config), seed=config.seed,
        params={k: v for k, v in config.as_params().items() if k not in ("seed", "nc1_threshold")},
        nc1_threshold=config.nc1_threshold, step_unit="step", tracking_uri=tracking_uri, experiment=experiment,
        run_name=f"grok-{SYMBOLS[config.operation]}-p{config.p}-f{config.train_fraction:g}-{config.reg}"
                 f"{'' if config.reg == 'none' else f'{config.reg_lambda:g}'}-s{config.seed}")
    generator = torch.Generator(device=torch_device).manual_seed(config.seed)
    order, cursor = torch.randperm(len(train_y), generator=generator, device=torch_device), 0
    loss_sum = torch.zeros((), device=torch_device)
    reg_sum = torch.zeros((), device=torch_device)
    since = 0
    with monitor:
        for step in range(1, config.steps + 1):
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
            else:
                objective = loss
            optimizer.zero_grad(set_to_none=True)
            objective.backward()
            optimizer.step()
            loss_sum += loss.detach()
            since += 1
            if step % config.eval_every == 0 or step == config.steps:
                extra = {LR: optimizer.param_groups[0]["lr"], REG_ACTIVE: float(active)}
                if config.reg != "none":
                    extra[REG_VALUE] = float(reg_sum) / since
                row = monitor.measure(step, train_loss=float(loss_sum) / since, extra=extra)
                loss_sum.zero_()
                reg_sum.zero_()
                since = 0
                if progress:
                    progress(step, row)
        monitor.run.log_summary(grokking_markers(monitor.history), int(time.time() * 1000))
    return monitor
