"""Late-training epochs on the CPU with and without flushing denormals (`torch.set_flush_denormal`).

Why: with weight decay, many weights and gradients of a long run drift into float32's denormal range (< 1.2e-38),
where x86 arithmetic takes a slow path. ncflow's training loop flushes them to zero (`ncflow/train.py`, `prepare`).

What: train the default condition (MLP-7 on `digits`, Adam 1e-3, λ = 2e-4, cosine over 600 epochs) for
`--warmup` epochs WITHOUT flushing, so the state is what an unflushed run would reach; then, from copies of that
same state, time `--epochs` training epochs (+ the metrics pass) with flushing off and on, alternating, repeated.
Both arms start from the identical state in the same process: the ratio is the claim.

Run: `python benchmarks/bench_denormal.py [--warmup 200 --epochs 5 --repeats 3 --threads 2]`
Seen on the 2-core CI machine (Python 3.11.7, torch 2.14.1 CPU): printed below the header when run.
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time

import torch

from ncflow.config import build_config
from ncflow.data import load_dataset
from ncflow.models import build_model
from ncflow.train import Setup, make_optimizer, make_scheduler, measure_epoch, train_one_epoch
from ncflow.collapse import CollapseDetector


def make_setup(threads: int) -> Setup:
    torch.set_num_threads(threads)
    config = build_config(None, {"depth": "7"})
    data = load_dataset(config.dataset)
    torch.manual_seed(config.seed)
    model = build_model(config.arch, data.input_shape, data.num_classes, config.depth, config.width, config.activation)
    optimizer = make_optimizer(model, config)
    return Setup(
        config=config,
        device=torch.device("cpu"),
        data=data,
        model=model,
        optimizer=optimizer,
        scheduler=make_scheduler(optimizer, config),
        detector=CollapseDetector(threshold=0.01),
        batch_order=torch.Generator().manual_seed(0),
    )


def denormal_fraction(model: torch.nn.Module) -> float:
    tiny = torch.finfo(torch.float32).tiny
    values = torch.cat([p.detach().abs().flatten() for p in model.parameters()])
    return ((values > 0) & (values < tiny)).double().mean().item()


def time_epochs(setup: Setup, state: dict, epochs: int, flush: bool) -> float:
    """Seconds per epoch (train + metrics pass) from `state`, flushing denormals or not."""
    setup.model.load_state_dict(copy.deepcopy(state["model"]))
    setup.optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))
    torch.set_flush_denormal(flush)
    started = time.perf_counter()
    for epoch in range(epochs):
        train_one_epoch(setup, phase=2)
        measure_epoch(setup)
    return (time.perf_counter() - started) / epochs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warmup", type=int, default=200, help="unflushed epochs before timing")
    parser.add_argument("--epochs", type=int, default=5, help="timed epochs per arm and repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    print(f"# {platform.platform()}, {platform.processor() or platform.machine()}, Python {platform.python_version()}, "
          f"torch {torch.__version__}, {args.threads} threads")
    setup = make_setup(args.threads)
    torch.set_flush_denormal(False)
    started = time.perf_counter()
    for epoch in range(1, args.warmup + 1):
        train_one_epoch(setup, phase=1 if epoch <= setup.config.phase1_epochs else 2)
        setup.scheduler.step()
    print(f"warm-up: {args.warmup} unflushed epochs in {time.perf_counter() - started:.1f} s; "
          f"denormal weights: {100 * denormal_fraction(setup.model):.2f} %")
    state = {"model": copy.deepcopy(setup.model.state_dict()), "optimizer": copy.deepcopy(setup.optimizer.state_dict())}
    timings: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(args.repeats):
        for flush in (False, True):
            timings[flush].append(time_epochs(setup, state, args.epochs, flush))
    for flush in (False, True):
        values = timings[flush]
        print(f"flush_denormal={flush!s:5}: median {statistics.median(values):.3f} s/epoch "
              f"(min {min(values):.3f}, max {max(values):.3f}, n={len(values)})")
    ratio = statistics.median(timings[False]) / statistics.median(timings[True])
    print(f"speed-up from flushing denormals: {ratio:.2f}x")


if __name__ == "__main__":
    main()
