"""`NeuralCollapseTrainerCallback`: a Hugging Face `transformers` TrainerCallback measuring collapse through a
`CollapseMonitor`.

    trainer = Trainer(model=model, args=TrainingArguments(..., report_to=["mlflow"]), train_dataset=...,
                      callbacks=[NeuralCollapseTrainerCallback(num_classes=2, classifier="classifier",
                                                               arch="tiny-bert", dataset="sst2")])

It measures the model at the end of every epoch (step = the epoch), or every `every_n_steps` optimiser steps
(step = the global step, `step_unit` "step"), on `train_loader` and `test_loader` — by default the Trainer's own
training and evaluation loaders, whose batches are dicts with `labels`. With `report_to=["mlflow"]` the Trainer's
MLflowCallback has started a run, and the monitor writes into it; otherwise it opens its own. For a classification
head the classifier's input is one vector per sequence; a token-level head (labels per token, −100 ignored) gives one
feature row per labelled token (ncflow.library.capture). Needs `pip install ncflow[transformers]`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from ncflow.library.capture import MonitorInputError
from ncflow.library.monitor import CollapseMonitor


class NeuralCollapseTrainerCallback(TrainerCallback):
    """Measure and log neural collapse each epoch or every `every_n_steps` steps (keyword arguments:
    CollapseMonitor's)."""

    def __init__(self, num_classes: int, classifier: str = "classifier", train_loader: Iterable[Any] | None = None,
                 test_loader: Iterable[Any] | None = None, every_n_steps: int | None = None,
                 **monitor_options: Any) -> None:
        if every_n_steps is not None and every_n_steps < 1:
            raise MonitorInputError(f"every_n_steps: expected an integer ≥ 1 or None, got {every_n_steps!r}")
        self.num_classes, self.classifier = num_classes, classifier
        self.train_loader, self.test_loader = train_loader, test_loader
        self.every_n_steps, self.options = every_n_steps, monitor_options
        self.monitor: CollapseMonitor | None = None

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       **kwargs: Any) -> None:
        train = self.train_loader if self.train_loader is not None else kwargs.get("train_dataloader")
        test = self.test_loader if self.test_loader is not None else kwargs.get("eval_dataloader")
        options = {"step_unit": "epoch" if self.every_n_steps is None else "step", "seed": args.seed, **self.options}
        self.monitor = CollapseMonitor(kwargs["model"], self.num_classes, train, test, classifier=self.classifier,
                                       **options)

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    **kwargs: Any) -> None:
        if self.monitor is not None and self.every_n_steps and state.global_step % self.every_n_steps == 0:
            self.monitor.measure(state.global_step, train_loss=_last_loss(state))

    def on_epoch_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                     **kwargs: Any) -> None:
        if self.monitor is not None and self.every_n_steps is None:
            self.monitor.measure(round(state.epoch or 0), train_loss=_last_loss(state))

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                     **kwargs: Any) -> None:
        if self.monitor is not None:
            self.monitor.finish()


def _last_loss(state: TrainerState) -> float | None:
    """The latest training loss the Trainer logged, if any (it logs every `logging_steps`)."""
    for entry in reversed(state.log_history):
        if "loss" in entry:
            return float(entry["loss"])
    return None
