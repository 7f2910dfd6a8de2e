"""A grokking run's speed: optimiser steps per second against a plain loop, and what the evaluations cost.

What: the default grokking configuration (the `power` preset: x + y mod 97, 30 % training data, a 2-layer d = 128
transformer, batches of 512, AdamW) trained by `ncflow.grokking.train.train_grokking` — its loop with the warm-up
schedule, the unplug bookkeeping and the CollapseMonitor measuring every `eval_every` steps into MLflow (a temp
sqlite store) — and by a plain reference loop written here: the same model, optimiser, batches and loss, nothing
else (what a researcher writes without ncflow). Both in this process, one thread, alternated `--repeats` times.

Reported:
- steps/s of each, from the time between two evaluations minus that evaluation's own time (the monitor's
  `time/epoch_s`), so run setup and MLflow's start and end are not counted; ncflow / reference (goal ≥ 1×, within
  noise);
- one evaluation's time (the monitor's two passes over the 2,823 training and 6,586 validation equations, every
  metric, one MLflow batch) against the `eval_every` steps of training it follows (goal ≤ 10 %);
- with `--store URI`: the wall time of each finished default run in that store (start to end), with its machine and
  thread count — the wall time of a default grokking run as it ran.

Run: `OMP_NUM_THREADS=1 python benchmarks/bench_grokking.py [--steps 400] [--repeats 2] [--store sqlite:///grokking/mlflow.db]`
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ncflow.grokking.config import build_grok_config
from ncflow.grokking.train import build, train_grokking
from ncshared import schema


def reference_steps_per_s(steps: int) -> float:
    """A plain loop over the same model, optimiser and batches: steps per second."""
    config = build_grok_config()
    task, model = build(config, torch.device("cpu"))
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, betas=(config.beta1, config.beta2),
                                  weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(config.seed)
    batch = min(config.batch_size, len(task.train_y))
    order, cursor = torch.randperm(len(task.train_y), generator=generator), 0
    model.train()
    started = time.perf_counter()
    for _ in range(steps):
        if cursor + batch > len(task.train_y):
            order, cursor = torch.randperm(len(task.train_y), generator=generator), 0
        index = order[cursor:cursor + batch]
        cursor += batch
        loss = F.cross_entropy(model(task.train_x[index]), task.train_y[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return steps / (time.perf_counter() - started)


def ncflow_steps_per_s(steps: int, store: str) -> tuple[float, float]:
    """ncflow's loop: (training steps per second between its two evaluations, one evaluation's seconds)."""
    config = build_grok_config(steps=2 * steps, eval_every=steps)
    seen: list[tuple[float, float]] = []  # (time the evaluation returned, its own time)
    train_grokking(config, store, "bench", progress=lambda step, row: seen.append(
        (time.perf_counter(), row[schema.EPOCH_TIME])))
    (_, _), (second, evaluation) = seen
    first = seen[0][0]
    return steps / (second - first - evaluation), evaluation


def default_run_walls(store: str) -> list[str]:
    """Each finished default (`power` preset, no regulariser) grokking run in `store`: wall time, machine, threads."""
    from mlflow import MlflowClient

    client = MlflowClient(store)
    lines = []
    default = build_grok_config().as_params()
    for experiment in client.search_experiments():
        for run in client.search_runs([experiment.experiment_id], "attributes.status = 'FINISHED'"):
            params, tags = run.data.params, run.data.tags
            if tags.get(schema.TAG_STEP_UNIT) != "step" or any(
                    params.get(k) != v for k, v in default.items() if k not in ("seed", "nc1_threshold")):
                continue
            wall = (run.info.end_time - run.info.start_time) / 1000
            lines.append(f"{run.info.run_name}: {wall:,.0f} s ({wall / 60:.1f} min) for {params['steps']} steps on "
                         f"{tags.get(schema.TAG_DEVICE_MODEL, '?')}, {tags.get(schema.TAG_THREADS, '?')} thread(s)")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400, help="steps between the two measured evaluations")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--store", default=None, help="a tracking store holding real default grokking runs")
    args = parser.parse_args()
    torch.set_num_threads(1)
    reference, ours, evaluations = [], [], []
    with tempfile.TemporaryDirectory() as folder:
        store = f"sqlite:///{Path(folder) / 'bench.db'}"
        for _ in range(args.repeats):
            reference.append(reference_steps_per_s(args.steps))
            rate, evaluation = ncflow_steps_per_s(args.steps, store)
            ours.append(rate)
            evaluations.append(evaluation)
    ref, mine, evaluation = statistics.median(reference), statistics.median(ours), statistics.median(evaluations)
    eval_every = build_grok_config().eval_every
    print(f"reference loop: {ref:.2f} steps/s  (runs: {', '.join(f'{r:.2f}' for r in reference)})")
    print(f"ncflow loop:    {mine:.2f} steps/s  (runs: {', '.join(f'{r:.2f}' for r in ours)})")
    print(f"ncflow / reference: {mine / ref:.3f}x")
    print(f"one evaluation: {evaluation:.2f} s; {eval_every} training steps: {eval_every / mine:.2f} s; "
          f"evaluation / training = {evaluation / (eval_every / mine):.1%}")
    if args.store:
        for line in default_run_walls(args.store):
            print(line)


if __name__ == "__main__":
    main()
