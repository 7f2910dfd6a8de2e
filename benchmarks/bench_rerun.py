"""What changes a run's numbers: the same run with another thread count, and the same run twice.

Why: float32 sums are not associative, and torch splits a matmul's sums over its CPU threads, so the thread count
changes the rounding of every epoch; the difference then grows through training. A run records its thread count
(`ncflow.env.threads`) and `--threads N --deterministic` pins it (docs/metrics.md, "What changes a run's numbers").

What: train one configuration (default: `ncflow train --depth 7`, i.e. MLP-7 on `digits`, seed 0, 50 + 550 epochs)
with the engine alone (no MLflow), once per `--threads` value (each `--deterministic`), and report, against the
first: the first epoch whose NC1 differs, NC1's relative difference there, the largest over all epochs, and T_NC and
fn* of each run. Two runs with the same thread count must agree bit for bit.

Run: `OMP_NUM_THREADS=1 python benchmarks/bench_rerun.py [--threads 1,2,1] [--preset P] [--set depth=7 …]`
"""

from __future__ import annotations

import argparse
import platform

import torch

from ncflow.engine import loop, run_setup
from ncflow.engine.config import build_config
from ncshared import provenance, schema


def history(preset: str | None, settings: dict[str, str], threads: int) -> tuple[list[dict[str, float]], dict[str, float]]:
    """The per-epoch rows and summary of one run with `threads` CPU threads, deterministic."""
    setup = run_setup.prepare(build_config(preset, {**settings, "threads": str(threads), "deterministic": "true"}))
    loop.run_epochs(setup, run_setup.NullSink(), progress=False)
    return setup.history, setup.detector.summary_metrics()


def first_difference(base: list[dict[str, float]], other: list[dict[str, float]]) -> tuple[int | None, float, float]:
    """(first epoch whose NC1 differs, |ΔNC1| / NC1 there, the largest |ΔNC1| / NC1 over all epochs)."""
    first, at_first, largest = None, 0.0, 0.0
    for a, b in zip(base, other):
        relative = abs(a[schema.NC1] - b[schema.NC1]) / abs(a[schema.NC1])
        if a[schema.NC1] != b[schema.NC1] and first is None:
            first, at_first = int(a[schema.HISTORY_EPOCH]), relative
        largest = max(largest, relative)
    return first, at_first, largest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="1,2,1", help="thread counts, one run each (the first is the baseline)")
    parser.add_argument("--preset", default=None, help="start from this preset (e.g. paper-mnist-mlp)")
    parser.add_argument("--set", dest="settings", action="append", default=["depth=7"], metavar="KEY=VALUE")
    args = parser.parse_args()
    settings = dict(item.split("=", 1) for item in args.settings)
    counts = [int(count) for count in args.threads.split(",")]
    print(f"# {provenance.cpu_model()}, Python {platform.python_version()}, torch {torch.__version__}; "
          f"ncflow train {f'--preset {args.preset} ' if args.preset else ''}"
          f"{' '.join(f'--{k} {v}' for k, v in settings.items())} --deterministic --threads N")
    runs = [(count, *history(args.preset, settings, count)) for count in counts]
    base_count, base, _ = runs[0]
    for count, rows, summary in runs:
        t_nc, fn_star = summary.get(schema.T_NC), summary.get(schema.FN_STAR)
        first, at_first, largest = first_difference(base, rows)
        same = "identical bit for bit" if first is None else (
            f"NC1 first differs at epoch {first} (relative {at_first:.1e}), at most {largest:.1e}")
        print(f"threads {count}: T_NC {t_nc}, fn* {fn_star}, final NC1 {rows[-1][schema.NC1]:.6g}; "
              f"vs threads {base_count}: {same}")


if __name__ == "__main__":
    main()
