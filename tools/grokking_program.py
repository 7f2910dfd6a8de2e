"""Han et al.'s program — grokking and their two regularisers — as a background job that resumes wherever it stopped.

    nohup nice -n 5 python tools/grokking_program.py >> grokking/program.log 2>&1 &   (--plan NAME,…  --workers N)

Works in the git-ignored grokking/ folder: its own sqlite store, Optuna journal, and a snapshot of the code (stamped
with the checkout's commit and diff, so editing the checkout does not change a running job). Before training it
imports the finished runs committed under docs/han-et-al/runs (tools/carry_runs.py); then it runs each planned
`ncflow sweep` — exactly once per point, a FINISHED run of a point's condition and seed (a carried one included) is
reused — and exports every finished run to docs/han-et-al/runs after each sweep and every 10 minutes. A run cut off
mid-way (its trial failed by the sweep, retried by the next invocation) continues from its last evaluation (a grokking
run, from its resume state under grokking/records) or epoch (an engine run) on the same machine; on a fresh machine,
from its start.

The plans, in the order `all` runs them (cheapest first):
- `data`: the NCC and flatness regulariser sweeps on mnist-5k through the engine, seeds 0, 1, 2;
- `grokking`: x + y mod 97 with 30 % training data, seeds 0, 1, 2 (the `power` preset, 20,000 steps);
- `regularisers`: the NCC and flatness regulariser sweeps on the grokking task, seeds 0, 1, 2 (6,000 steps each).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXPERIMENT = "grokking"
PLANS: dict[str, list[list[str]]] = {  # each: the arguments of one `ncflow sweep`
    "data": [["ncc-regularizer", "--dataset", "mnist-5k", "--seeds", "0,1,2"],
             ["flatness-regularizer", "--dataset", "mnist-5k", "--seeds", "0,1,2"]],
    "grokking": [["grokking", "--set", "operation=add,train_fraction=0.3", "--seeds", "0,1,2"]],
    "regularisers": [["ncc-regularizer", "--seeds", "0,1,2"], ["flatness-regularizer", "--seeds", "0,1,2"]],
}
EXPORT_EVERY_S = 600


def stamp(line: str) -> None:
    print(f"=== {line} {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}", flush=True)


def snapshot(workdir: Path, plans: list[str]) -> dict[str, str]:
    """Copy the code the job runs into workdir/code-PLANS (its own: two jobs of different plans may run at once),
    stamped with the checkout's commit; the environment using it."""
    code = workdir / f"code-{'-'.join(plans)}"
    shutil.rmtree(code, ignore_errors=True)
    code.mkdir(parents=True)
    for package in ("ncflow", "ncshared", "analysis"):
        shutil.copytree(ROOT / package, code / package, ignore=shutil.ignore_patterns("__pycache__"))
    env = {**os.environ, "PYTHONPATH": str(code), "NCFLOW_RECORD_DIR": str(workdir / "records"),
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "ncshared.provenance", "--stamp", str(code), "--checkout", str(ROOT)],
                   env=env, check=False)
    return env


def carry(action: str, uri: str, folder: Path, env: dict[str, str]) -> None:
    flag = "--out" if action == "export" else "--from"
    subprocess.run([sys.executable, str(ROOT / "tools" / "carry_runs.py"), action, "--tracking-uri", uri,
                    flag, str(folder)], env=env, check=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plan", default="all", help=f"all, or some of {', '.join(PLANS)} joined by commas")
    parser.add_argument("--workdir", type=Path, default=ROOT / "grokking")
    parser.add_argument("--carried", type=Path, default=ROOT / "docs" / "han-et-al" / "runs")
    parser.add_argument("--workers", type=int, default=1, help="sweep workers (one thread each)")
    args = parser.parse_args()
    names = list(PLANS) if args.plan == "all" else args.plan.split(",")
    unknown = [name for name in names if name not in PLANS]
    if unknown:
        parser.error(f"--plan: unknown plan {unknown[0]!r}; allowed: all, {', '.join(PLANS)}")
    args.workdir.mkdir(parents=True, exist_ok=True)
    args.carried.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{args.workdir.resolve() / 'mlflow.db'}"
    stamp(f"start on {os.cpu_count()} cores, plans {','.join(names)}")
    env = snapshot(args.workdir, names)
    carry("import", uri, args.carried, env)
    stop = threading.Event()

    def export_now_and_then() -> None:
        while not stop.wait(EXPORT_EVERY_S):
            carry("export", uri, args.carried, env)

    threading.Thread(target=export_now_and_then, daemon=True).start()
    failed = 0
    for name in names:
        for sweep in PLANS[name]:
            stamp(f"sweep {' '.join(sweep)}")
            started = time.time()
            done = subprocess.run([sys.executable, "-m", "ncflow.cli", "sweep", *sweep, "--set", "threads=1",
                                   "--workers", str(args.workers),
                                   "--experiment", EXPERIMENT, "--tracking-uri", uri,
                                   "--storage", str(args.workdir / "optuna.journal"), "--quiet"], env=env, check=False)
            failed += done.returncode != 0
            print(f"sweep {sweep[0]} ended with status {done.returncode} after {time.time() - started:.0f} s",
                  flush=True)
            carry("export", uri, args.carried, env)
    stop.set()
    stamp("end")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
