"""Write docs/han-et-al.md from a store of Han et al.'s runs (generated, never edited).

    python tools/han_doc.py --tracking-uri sqlite:///grokking/mlflow.db

It writes the figures and the claims table (`analysis.han_et_al`, `analysis.han_figures`: what `ncflow-analysis han`
writes) into docs/han-et-al/, and docs/han-et-al.md around them: the commands that train the runs, every finished
run with its wall time (its MLflow start and end) and machine (its provenance tags), how these runs differ from the
paper's, the figures and the claims with their verdicts. The text around the numbers is fixed; every number comes from
the runs, and the verdicts from `analysis.han_et_al`'s tests (their margins stated there and under the table).
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mlflow import MlflowClient

from analysis.han_et_al import TESTS, UNREGULARISED, HanRuns, claims_table, read_han
from analysis.han_figures import write_han_report
from analysis.render import count
from ncshared import schema
from ncshared.mlflow_env import resolve_tracking_uri

STORE_NAME = ("the runs of the commands below (their finished runs are carried in docs/han-et-al/runs; "
              "`tools/carry_runs.py import` loads them into a store)")
COMMANDS = """\
# the whole program as one background job (tools/grokking_program.py): its own store grokking/mlflow.db, each sweep
# exactly once per point, finished runs exported to docs/han-et-al/runs; it resumes wherever it stopped
nohup nice -n 5 python tools/grokking_program.py >> grokking/program.log 2>&1 &
# which runs these `ncflow sweep`s, each with --set threads=1 --experiment grokking --tracking-uri sqlite:///grokking/mlflow.db:
ncflow sweep ncc-regularizer --dataset mnist-5k --seeds 0,1,2        # engine: MLP-5, Han et al.'s SGD, 100 epochs
ncflow sweep flatness-regularizer --dataset mnist-5k --seeds 0,1,2   # the control, λ = 1e-4 with and without an unplug at epoch 30
ncflow sweep grokking --set operation=add,train_fraction=0.3 --seeds 0,1,2   # x + y mod 97, 30 %, 20,000 steps
ncflow sweep ncc-regularizer --seeds 0,1,2      # the grokking task, 6,000 steps: the control (λ = 0), λ ∈ {1e-4, 1e-3, 1e-2}
ncflow sweep flatness-regularizer --seeds 0,1,2 # the grokking task: the control, λ = 1e-4, and 1e-4 unplugged at step 3,000
# one grokking run by hand: ncflow grok --operation add --train-fraction 0.3 --seed 0"""

DIFFERENCES = """\
- **Grokking.** Han et al. follow Power et al.: a 2-layer transformer, AdamW at lr 1e-4 with weight decay 1, 50 % of
  the equations for training, 10⁶ optimiser steps, three seeds. ncflow's default (`ncflow grok`, preset `power`) is
  what a CPU finishes: p = 97 with 30 % training data, 20,000 steps at lr 1e-3 (weight decay 1, β = (0.9, 0.98),
  10 warm-up steps, batches of 512), a transformer of 2 layers, d_model 128, 4 heads, MLP 512. Their setting is the
  `han` preset (about 3 days on 2 CPU cores). Fewer steps at a 10× larger rate: grokking comes in thousands of steps
  instead of hundreds of thousands, and the markers are read on an evaluation grid of {eval_every}.
- **The regularisers.** Han et al. regularise a CIFAR-10 ResNet (ResNet-18 for NCC, ResNet-10 for flatness, SGD
  lr 0.01, momentum 0.9, batch 64, 250 epochs). Here they run on mnist-5k (5,000 MNIST digits) with an MLP-5 and
  their SGD setting for 100 epochs, and on the grokking task for 6,000 steps: small models and data, so the claims
  are tested on a different pair than theirs.
- **The unplug.** Their code also switches the weight decay, multiplies the learning rate by 10 and starts a cosine
  schedule when it removes the flatness regulariser; their paper names none of this. Here the unplug removes the
  regulariser and changes nothing else unless a run sets `unplug_weight_decay`, `unplug_lr_factor` or
  `unplug_schedule` (each run's params say which)."""


def device_models(uri: str, run_ids: list[str]) -> dict[str, str]:
    """Run id → the device model its provenance tags name (CPU or GPU), or `not recorded`."""
    client = MlflowClient(tracking_uri=uri)
    return {run_id: client.get_run(run_id).data.tags.get(schema.TAG_DEVICE_MODEL, "not recorded")
            for run_id in run_ids}


