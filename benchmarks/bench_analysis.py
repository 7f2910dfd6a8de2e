"""Benchmark `ncflow-analysis report` against a real `mlflow server` holding 100 runs × 800 epochs.

    python benchmarks/bench_analysis.py [--runs 100] [--epochs 800] [--repeats 3]

Starts `mlflow server` on 127.0.0.1 (free port, SQLite backend, proxied artifacts in a temp dir), populates it
as training does (the names of ncshared/schema.py: params, tags, 15 per-epoch metrics, summary metrics, the
history artifact) with the depth, width, weight-decay, activation, grid and protocol sweeps of the paper (5 seeds
each, plausible NC1/fn trajectories), then times the whole `report` command (search, histories, every table and
figure, report.md), `--repeats` times each, and prints median and range of:

- cold: empty history cache, empty output directory (goal < 15 s);
- cached: the same report again over the unchanged store — the manifest matches, nothing is rewritten
  (goal < 2 s);
- forced: `report --force` with the history cache warm — every table and figure re-rendered (what a changed
  store costs, and what "cached" cost before the manifest);

then each stage as a library call, with `build_figures` split into building, laying out (once) and saving each
format, next to the baseline measured in the same run: saving with the layout engine live, as before
`figures.freeze_layout` (constrained layout re-solved on every save).

Population (untimed): runs, params, tags, summary metrics and the history artifact go through the server's REST
API; the 1.2 M per-epoch metric rows are bulk-inserted into the server's SQLite tables (`metrics`,
`latest_metrics`, the schema MLflow's own `log_batch` writes), because MLflow's ORM costs ~0.35 ms per metric
value — 7 minutes on 2 cores through the API. The timed part reads everything through the server.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import matplotlib  # noqa: E402
import mlflow  # noqa: E402
import pandas as pd  # noqa: E402
from click.testing import CliRunner  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from analysis.cli import main as cli_main  # noqa: E402
from ncshared.schema import DEFAULT_EXPERIMENT  # noqa: E402
from tests.mlflow_fixtures import (  # noqa: E402
    DEFAULT_PARAMS,
    FakeRun,
    auto_threshold,
    fn_trajectory,
    log_run,
    make_fake_run,
    nc1_trajectory,
    start_mlflow_server,
)

PHASE1 = 200
# (sweep, param overrides, depth, T_NC mean, fn* mean) per condition — paper Tables 2–4, 6, 7 and Fig. 9. The
# base condition (MLP-5, ReLU, width 512, λ = 1e-4, MNIST) is trained once, by the depth sweep; the other sweeps
# skip it as `ncflow sweep` does. T_NC 0: the condition never collapses.
CONDITIONS: list[tuple[str, dict[str, str], int, float, float]] = [
    *[("depth", {}, d, t, f) for d, t, f in [(2, 273, 1.25), (3, 250, 1.18), (5, 297, 1.077), (7, 340, 1.02)]],
    *[("width", {"width": str(w)}, 5, t, f) for w, t, f in [(128, 383, 1.17), (256, 330, 1.12), (1024, 257, 1.04)]],
    *[("weight_decay", {"weight_decay": wd}, 5, t, 1.08) for wd, t in [("1e-05", 360), ("5e-05", 320), ("0.0005", 0)]],
    *[("activation", {"activation": a}, 5, t, f) for a, t, f in [("gelu", 260, 2.128), ("tanh", 280, 1.325)]],
    *[("grid", {"arch": a, "dataset": ds}, 5, t, f) for a, ds, t, f in [("resnet20", "mnist", 320, 5.867),
                                                                      ("mlp", "cifar10", 400, 0.901),
                                                                      ("resnet20", "cifar10", 450, 1.515)]],
    ("protocol", {"protocol": "ce-only"}, 5, 0, 1.08),
]


def fake_runs(n_runs: int, epochs: int) -> list[FakeRun]:
    """n_runs runs: every condition with seed 0, then seed 1, …; noise on T_NC (σ 25 epochs) and fn* (2 %)."""
    rng = np.random.default_rng(0)
    runs = []
    for index in range(n_runs):
        sweep, params, depth, t_mean, fn_mean = CONDITIONS[index % len(CONDITIONS)]
        seed = index // len(CONDITIONS)
        eps = auto_threshold({**DEFAULT_PARAMS, "depth": str(depth), **params})
        t_nc = int(round(t_mean + rng.normal(0, 25))) if t_mean else epochs + 100
        fn_star = fn_mean * (1 + 0.02 * rng.normal())
        nc1 = nc1_trajectory(epochs, PHASE1, min(t_nc, epochs + 100), eps)
        if not t_mean:
            nc1 = np.maximum(nc1, 0.03 if sweep == "weight_decay" else 0.08)  # Table 4 λ=5e-4; Fig. 9 CE-only
        fn = fn_trajectory(epochs, PHASE1, min(t_nc, epochs), fn_star) * (1 + 0.002 * rng.standard_normal(epochs))
        runs.append(make_fake_run(depth=depth, seed=seed, nc1_curve=nc1, fn_curve=fn, sweep=sweep,
                                  phase1_epochs=PHASE1, params=params, fn_ref=fn_mean))
    return runs


def insert_epoch_metrics(db_path: Path, runs: list[tuple[str, FakeRun, int]]) -> None:
    """Bulk-insert every run's per-epoch metrics (and their latest values) into MLflow's SQLite tables."""
    with sqlite3.connect(db_path, timeout=60) as db:
        for run_id, run, start_ms in runs:
            rows = [(m.key, m.value, m.timestamp, run_id, m.step, 0) for m in run.epoch_metrics(start_ms)]
            db.executemany("INSERT INTO metrics (key, value, timestamp, run_uuid, step, is_nan) "
                           "VALUES (?, ?, ?, ?, ?, ?)", rows)
            last = {row[0]: row for row in rows}  # rows are in epoch order: the last one per key is the latest
            db.executemany("INSERT INTO latest_metrics (key, value, timestamp, run_uuid, step, is_nan) "
                           "VALUES (?, ?, ?, ?, ?, ?)", list(last.values()))


def populate(uri: str, db_path: Path, n_runs: int, epochs: int) -> None:
    """Log n_runs fake training runs to the server (REST for runs/params/tags/artifacts, SQL for epoch rows)."""
    client = MlflowClient(tracking_uri=uri)
    experiment_id = client.create_experiment(DEFAULT_EXPERIMENT)
    runs = fake_runs(n_runs, epochs)
    base_ms = int(time.time() * 1000) - 10_000_000

    def one(item: tuple[int, FakeRun]) -> tuple[str, FakeRun, int]:
        index, run = item
        start_ms = base_ms + 1000 * index
        return log_run(client, experiment_id, run, log_epoch_metrics=False, start_time_ms=start_ms), run, start_ms

    with ThreadPoolExecutor(max_workers=8) as pool:
        logged = list(pool.map(one, enumerate(runs)))
    insert_epoch_metrics(db_path, logged)


def time_report(uri: str, out: Path, cache: Path, *extra: str) -> tuple[float, str]:
    """Seconds for one in-process `ncflow-analysis report` (CliRunner) and its output, failing loudly on a
    non-zero exit."""
    args = ["report", "--tracking-uri", uri, "--out", str(out), "--cache-dir", str(cache), "--no-progress", *extra]
    start = time.perf_counter()
    result = CliRunner().invoke(cli_main, args, catch_exceptions=False)
    elapsed = time.perf_counter() - start
    if result.exit_code != 0:
        raise SystemExit(f"report failed ({result.exit_code}): {result.output}")
    return elapsed, result.output


def time_stages(uri: str, out: Path, cache: Path, empty_cache: Path) -> dict[str, float]:
    """Seconds of each stage of a report, called as library functions (where the time goes)."""
    matplotlib.use("Agg")
    from analysis import store
    from analysis.aggregate import Estimates
    from analysis.figures import build_figures, freeze_layout, make_figures
    from analysis.tables import build_tables
    from ncshared.dynamics_figure import DPI

    seconds = {}

    def timed(name: str, work: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        result = work()
        seconds[name] = time.perf_counter() - start
        return result

    runs = timed("load_runs", lambda: store.load_runs(uri))
    timed("load_histories (cold)", lambda: store.load_histories(runs, uri, cache_dir=empty_cache))
    histories = timed("load_histories (cached)", lambda: store.load_histories(runs, uri, cache_dir=cache))
    estimates = Estimates(runs, histories)  # as a report: one set of estimates for the tables and the figures
    timed("build_tables (computes the estimates)", lambda: build_tables(estimates))
    timed("build_figures (png+pdf, estimates shared)", lambda: build_figures(estimates, out, formats=("png", "pdf")))

    def save(figures: dict[str, Any], formats: tuple[str, ...], prefix: str = "") -> None:
        for stem, figure in figures.items():
            for fmt in formats:
                figure.savefig(out / f"{prefix}{stem}.{fmt}", dpi=DPI)

    figures = timed("  make_figures (no drawing)", lambda: make_figures(estimates))
    timed("  layout once (+ first-draw setup)", lambda: [freeze_layout(figure) for figure in figures.values()])
    timed("  save png", lambda: save(figures, ("png",)))
    timed("  save pdf", lambda: save(figures, ("pdf",)))
    seconds["  = layout once + png + pdf"] = sum(seconds[f"  {name}"] for name in (
        "layout once (+ first-draw setup)", "save png", "save pdf"))
    live = make_figures(estimates)  # the baseline: layout engine live, so each save re-solves the layout
    timed("  baseline: png + pdf, layout per save", lambda: save(live, ("png", "pdf"), prefix="baseline-"))
    return seconds


def spread(values: list[float]) -> str:
    return f"median {statistics.median(values):6.2f} s  (min {min(values):.2f}, max {max(values):.2f}, n={len(values)})"


def header(n_runs: int, epochs: int) -> str:
    return "\n".join([
        f"bench_analysis: report over {n_runs} runs × {epochs} epochs through a local mlflow server",
        f"machine: {platform.platform()}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        f"python {platform.python_version()}, mlflow {mlflow.__version__}, pandas {pd.__version__}, "
        f"numpy {np.__version__}, matplotlib {matplotlib.__version__}",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=800)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"  # no "View run" line per populated run
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    print(header(args.runs, args.epochs), flush=True)
    root = Path(tempfile.mkdtemp(prefix="ncflow-bench-"))
    try:
        with start_mlflow_server(root / "server") as uri:
            start = time.perf_counter()
            populate(uri, root / "server" / "server.db", args.runs, args.epochs)
            print(f"populated in {time.perf_counter() - start:.1f} s (untimed)", flush=True)
            cold, cached, forced, stages = [], [], [], []
            for repeat in range(args.repeats):
                cache, out = root / f"cache{repeat}", root / f"report{repeat}"
                cold.append(time_report(uri, out, cache)[0])
                seconds, output = time_report(uri, out, cache)
                if "up to date" not in output:
                    raise SystemExit(f"the repeated report rebuilt over an unchanged store: {output}")
                cached.append(seconds)
                forced.append(time_report(uri, out, cache, "--force")[0])
                stages.append(time_stages(uri, root / f"stages{repeat}", cache, root / f"empty{repeat}"))
                print(f"  repeat {repeat}: cold {cold[-1]:.2f} s, cached {cached[-1]:.2f} s, "
                      f"forced {forced[-1]:.2f} s", flush=True)
            print(f"report cold   (empty cache):           {spread(cold)}   goal < 15 s")
            print(f"report cached (unchanged store):       {spread(cached)}   goal < 2 s")
            print(f"report --force (histories cached):     {spread(forced)}")
            print("report by stage (library calls):")
            for name in stages[0]:
                print(f"  {name:42s} {spread([s[name] for s in stages])}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
