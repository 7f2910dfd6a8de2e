"""What the crash-safe local run record costs: epoch time with the record on vs off, in one process.

For each workload the same training state runs blocks of epochs under three sinks, interleaved
(off, record, shipped, off, record, shipped, …) so that drift in the machine's load and in the run's own
epoch time (late epochs differ from early ones) falls on every arm alike:
- `off`: `run_setup.NullSink` — the engine alone;
- `record`: `RecordSink` — every row journaled and flushed, the resume state saved every epoch by the
  background writer (temp file + os.replace), `last.pt` every `checkpoint_every` epochs;
- `shipped`: the same plus the background shipper sending the journal to a temporary sqlite MLflow store.
Reported per arm: the median seconds per epoch over all its epochs, and the overhead (arm − off) / off.
Workloads: the default run (MLP-7 on `digits`) and MLP-5 (width 512) on `mnist-5k`.

Run: `python benchmarks/bench_durability.py [--epochs-per-block 5 --blocks 4]`
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from ncflow.engine import loop, run_setup
from ncflow.engine.config import build_config
from ncflow.record.local_record import RunRecord
from ncflow.record.sink import RecordSink

WORKLOADS = {
    "default (MLP-7, digits)": {"depth": "7"},
    "MLP-5 w512, mnist-5k": {"depth": "5", "dataset": "mnist-5k", "weight_decay": "1e-4"},
}


def epoch_times(setup: run_setup.Setup, sink, epochs: range) -> list[float]:
    times = []
    for epoch in epochs:
        started = time.perf_counter()
        row = loop.epoch_row(setup, epoch)
        run_setup.update_detector(setup, row)
        setup.history.append(row)
        sink.epoch(epoch, {k: row[k] for k in row if k != "epoch"})
        sink.state(loop.checkpoint_state(setup, epoch))
        times.append(time.perf_counter() - started)
    return times


def measure(overrides: dict[str, str], epochs_per_block: int, blocks: int, root: Path) -> dict[str, list[float]]:
    total = 3 * epochs_per_block * blocks
    config = build_config(None, {**overrides, "phase1_epochs": str(total // 2), "phase2_epochs": str(total - total // 2)})
    setup = run_setup.prepare(config)
    from mlflow.tracking import MlflowClient

    from ncflow.record.shipper import Shipper

    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    run_id = client.create_run(client.create_experiment(f"bench-{time.time_ns()}")).info.run_id
    record = RecordSink(RunRecord.create(root / "records", "record-only", {}), config.checkpoint_every)
    shipped_record = RunRecord.create(root / "records", run_id, {})
    shipped = RecordSink(shipped_record, config.checkpoint_every)
    shipper = Shipper(client, shipped_record).start()
    arms = {"off": run_setup.NullSink(), "record": record, "shipped": shipped}
    times: dict[str, list[float]] = {name: [] for name in arms}
    epoch = 1
    loop.epoch_row(setup, 0)  # warm-up epoch (allocations, thread pools), not timed
    for _ in range(blocks):
        for name, sink in arms.items():
            times[name] += epoch_times(setup, sink, range(epoch, epoch + epochs_per_block))
            epoch += epochs_per_block
    record.close()
    shipped.close()
    shipper.close(None)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs-per-block", type=int, default=5)
    parser.add_argument("--blocks", type=int, default=4)
    args = parser.parse_args()
    print(f"# {platform.platform()}, Python {platform.python_version()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; {args.blocks} blocks × {args.epochs_per_block} epochs per arm")
    print("| workload | arm | median s/epoch | overhead vs off |")
    print("|---|---|---|---|")
    for label, overrides in WORKLOADS.items():
        with tempfile.TemporaryDirectory() as tmp:
            times = measure(overrides, args.epochs_per_block, args.blocks, Path(tmp))
        base = statistics.median(times["off"])
        for arm, values in times.items():
            median = statistics.median(values)
            overhead = "—" if arm == "off" else f"{100 * (median - base) / base:+.1f} %"
            print(f"| {label} | {arm} | {median:.4f} | {overhead} |")


if __name__ == "__main__":
    main()
