"""Track neural collapse of your own model in a plain PyTorch loop: an MLP on the 8×8 digits, trained with MSE on
one-hot targets and a cosine schedule (measured every epoch on the training and test sets).

    python examples/plain_loop.py --tracking-uri sqlite:///mlflow.db
    ncflow-analysis runs --tracking-uri sqlite:///mlflow.db --experiment ncflow-examples
"""

from __future__ import annotations

import argparse

import torch
from digits import NUM_CLASSES, digits_loaders
from torch import nn

from ncflow import CollapseMonitor


class MLP(nn.Module):
    def __init__(self, width: int = 64) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Flatten(), nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, width), nn.ReLU())
        self.fc = nn.Linear(width, NUM_CLASSES)  # the classifier: its input is the penultimate feature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracking-uri", default=None, help="MLflow store (default: MLflow's own default)")
    parser.add_argument("--epochs", type=int, default=80)
    parser.add_argument("--nc1-threshold", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    shuffled, train, test = digits_loaders(seed=args.seed)
    model = MLP()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, args.epochs)
    with CollapseMonitor(model, NUM_CLASSES, train, test, classifier="fc", layers=["features.2"],
                         arch="mlp-256-64", dataset="digits", seed=args.seed, nc1_threshold=args.nc1_threshold,
                         tracking_uri=args.tracking_uri, experiment="ncflow-examples") as monitor:
        for epoch in range(1, args.epochs + 1):
            model.train()
            total = 0.0
            for x, y in shuffled:
                loss = nn.functional.mse_loss(model(x), nn.functional.one_hot(y, NUM_CLASSES).float())
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total += loss.detach() * len(y)
            schedule.step()
            monitor.measure(epoch, train_loss=float(total) / len(shuffled.dataset))
    print(f"run {monitor.run_id}: T_NC = {monitor.detector.t_nc}, fn* = {monitor.detector.fn_star}")


if __name__ == "__main__":
    main()
