"""Late-training epochs on the CPU with and without flushing denormals (`torch.set_flush_denormal`).

Why: with weight decay, many weights and gradients of a long run drift into float32's denormal range (< 1.2e-38),
where x86 arithmetic takes a slow path. ncflow's training loop flushes them to zero (`ncflow/engine/loop.py`, `prepare`).

What: train the default condition (MLP-7 on `digits`, Adam 1e-3, λ = 2e-4, cosine over 600 epochs) for
`--warmup` epochs WITHOUT flushing, so the state is what an unflushed run reaches, and save it. Then time
`--epochs` training epochs (+ the metrics pass) from that same state with flushing off and on, alternating,
`--repeats` times, each arm in a fresh process that sets the flag before torch starts its thread pool: the
flag lives in each thread's MXCSR register, and pool threads copy it from the thread that creates them.
The ratio of the two medians is the claim.

Run: `python benchmarks/bench_denormal.py [--warmup 200 --epochs 5 --repeats 3 --threads 2]`
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from ncflow.collapse.detector import CollapseDetector
from ncflow.engine.config import build_config
from ncflow.engine.data import load_dataset
from ncflow.engine.loop import measure_epoch, train_one_epoch
from ncflow.engine.models import build_model
from ncflow.engine.run_setup import Setup, make_optimizer, make_scheduler


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


def time_epochs(setup: Setup, state: dict, epochs: int) -> float:
    """Seconds per epoch (train + metrics pass) from `state` (the flag is set by the caller)."""
    setup.model.load_state_dict(state["model"])
    setup.optimizer.load_state_dict(state["optimizer"])
    started = time.perf_counter()
    for epoch in range(epochs):
        train_one_epoch(setup, phase=2)
        measure_epoch(setup)
    return (time.perf_counter() - started) / epochs


def warm_up(args: argparse.Namespace, state_path: Path) -> None:
    setup = make_setup(args.threads)
    torch.set_flush_denormal(False)
    started = time.perf_counter()
    for epoch in range(1, args.warmup + 1):
        train_one_epoch(setup, phase=1 if epoch <= setup.config.phase1_epochs else 2)
        setup.scheduler.step()
    print(f"warm-up: {args.warmup} unflushed epochs in {time.perf_counter() - started:.1f} s; "
          f"denormal weights: {100 * denormal_fraction(setup.model):.2f} %")
    torch.save({"model": setup.model.state_dict(), "optimizer": setup.optimizer.state_dict()}, state_path)


def run_arm(args: argparse.Namespace, state_path: Path, flush: bool) -> float:
    """Seconds per epoch of one arm, measured in a fresh process."""
    command = [sys.executable, __file__, "--arm", "on" if flush else "off", "--state", str(state_path),
               "--epochs", str(args.epochs), "--threads", str(args.threads)]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return float(output.strip().splitlines()[-1])


def arm(args: argparse.Namespace) -> None:
    torch.set_flush_denormal(args.arm == "on")  # before any parallel work creates the pool threads
    setup = make_setup(args.threads)
    state = torch.load(args.state, weights_only=True)
    print(time_epochs(setup, state, args.epochs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warmup", type=int, default=200, help="unflushed epochs before timing")
    parser.add_argument("--epochs", type=int, default=5, help="timed epochs per arm and repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--arm", choices=("on", "off"), help=argparse.SUPPRESS)
    parser.add_argument("--state", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.arm:
        arm(args)
        return
    print(f"# {platform.platform()}, {platform.processor() or platform.machine()}, Python {platform.python_version()}, "
          f"torch {torch.__version__}, {args.threads} threads")
    timings: dict[bool, list[float]] = {False: [], True: []}
    with tempfile.TemporaryDirectory() as tmp:
        state_path = Path(tmp) / "state.pt"
        warm_up(args, state_path)
        for _ in range(args.repeats):
            for flush in (False, True):
                timings[flush].append(run_arm(args, state_path, flush))
    for flush in (False, True):
        values = timings[flush]
        print(f"flush_denormal={flush!s:5}: median {statistics.median(values):.3f} s/epoch "
              f"(min {min(values):.3f}, max {max(values):.3f}, n={len(values)})")
    ratio = statistics.median(timings[False]) / statistics.median(timings[True])
    print(f"speed-up from flushing denormals: {ratio:.2f}x")


if __name__ == "__main__":
    main()