def runs_section(han: HanRuns, uri: str) -> list[str]:
    """Every finished run: task, arm, seed, wall time, device and threads; the totals."""
    runs = han.runs
    if runs.empty:
        return ["No finished run yet.", ""]
    models = device_models(uri, [str(run_id) for run_id in runs["run_id"]])
    arm_of = {run_id: (setting, arm) for setting in han.settings for arm, ids in setting.arms.items()
              for run_id in ids}
    minutes = (runs["end_time"] - runs["start_time"]).astype(float) / 60_000
    lines = [f"{count(len(runs), 'finished run')}, {minutes.sum() / 60:.1f} run-hours of training.", "",
             "| run | task | arm | seed | wall time (min) | device | threads |", "|---|---|---|---|---|---|---|"]
    for (run_id, row), wall in zip(runs.iterrows(), minutes):
        device = f"{row.get('env_device') or '?'}: {models[str(run_id)]}"
        if str(run_id) in arm_of:
            setting, arm = arm_of[str(run_id)]
            task, treatment = setting.label, arm.label(setting.unit)
        else:  # a second run of an arm's seed (the two sweeps' λ = 0 controls): listed, not counted
            task, treatment = str(row.get("dataset", "?")), "unregularised, a repeat of its seed (not counted)"
        lines.append(f"| `{row['run_name']}` | {task} | {treatment} | {row.get('seed', '—')} | "
                     f"{wall:.1f} | {device} | {row.get('env_threads') or '—'} |")
    return lines + [""]


def grid_of(han: HanRuns) -> str:
    """The grokking runs' evaluation interval(s), from their params."""
    steps = sorted({int(v) for v in han.runs.get("eval_every", pd.Series(dtype=float)).dropna()
                    if any(s.grokking for s in han.settings)})
    return " / ".join(f"{s:,} steps" for s in steps) or "(no grokking run yet)"


def settings_section(han: HanRuns) -> list[str]:
    """What each setting ran: its task, the unit, the arms and their run counts (the params these runs share)."""
    lines = ["| task | unit | arms (finished runs) | shared params |", "|---|---|---|---|"]
    for setting in han.settings:
        arms = ", ".join(f"{arm.label(setting.unit)} ({len(ids)})" for arm, ids in sorted(setting.arms.items()))
        keys = ("p", "operation", "train_fraction", "steps", "lr", "weight_decay", "arch", "depth", "epochs",
                "phase1_epochs", "optimizer", "batch_size")
        shared = ", ".join(f"{k} {setting.params[k]}" for k in keys if k in setting.params)
        lines.append(f"| {setting.label} | {setting.unit} | {arms} | {shared} |")
    return lines + [""]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracking-uri", required=True)
    parser.add_argument("--experiment", default=None, help="only this experiment (default: every experiment)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    args = parser.parse_args()
    uri = resolve_tracking_uri(args.tracking_uri)
    han = read_han(uri, args.experiment)
    figure_dir = args.out / "han-et-al"
    written = write_han_report(han, figure_dir, ("png",))
    figures = [path for path in written if path.suffix == ".png"]
    table = claims_table(han)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    unregularised = sum(len(s.arms.get(UNREGULARISED, [])) for s in han.settings if s.grokking)
    lines = [
        "# Han et al.: grokking, and the NCC and flatness regularisers", "",
        (f"Generated {stamp} by `python tools/han_doc.py` from {STORE_NAME}; do not edit. Paper: Han et al., "
        "\"Flatness is Necessary, Neural Collapse is Not: Rethinking Generalization via Grokking\". "
        f"{count(len(han.runs), 'finished run')}, {unregularised} of them unregularised grokking runs."), "",
        "## What was run", "", "```bash", COMMANDS, "```", "",
        ("Each run is grouped by its params, not by the sweep that made it (`analysis/han_et_al.py`): per task and "
        "setting, the arms found —"), "", *settings_section(han),
        "## The runs", "", *runs_section(han, uri),
        "## How this differs from the paper", "", DIFFERENCES.format(eval_every=grid_of(han)), "",
        "## Figures", "",
        ("G1: grokking (their Fig. 1) — accuracies, NCC and flatness against the optimiser step with the markers; R1: "
        "the NCC regulariser (their Fig. 2); R2: the flatness regulariser with and without unplug (their Fig. 4). "
        "Drawn only where runs exist."), "",
        *([f"![{path.stem}](han-et-al/{path.name})" for path in figures] or ["No figure yet: no finished run."]), "",
        "## The claims", "",
        ("Each claim is a test on the runs (`analysis/han_et_al.py`), judged per task; \"not enough runs\" names what "
        "is missing. The margins were set for what they mean, not tuned to the paper:"), "",
        *[f"- **{name}** {test}" for name, test in TESTS.items()], "",
        table.to_markdown().split("\n\n- ", 1)[0], "",
        ("Also as `ncflow-analysis han --tracking-uri URI --out DIR` (figures and `claims.md`); here "
        "[han-et-al/claims.md](han-et-al/claims.md)."), "",
    ]
    (args.out / "han-et-al.md").write_text("\n".join(lines), encoding="utf-8")
    claims = figure_dir / "claims.md"
    claims.write_text(claims.read_text(encoding="utf-8").replace(uri, STORE_NAME), encoding="utf-8")
    print(f"wrote {args.out / 'han-et-al.md'} and {count(len(figures), 'figure')} from {count(len(han.runs), 'finished run')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
