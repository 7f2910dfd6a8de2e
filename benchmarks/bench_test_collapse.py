"""What the test-set collapse metrics cost: their time against a training epoch and the epoch's eval pass, same process.

    OMP_NUM_THREADS=1 python benchmarks/bench_test_collapse.py [--preset paper-mnist-mlp] [--dataset mnist-5k]

Times (mean of --repeats after a warm-up) `loop.test_collapse` on the test features, the training set's
`collapse_metrics`, the whole `loop.measure_epoch` and one training epoch, and prints the ratios.
"""

from __future__ import annotations

import argparse
import time
from typing import Callable

import torch

from ncflow.collapse.metrics import collapse_metrics
from ncflow.engine import loop, run_setup
from ncflow.engine.config import build_config
from ncflow.engine.models import predict_in_chunks


def seconds(work: Callable[[], object], repeats: int) -> float:
    work()
    start = time.perf_counter()
    for _ in range(repeats):
        work()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="paper-mnist-mlp")
    parser.add_argument("--dataset", default="mnist-5k")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    setup = run_setup.prepare(build_config(args.preset, {"dataset": args.dataset}), None)
    head, data = setup.model.head, setup.data
    _, train_features = predict_in_chunks(setup.model, data.train_x)
    _, test_features = predict_in_chunks(setup.model, data.test_x)
    test_part = seconds(lambda: loop.test_collapse(test_features, data.test_y, head, data.num_classes), args.repeats)
    train_part = seconds(lambda: collapse_metrics(train_features, data.train_y, head.weight.detach(),
                                                  head.bias.detach(), data.num_classes), args.repeats)
    measure = seconds(lambda: loop.measure_epoch(setup), args.repeats)
    epoch = seconds(lambda: loop.train_one_epoch(setup, 1), max(1, args.repeats // 3))
    print(f"{args.preset} on {args.dataset}, {torch.get_num_threads()} thread(s)")
    print(f"training epoch {epoch * 1e3:.0f} ms; eval pass (measure_epoch) {measure * 1e3:.0f} ms; "
          f"train-set metrics {train_part * 1e3:.1f} ms; test-set collapse {test_part * 1e3:.1f} ms")
    print(f"test-set collapse / eval pass = {test_part / measure:.1%}; / (epoch + eval) = {test_part / (epoch + measure):.1%}")


if __name__ == "__main__":
    main()
