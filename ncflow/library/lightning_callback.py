"""`NeuralCollapseCallback`: a PyTorch Lightning callback that measures collapse through a `CollapseMonitor`.

    trainer = L.Trainer(max_epochs=30, logger=MLFlowLogger(tracking_uri=...),
                        callbacks=[NeuralCollapseCallback(num_classes=10, classifier="model.fc",
                                                          arch="my-vit", dataset="cifar10")])

At the end of every `every_n_epochs`-th training epoch it measures the LightningModule on `train_loader` and
`test_loader` (by default the trainer's own training loader and first validation loader) and logs at step = the
1-based epoch. It writes into the trainer's `MLFlowLogger` run when there is one, else into the active or a new run.
For exact values give it loaders without random augmentation: the monitor reads the training loader twice (the
second pass's NC4 and Papyan's NC1 assume the same features). `train/loss` is the epoch's `train_loss` from
`trainer.callback_metrics` when the module logs one. Needs `pip install ncflow[lightning]`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.loggers import MLFlowLogger

from ncflow.library.capture import MonitorInputError
from ncflow.library.monitor import CollapseMonitor


class NeuralCollapseCallback(pl.Callback):
    """Measure and log neural collapse every `every_n_epochs` training epochs (keyword arguments: CollapseMonitor's)."""

    def __init__(self, num_classes: int, classifier: str = "fc", train_loader: Iterable[Any] | None = None,
                 test_loader: Iterable[Any] | None = None, every_n_epochs: int = 1, **monitor_options: Any) -> None:
        if every_n_epochs < 1:
            raise MonitorInputError(f"every_n_epochs: expected an integer ≥ 1, got {every_n_epochs!r}")
        self.num_classes, self.classifier = num_classes, classifier
        self.train_loader, self.test_loader = train_loader, test_loader
        self.every_n_epochs, self.options = every_n_epochs, monitor_options
        self.monitor: CollapseMonitor | None = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        options = dict(self.options)
        logger = trainer.logger
        if isinstance(logger, MLFlowLogger) and "run_id" not in options:
            options.update(run_id=logger.run_id, tracking_uri=logger.experiment.tracking_uri)
        train = self.train_loader if self.train_loader is not None else trainer.train_dataloader
        if train is None:  # Lightning builds its loaders after on_fit_start in some versions: ask the module
            train = pl_module.train_dataloader()
        test = self.test_loader
        if test is None and trainer.val_dataloaders is not None:
            test = trainer.val_dataloaders[0] if isinstance(trainer.val_dataloaders, list) else trainer.val_dataloaders
        self.monitor = CollapseMonitor(pl_module, self.num_classes, train, test, classifier=self.classifier, **options)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        if self.monitor is None or epoch % self.every_n_epochs:
            return
        loss = trainer.callback_metrics.get("train_loss")
        self.monitor.measure(epoch, train_loss=None if loss is None else float(loss))

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.monitor is not None:
            self.monitor.finish()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if self.monitor is not None:
            self.monitor.finish(failed=True)
