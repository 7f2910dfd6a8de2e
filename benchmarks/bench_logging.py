"""What MLflow logging costs a training run: the same run with per-epoch logging on and off, in one process.

Arms (alternating, `--repeats` each), all training the default condition (MLP-7 on `digits`) for `--epochs` epochs
into a fresh store given by `--tracking-uri` (default: a temporary sqlite file; pass `http://127.0.0.1:PORT` to
measure through a server):
- `logged`: `ncflow.train.train` as users run it (per-epoch metrics buffered, sent by asynchronous `log_batch`);
- `baseline`: the identical run with `EpochLogger.log` replaced by a no-op (params, tags, checkpoints and the
  final artifacts are still written, so the difference is the per-epoch logging alone).
Reported: the median wall time of the epoch loop per arm, the overhead ratio (logged − baseline) / baseline,
and the time the loop spent blocked inside `EpochLogger.log`.

Run: `python benchmarks/bench_logging.py [--epochs 60 --repeats 3 --tracking-uri URI]`
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import mlflow
import torch

from ncflow import train as training
from ncflow.config import build_config
from ncflow.tracking import EpochLogger

ORIGINAL_LOG = EpochLogger.log


def timed_run(uri: str, epochs: int, logged: bool) -> tuple[float, float]:
    """(epoch-loop seconds, seconds blocked in EpochLogger.log) of one training run."""
    blocked = [0.0]

    def timed_log(self: EpochLogger, step: int, metrics: dict) -> None:
        started = time.perf_counter()
        ORIGINAL_LOG(self, step, metrics)
        blocked[0] += time.perf_counter() - started

    EpochLogger.log = timed_log if logged else (lambda self, step, metrics: None)
    original_run_epochs = training.run_epochs
    loop = [0.0]

    def timed_run_epochs(*args, **kwargs):
        started = time.perf_counter()
        original_run_epochs(*args, **kwargs)  # includes waiting for the queued metrics at the end
        loop[0] = time.perf_counter() - started

    training.run_epochs = timed_run_epochs
    try:
        config = build_config(
            None,
            {"depth": "7", "phase1_epochs": str(epochs // 2), "phase2_epochs": str(epochs - epochs // 2),
             "checkpoint_every": str(10 * epochs), "tracking_uri": uri},
        )
        training.train(config, progress=False)
    finally:
        EpochLogger.log = ORIGINAL_LOG
        training.run_epochs = original_run_epochs
    return loop[0], blocked[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tracking-uri", default=None)
    args = parser.parse_args()
    print(f"# {platform.platform()}, Python {platform.python_version()}, torch {torch.__version__}, "
          f"mlflow {mlflow.__version__}, {torch.get_num_threads()} threads")
    with tempfile.TemporaryDirectory() as tmp:
        uri = args.tracking_uri or f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        print(f"store: {uri}; {args.epochs} epochs per run, {args.repeats} runs per arm")
        timed_run(uri, 2, logged=True)  # creates the store and experiment, warms imports
        results: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
        for _ in range(args.repeats):
            for logged in (False, True):
                results[logged].append(timed_run(uri, args.epochs, logged))
    baseline = statistics.median(loop for loop, _ in results[False])
    logged = statistics.median(loop for loop, _ in results[True])
    blocked = statistics.median(block for _, block in results[True])
    print(f"baseline (no per-epoch logging): {baseline:.2f} s per {args.epochs}-epoch loop "
          f"({[round(loop, 2) for loop, _ in results[False]]})")
    print(f"logged (buffered, asynchronous log_batch): {logged:.2f} s ({[round(loop, 2) for loop, _ in results[True]]})")
    print(f"logging overhead: {100 * (logged - baseline) / baseline:+.1f} % of the loop; "
          f"blocked in EpochLogger.log: {1000 * blocked / args.epochs:.2f} ms per epoch "
          f"({100 * blocked / logged:.2f} % of the loop)")


if __name__ == "__main__":
    main()
