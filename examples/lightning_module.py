"""Track neural collapse of a LightningModule with ncflow's Lightning callback: a small CNN on the 8×8 digits,
logged through Lightning's own MLFlowLogger (the callback writes into the logger's run).

    python examples/lightning_module.py --tracking-uri sqlite:///mlflow.db
    ncflow-analysis runs --tracking-uri sqlite:///mlflow.db --experiment ncflow-examples
"""

from __future__ import annotations

import argparse

import lightning.pytorch as pl
import torch
from digits import NUM_CLASSES, digits_loaders
from lightning.pytorch.loggers import MLFlowLogger
from torch import nn

from ncflow import NeuralCollapseCallback


class DigitsCNN(pl.LightningModule):
    def __init__(self, lr: float = 0.05, width: int = 64) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.backbone = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.Flatten(),
                                      nn.Linear(32 * 4 * 4, width), nn.ReLU())
        self.head = nn.Linear(width, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_index: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss, on_epoch=True, on_step=False)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9, weight_decay=5e-4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracking-uri", default="sqlite:///mlflow.db")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--nc1-threshold", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    pl.seed_everything(args.seed, verbose=False)
    shuffled, train, test = digits_loaders(seed=args.seed)
    logger = MLFlowLogger(experiment_name="ncflow-examples", tracking_uri=args.tracking_uri,
                          run_name=f"lightning-cnn-digits-s{args.seed}")
    callback = NeuralCollapseCallback(num_classes=NUM_CLASSES, classifier="head", train_loader=train, test_loader=test,
                                      arch="lightning-cnn", dataset="digits", seed=args.seed,
                                      nc1_threshold=args.nc1_threshold)
    trainer = pl.Trainer(max_epochs=args.epochs, logger=logger, callbacks=[callback], accelerator="cpu",
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(DigitsCNN(), shuffled)
    detector = callback.monitor.detector
    print(f"run {logger.run_id}: T_NC = {detector.t_nc}, fn* = {detector.fn_star}")


if __name__ == "__main__":
    main()
