"""Packed training against one run per process: member-epochs per second on the device present, same machine, same run.

    python benchmarks/bench_pack.py [--sizes 1,3,12] [--samples 60000] [--depth 5] [--epochs 2] [--device auto]
    python benchmarks/bench_pack.py --floor [--samples 4000]      # CPU: epoch time against the compute floor

Data: MNIST-shaped Gaussian classes generated here (`--samples` × 1 × 28 × 28, 10 classes; the `synthetic` data set,
so nothing is downloaded). Model: the paper's MLP (preset paper-mnist-mlp: width 512, ReLU, Adam, batch 128).

- For each pack size S: S members (seeds 0 … S−1) trained together (`ncflow.engine.pack`) for `--epochs` epochs after
  one untimed warm-up epoch, each epoch the shared training pass plus every member's metric pass; then the same S
  members as S separate processes started together (each one member, `torch` threads split between them), timed
  from the first start to the last end. Member-epochs/s = S × epochs / seconds; the ratio packed / separate is
  the claim (the goal on a GPU: ≥ 8× at S = 12; on a CPU, which is compute-bound, ≈ 1×).
- `--floor`: one member's training pass and eval pass against the compute floor, 6 · N · Σ(fan_in · fan_out) FLOP
  per training epoch (forward, input and weight gradients) at the float32 matmul rate measured here on a
  2048 × 2048 product (the goal: training pass ≤ 1.3× the floor).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import torch

from ncflow.engine import loop, pack, run_setup
from ncflow.engine.config import build_config


def member_config(args: argparse.Namespace, seed: int):
    per_class = max(1, args.samples // 10)
    return build_config("paper-mnist-mlp", {
        "dataset": "synthetic", "synthetic_classes": "10", "synthetic_shape": "1x28x28",
        "synthetic_per_class": str(per_class), "depth": str(args.depth), "seed": str(seed), "device": args.device,
        "phase1_epochs": str(args.epochs + 1), "phase2_epochs": "0", "matmul_precision": args.matmul_precision,
    })


def timed_pack(args: argparse.Namespace, size: int) -> float:
    """Seconds for `--epochs` epochs of a pack of `size` (after a warm-up epoch)."""
    members = [run_setup.prepare(member_config(args, seed)) for seed in range(size)]
    pack.share_data(members)

    def epoch(number: int) -> None:
        losses = pack.train_pack_epoch(members, 1, batched=args.batched)
        for member, loss in zip(members, losses):
            loop.finish_row(member, number, 1, member.optimizer.param_groups[0]["lr"], loss, time.perf_counter())

    epoch(1)
    synchronize(members[0].device)
    start = time.perf_counter()
    for number in range(2, 2 + args.epochs):
        epoch(number)
    synchronize(members[0].device)
    return time.perf_counter() - start


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_processes(args: argparse.Namespace, size: int) -> float:
    """Wall seconds for `size` separate one-member processes started together (warm-up excluded: each reports
    when its timed epochs start and end; the span is first start to last end)."""
    threads = max(1, (os.cpu_count() or 1) // size)
    command = [sys.executable, __file__, "--single", "--samples", str(args.samples), "--depth", str(args.depth),
               "--epochs", str(args.epochs), "--device", args.device, "--matmul-precision", args.matmul_precision]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    processes = [subprocess.Popen([*command, "--seed", str(seed)], stdout=subprocess.PIPE, text=True, env=env)
                 for seed in range(size)]
    spans = [json.loads(process.communicate()[0].strip().splitlines()[-1]) for process in processes]
    return max(span["end"] for span in spans) - min(span["start"] for span in spans)


def single(args: argparse.Namespace) -> None:
    """One member alone (a child of `timed_processes`): print the wall-clock span of its timed epochs."""
    setup = run_setup.prepare(member_config(args, args.seed))
    loop.epoch_row(setup, 1)
    synchronize(setup.device)
    start = time.time()
    for number in range(2, 2 + args.epochs):
        loop.epoch_row(setup, number)
    synchronize(setup.device)
    print(json.dumps({"start": start, "end": time.time()}))


def matmul_flops_per_s(device: torch.device) -> float:
    a = torch.randn(2048, 2048, device=device)
    b = torch.randn(2048, 2048, device=device)
    a @ b
    synchronize(device)
    start, repeats = time.perf_counter(), 5
    for _ in range(repeats):
        a @ b
    synchronize(device)
    return 2 * 2048 ** 3 * repeats / (time.perf_counter() - start)


def floor(args: argparse.Namespace) -> None:
    setup = run_setup.prepare(member_config(args, 0))
    samples = len(setup.data.train_y)
    layers = setup.model.linear_layers()
    flop = 6 * samples * sum(layer.in_features * layer.out_features for layer in layers)
    rate = matmul_flops_per_s(setup.device)
    loop.train_one_epoch(setup, 1)
    train_s = min(timed(lambda: loop.train_one_epoch(setup, 1)) for _ in range(args.epochs))
    eval_s = min(timed(lambda: loop.measure_epoch(setup)) for _ in range(args.epochs))
    floor_s = flop / rate
    print(f"MLP-{args.depth} on {samples} × 784, {torch.get_num_threads()} thread(s), {setup.device}: "
          f"{flop / 1e9:.1f} GFLOP per training epoch at {rate / 1e9:.0f} GFLOP/s = floor {floor_s:.3f} s")
    print(f"training pass {train_s:.3f} s = {train_s / floor_s:.2f}x the floor (goal <= 1.3x); "
          f"eval pass {eval_s:.3f} s = {eval_s / (train_s + eval_s):.0%} of the epoch")


def timed(work) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,3,12")
    parser.add_argument("--samples", type=int, default=60000)
    parser.add_argument("--depth", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--matmul-precision", default="highest")
    parser.add_argument("--floor", action="store_true")
    parser.add_argument("--sequential", dest="batched", action="store_false",
                        help="members one after another (the CPU's default in ncflow) instead of batched matmuls")
    parser.add_argument("--single", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.single:
        return single(args)
    if args.floor:
        return floor(args)
    device = run_setup.resolve_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "CPU"
    print(f"{device} ({name}), {os.cpu_count()} cores, torch {torch.__version__}; MLP-{args.depth}, "
          f"{args.samples} × 784, {args.epochs} timed epochs")
    print("| pack size | packed member-epochs/s | separate processes member-epochs/s | ratio |")
    print("|---|---|---|---|")
    for size in (int(part) for part in args.sizes.split(",")):
        packed = size * args.epochs / timed_pack(args, size)
        separate = size * args.epochs / timed_processes(args, size)
        print(f"| {size} | {packed:.3f} | {separate:.3f} | {packed / separate:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
