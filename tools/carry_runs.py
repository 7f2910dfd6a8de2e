"""Carry finished ncflow training runs from one tracking store to another, as small files that can be committed.

    python tools/carry_runs.py export --tracking-uri sqlite:///reproduction/mlflow.db --out docs/reproduction/runs
    python tools/carry_runs.py import --tracking-uri sqlite:///reproduction/mlflow.db --from docs/reproduction/runs

MLflow has no built-in run export, and a long job such as `ncflow reproduce` can outlive the machine it started on
(its store is a git-ignored file). `export` writes one gzipped JSON per FINISHED training run: name, experiment,
times, params, the ncflow and description tags, the summary metrics and `history.csv` (every per-epoch value).
`import` recreates each as a FINISHED run with the same params, tags, summary metrics, per-epoch metrics (step =
epoch) and `history.csv` artifact, tagged `ncflow.carried_from` with the original run id; a run already carried, or the
original itself (importing into the store it was exported from), is skipped, so importing twice changes nothing,
and a carried run is exported under its original id. `ncflow reproduce` then counts the carried runs as done (a
FINISHED run of the condition and seed) and the report reads them like any other. Checkpoints are not carried.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import sys
from pathlib import Path

import pandas as pd
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ncshared import schema  # noqa: E402  (the checkout's contract, also when run as a script)

KEPT_TAG_PREFIXES = ("ncflow.", schema.TAG_RUN_NAME, schema.TAG_NOTE)
DROPPED_TAGS = (schema.TAG_HEARTBEAT, schema.TAG_PARENT_RUN)  # the parent run is not carried
BATCH = 900  # metrics per log_batch (MLflow allows 1,000)


def training_runs(client: MlflowClient) -> list:
    experiments = [e.experiment_id for e in client.search_experiments()]
    found, token = [], None
    while True:
        page = client.search_runs(experiments, f"tags.`{schema.TAG_KIND}` = '{schema.KIND_TRAIN}' and "
                                               "attributes.status = 'FINISHED'", max_results=1000, page_token=token)
        found += list(page)
        token = page.token
        if not token:
            return found


def export_runs(client: MlflowClient, out: Path) -> int:
    out.mkdir(parents=True, exist_ok=True)
    written = 0
    for run in training_runs(client):
        info, data = run.info, run.data
        original_id = data.tags.get(schema.TAG_CARRIED_FROM, info.run_id)  # a carried run keeps its file
        path = out / f"{info.run_name}-{original_id[:8]}.json.gz"
        if path.exists():
            continue
        history = Path(client.download_artifacts(info.run_id, schema.HISTORY_FILE)).read_text()
        record = {
            "run_id": info.run_id, "run_name": info.run_name,
            "experiment": client.get_experiment(info.experiment_id).name,
            "start_time": info.start_time, "end_time": info.end_time, "params": dict(data.params),
            "tags": {k: v for k, v in data.tags.items() if k.startswith(KEPT_TAG_PREFIXES) and k not in DROPPED_TAGS},
            "summary": {k: v for k, v in data.metrics.items() if k.startswith(schema.SUMMARY_PREFIXES)},
            "history": history,
        }
        path.write_bytes(gzip.compress(json.dumps(record, sort_keys=True).encode(), mtime=0))
        written += 1
    return written


def already_here(client: MlflowClient) -> set[str]:
    """The original ids of the runs this store holds: those carried in, and its own (a store exported from)."""
    here = set()
    for run in training_runs(client):
        here |= {run.info.run_id, run.data.tags.get(schema.TAG_CARRIED_FROM, run.info.run_id)}
    return here


def import_run(client: MlflowClient, record: dict) -> str:
    experiment = client.get_experiment_by_name(record["experiment"])
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(record["experiment"])
    tags = {**record["tags"], schema.TAG_CARRIED_FROM: record["run_id"]}
    run_id = client.create_run(experiment_id, start_time=record["start_time"], tags=tags,
                               run_name=record["run_name"]).info.run_id
    params = [Param(k, v) for k, v in record["params"].items()]
    for start in range(0, len(params), 100):
        client.log_batch(run_id, params=params[start:start + 100])
    history = pd.read_csv(io.StringIO(record["history"]))
    stamp = record["start_time"]
    metrics = [Metric(k, float(v), stamp, 0) for k, v in record["summary"].items()]
    columns = [name for name in history.columns if name != schema.HISTORY_EPOCH]
    for row in history.to_dict("records"):
        epoch = int(row[schema.HISTORY_EPOCH])
        metrics += [Metric(name, float(row[name]), stamp + epoch, epoch) for name in columns if pd.notna(row[name])]
    for start in range(0, len(metrics), BATCH):
        client.log_batch(run_id, metrics=metrics[start:start + BATCH])
    client.log_text(run_id, record["history"], schema.HISTORY_FILE)
    client.set_terminated(run_id, "FINISHED", end_time=record["end_time"])
    return run_id


def main() -> int:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("export", "import"))
    parser.add_argument("--tracking-uri", required=True)
    parser.add_argument("--out", type=Path, help="export: the folder to write")
    parser.add_argument("--from", dest="source", type=Path, help="import: the folder to read")
    args = parser.parse_args()
    client = MlflowClient(tracking_uri=args.tracking_uri)
    if args.action == "export":
        if args.out is None:
            parser.error("export needs --out")
        print(f"exported {export_runs(client, args.out)} runs to {args.out}")
        return 0
    if args.source is None:
        parser.error("import needs --from")
    done = already_here(client)
    count = 0
    for path in sorted(args.source.glob("*.json.gz")):
        record = json.loads(gzip.decompress(path.read_bytes()))
        if record["run_id"] not in done:
            import_run(client, record)
            count += 1
    print(f"imported {count} runs from {args.source} into {args.tracking_uri}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
