"""What `--layerwise` costs: the epoch's metric pass with and without every layer's collapse metrics, same process.

    OMP_NUM_THREADS=1 python benchmarks/bench_layerwise.py [--depth 5] [--dataset mnist-5k] [--repeats 10]

Builds the paper's MLP (preset paper-mnist-mlp) twice from one seed, once with `layerwise` on, and times
`loop.measure_epoch` (the eval pass over the full training and test sets and every metric) for each, alternating
the arms so drift on a shared machine hits both; prints the medians, their ratio (the goal is ≤ 1.5×) and, for
scale, one training epoch.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch

from ncflow.engine import loop, run_setup
from ncflow.engine.config import build_config


def seconds(work: Callable[[], object]) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", default="5")
    parser.add_argument("--dataset", default="mnist-5k")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    settings = {"dataset": args.dataset, "depth": args.depth}
    plain = run_setup.prepare(build_config("paper-mnist-mlp", settings), None)
    layered = run_setup.prepare(build_config("paper-mnist-mlp", {**settings, "layerwise": "true"}), None)
    layered.model.load_state_dict(plain.model.state_dict())
    for setup in (plain, layered):  # warm-up
        loop.measure_epoch(setup)
    times: dict[str, list[float]] = {"plain": [], "layerwise": []}
    for _ in range(args.repeats):
        times["plain"].append(seconds(lambda: loop.measure_epoch(plain)))
        times["layerwise"].append(seconds(lambda: loop.measure_epoch(layered)))
    epoch = seconds(lambda: loop.train_one_epoch(plain, 1))
    base, with_layers = statistics.median(times["plain"]), statistics.median(times["layerwise"])
    print(f"MLP-{args.depth} on {args.dataset}: {len(plain.data.train_y)} training samples, "
          f"{torch.get_num_threads()} thread(s), median of {args.repeats}")
    print(f"measure_epoch            {base:.3f} s")
    print(f"measure_epoch layerwise  {with_layers:.3f} s   ratio {with_layers / base:.2f}x (goal <= 1.5x)")
    print(f"one training epoch       {epoch:.3f} s   (layerwise adds {(with_layers - base) / epoch:.1%} of it)")


if __name__ == "__main__":
    main()
