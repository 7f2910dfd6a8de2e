"""The projected wall time of the paper's MNIST MLP program on this machine, from a timed slice of epochs.

    python benchmarks/bench_program.py [--pack auto|N] [--samples 60000] [--epochs 1] [--device auto]

The program is `ncflow reproduce`'s (the depth, weight-decay, activation, width, protocol and intervention sweeps:
every distinct point once, shared conditions once), on MNIST-shaped data generated here (`--samples` × 1 × 28 × 28,
10 Gaussian classes: the `synthetic` data set, nothing downloaded). Its points are grouped by what a pack must share
(`ncflow.engine.pack.pack_key`); for each group one pack of min(pack size, group size) members is built and
`--epochs` epochs are timed after a warm-up epoch (training pass + every member's metric pass). The projection is
Σ over groups of ⌈members / pack size⌉ × epochs per run × the timed seconds per pack-epoch, one worker. `--pack 1`
projects one run at a time; the ratio of the two projections is what packing buys on this device.
"""

from __future__ import annotations

import argparse
import math
import time
from collections import defaultdict

import torch

from ncflow.engine import loop, pack, run_setup
from ncflow.sweeps.reproduce import PROGRAM_SWEEPS, plan_points, program


def program_configs(args: argparse.Namespace) -> list:
    overrides = {"dataset": "synthetic", "synthetic_classes": 10, "synthetic_shape": "1x28x28",
                 "synthetic_per_class": max(1, args.samples // 10), "device": args.device}
    sweeps = tuple(name for name in PROGRAM_SWEEPS if name != "grid")  # the grid's ResNet-20/CIFAR cells are not the MLP program
    _, planned = plan_points(program(sweeps, None, overrides))
    return [item.point.config for item in planned]


def pack_epoch_seconds(configs: list, epochs: int) -> float:
    """Seconds per epoch of these configs trained as one pack (median-free: the mean of `epochs` after a warm-up)."""
    members = [run_setup.prepare(config.replace(init_from="none", rescale_alpha=1.0, phase1_epochs=epochs + 1,
                                             phase2_epochs=0)) for config in configs]
    pack.share_data(members)

    def epoch(number: int) -> None:
        losses = pack.train_pack_epoch(members, 1)
        for member, loss in zip(members, losses):
            loop.finish_row(member, number, 1, member.optimizer.param_groups[0]["lr"], loss, time.perf_counter())

    epoch(1)
    if members[0].device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for number in range(2, 2 + epochs):
        epoch(number)
    if members[0].device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / epochs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pack", default="auto")
    parser.add_argument("--samples", type=int, default=60000)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = run_setup.resolve_device(args.device)
    size = pack.auto_pack_size(device) if args.pack == "auto" else int(args.pack)
    configs = program_configs(args)
    groups: dict[tuple, list] = defaultdict(list)
    for config in configs:
        groups[pack.pack_key(config)].append(config)
    total_s, total_epochs = 0.0, 0
    print(f"{len(configs)} runs in {len(groups)} pack groups, pack size {size}, {args.samples} × 784, {device}")
    for members in groups.values():
        seconds = pack_epoch_seconds(members[:size], args.epochs)
        packs = math.ceil(len(members) / size)
        epochs = members[0].total_epochs
        total_s += packs * epochs * seconds
        total_epochs += len(members) * epochs
        first = members[0]
        print(f"  {first.arch}{first.depth} {first.activation} w{first.width}: {len(members)} runs, "
              f"{seconds:.4f} s per pack-epoch of {min(size, len(members))}", flush=True)
    print(f"projected: {total_s / 3600:.2f} h for {total_epochs:,} member-epochs "
          f"({total_epochs / total_s:.2f} member-epochs/s), one worker")


if __name__ == "__main__":
    main()
