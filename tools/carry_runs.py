"""Carry ncflow training runs from one tracking store to another, as small files that can be committed.

    python tools/carry_runs.py export --tracking-uri sqlite:///reproduction/mlflow.db --out docs/reproduction/runs \
        [--unfinished docs/reproduction/unfinished]
    python tools/carry_runs.py import --tracking-uri sqlite:///reproduction/mlflow.db --from docs/reproduction/runs \
        [--unfinished docs/reproduction/unfinished]
    python tools/carry_runs.py resume --tracking-uri sqlite:///reproduction/mlflow.db

MLflow has no built-in run export, and a long job such as `ncflow reproduce` can outlive the machine it started on
(its store is a git-ignored file). `export` writes one gzipped JSON per FINISHED training run: name, experiment,
times, params, the ncflow and description tags (the provenance among them), the summary metrics, `history.csv` (every
per-epoch value) and the dataset inputs. `import` recreates each as a FINISHED run with the same params, tags, summary
metrics, per-epoch metrics (step = epoch), dataset inputs and `history.csv` artifact, tagged `ncflow.carried_from` with the original run id; a run already carried, or the
original itself (importing into the store it was exported from), is skipped, so importing twice changes nothing,
and a carried run is exported under its original id. `ncflow reproduce` then counts the carried runs as done (a
FINISHED run of the condition and seed) and the report reads them like any other. Checkpoints are not carried, nor
the patch of a run whose code differed from its commit (its `ncflow.git_dirty` tag is).

A run interrupted mid-way is carried too, with `--unfinished DIR`: `export` writes, for each training run that has
not finished and has no FINISHED run of its condition and seed (the furthest one of each), its params, tags, summary
metrics, dataset inputs, every epoch up to its newest resume state (the local record's `state.pt` under
`--record-dir`, else MLflow's `checkpoints/last.pt`) and that state itself — and removes the file of a run that has
finished since. `import` recreates each such run KILLED, with its rows and the state as `checkpoints/last.pt`, so
`resume` (`ncflow train --resume` of every interrupted run of the store, the furthest of each condition and seed)
continues it on the new machine from that epoch, as if it had never moved.
"""

from __future__ import annotations

import argparse
import base64
import gzip
import io
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, Run, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ncshared import schema  # noqa: E402  (the checkout's contract, also when run as a script)

KEPT_TAG_PREFIXES = ("ncflow.", schema.TAG_RUN_NAME, schema.TAG_NOTE)
DROPPED_TAGS = (schema.TAG_HEARTBEAT, schema.TAG_PARENT_RUN)  # the parent run is not carried
BATCH = 900  # metrics per log_batch (MLflow allows 1,000)


def training_runs(client: MlflowClient, finished: bool = True) -> list:
    """The store's FINISHED training runs (`finished`), else all of them."""
    experiments = [e.experiment_id for e in client.search_experiments()]
    found, token = [], None
    status = " and attributes.status = 'FINISHED'" if finished else ""
    while True:
        page = client.search_runs(experiments, f"tags.`{schema.TAG_KIND}` = '{schema.KIND_TRAIN}'{status}",
                                  max_results=1000, page_token=token)
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
        partial = path.with_name(f".{path.name}.{os.getpid()}")  # atomic: two exporters never leave half a file
        partial.write_bytes(gzip.compress(json.dumps(run_record(client, run, history), sort_keys=True).encode(), mtime=0))
        os.replace(partial, path)
        written += 1
    return written


def run_record(client: MlflowClient, run: Run, history: str) -> dict:
    """What a carried run's file holds: where it ran, its params, kept tags, summary, history and dataset inputs."""
    info, data = run.info, run.data
    return {
        "run_id": data.tags.get(schema.TAG_CARRIED_FROM, info.run_id), "run_name": info.run_name,
        "experiment": client.get_experiment(info.experiment_id).name,
        "start_time": info.start_time, "end_time": info.end_time, "params": dict(data.params),
        "tags": {k: v for k, v in data.tags.items() if k.startswith(KEPT_TAG_PREFIXES) and k not in DROPPED_TAGS},
        "summary": {k: v for k, v in data.metrics.items() if k.startswith(schema.SUMMARY_PREFIXES)},
        "history": history,
        "inputs": [{"dataset": item.dataset.to_dictionary(), "tags": {tag.key: tag.value for tag in item.tags}}
                   for item in (run.inputs.dataset_inputs if run.inputs else [])],
    }


def point(run: Run) -> tuple[str, float]:
    """A run's grid point: its condition and seed."""
    return run.data.tags.get(schema.TAG_CONDITION, ""), float(run.data.params.get("seed", "nan"))


def interrupted_runs(client: MlflowClient) -> list[Run]:
    """The training runs that have not finished and whose point (condition, seed) has no FINISHED run."""
    everything = training_runs(client, finished=False)
    done = {point(run) for run in everything if run.info.status == "FINISHED"}
    return [run for run in everything if run.info.status != "FINISHED" and point(run) not in done]


def resume_state(client: MlflowClient, run: Run, record_dir: Path) -> bytes | None:
    """The newest resume state of a run: its local record's `state.pt`, else MLflow's `checkpoints/last.pt`."""
    local = record_dir / run.info.run_id / "state.pt"
    if local.is_file():
        return local.read_bytes()  # written by atomic rename: whole, never half
    try:
        last = client.download_artifacts(run.info.run_id, schema.checkpoint_path(schema.CHECKPOINT_LAST))
        return Path(last).read_bytes()
    except MlflowException:
        return None


def export_unfinished(client: MlflowClient, out: Path, record_dir: Path) -> int:
    """Each interrupted run (the furthest of its point) with its resume state, into `out`; files of runs that have
    finished since are removed. A file already holding the same epoch is left as it is."""
    import torch

    out.mkdir(parents=True, exist_ok=True)
    furthest: dict[tuple[str, float], tuple[int, Run, bytes, list]] = {}
    for run in interrupted_runs(client):
        state_bytes = resume_state(client, run, record_dir)
        if state_bytes is None:
            continue
        state = torch.load(io.BytesIO(state_bytes), map_location="cpu", weights_only=True)
        epoch = int(state["epoch"])
        if point(run) not in furthest or epoch > furthest[point(run)][0]:
            furthest[point(run)] = (epoch, run, state_bytes, list(state["history"]))
    written = 0
    for epoch, run, state_bytes, rows in furthest.values():
        record = run_record(client, run, pd.DataFrame(rows).to_csv(index=False))
        path = out / f"{run.info.run_name}-{record['run_id'][:8]}.json.gz"
        if path.exists() and json.loads(gzip.decompress(path.read_bytes())).get("epoch") == epoch:
            continue
        record.update({"epoch": epoch, "state": base64.b64encode(state_bytes).decode()})
        path.write_bytes(gzip.compress(json.dumps(record, sort_keys=True).encode(), mtime=0))
        written += 1
    finished = training_runs(client)
    ids, points = already_here(client), {point(run) for run in finished}
    for path in out.glob("*.json.gz"):  # a run that finished since, or whose point another run finished
        record = json.loads(gzip.decompress(path.read_bytes()))
        seed = float(record["params"].get("seed", "nan"))
        if record["run_id"] in ids or (record["tags"].get(schema.TAG_CONDITION, ""), seed) in points:
            path.unlink()
    return written


def already_here(client: MlflowClient, finished: bool = True) -> set[str]:
    """The original ids of the (FINISHED, unless not `finished`) runs this store holds: those carried in, and its own
    (a store exported from)."""
    here = set()
    for run in training_runs(client, finished):
        here |= {run.info.run_id, run.data.tags.get(schema.TAG_CARRIED_FROM, run.info.run_id)}
    return here


def import_run(client: MlflowClient, record: dict) -> str:
    """Recreate a carried run: FINISHED, or (an unfinished one) KILLED with its resume state as
    `checkpoints/last.pt`."""
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
    inputs = [DatasetInput(Dataset.from_dictionary(item["dataset"]), [InputTag(k, v) for k, v in item["tags"].items()])
              for item in record.get("inputs", [])]
    if inputs:
        client.log_inputs(run_id, datasets=inputs)
    if "state" in record:  # unfinished: the state to resume from; it ends KILLED, as an interrupted run does
        with tempfile.TemporaryDirectory() as tmp:
            last = Path(tmp) / f"{schema.CHECKPOINT_LAST}.pt"
            last.write_bytes(base64.b64decode(record["state"]))
            client.log_artifact(run_id, str(last), schema.CHECKPOINT_DIR)
        reason = f"interrupted after epoch {record['epoch']}; carried to this store by tools/carry_runs.py"
        client.log_batch(run_id, tags=[RunTag(schema.TAG_STATUS, schema.STATUS_FAILED),
                                       RunTag(schema.TAG_FAIL_REASON, reason)])
        client.set_terminated(run_id, "KILLED")
        return run_id
    client.log_text(run_id, record["history"], schema.HISTORY_FILE)
    client.set_terminated(run_id, "FINISHED", end_time=record["end_time"])
    return run_id


def import_folder(client: MlflowClient, folder: Path, here: set[str]) -> int:
    """Import every carried run of `folder` whose original id is not in `here`."""
    count = 0
    for path in sorted(folder.glob("*.json.gz")):
        record = json.loads(gzip.decompress(path.read_bytes()))
        if record["run_id"] not in here:
            import_run(client, record)
            count += 1
    return count


def resume_interrupted(client: MlflowClient, tracking_uri: str) -> int:
    """`ncflow train --resume` each interrupted run (the furthest of its point, by its last logged epoch), one after
    another; how many finished. A run that cannot be resumed says why and is left as it is."""
    furthest: dict[tuple[str, float], tuple[int, Run]] = {}
    for run in interrupted_runs(client):
        epoch = max((m.step for m in client.get_metric_history(run.info.run_id, schema.NC1)), default=0)
        if point(run) not in furthest or epoch > furthest[point(run)][0]:
            furthest[point(run)] = (epoch, run)
    finished = 0
    for epoch, run in furthest.values():
        print(f"resuming {run.info.run_name} ({run.info.run_id}) after epoch {epoch}", flush=True)
        command = [sys.executable, "-m", "ncflow.cli", "train", "--resume", run.info.run_id, "--quiet",
                   "--tracking-uri", tracking_uri]
        finished += subprocess.run(command, check=False).returncode == 0
    return finished


def main() -> int:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("export", "import", "resume"))
    parser.add_argument("--tracking-uri", required=True)
    parser.add_argument("--out", type=Path, help="export: the folder to write")
    parser.add_argument("--from", dest="source", type=Path, help="import: the folder to read")
    parser.add_argument("--unfinished", type=Path, metavar="DIR", help="export/import: the interrupted runs' folder")
    parser.add_argument("--record-dir", type=Path, help="export: where the runs' local records are "
                        "[default: NCFLOW_RECORD_DIR, else .ncflow/runs]")
    args = parser.parse_args()
    client = MlflowClient(tracking_uri=args.tracking_uri)
    if args.action == "resume":
        print(f"resumed {resume_interrupted(client, args.tracking_uri)} interrupted runs to their end")
        return 0
    if args.action == "export":
        if args.out is None:
            parser.error("export needs --out")
        print(f"exported {export_runs(client, args.out)} runs to {args.out}")
        if args.unfinished is not None:
            records = args.record_dir or Path(os.environ.get("NCFLOW_RECORD_DIR") or ".ncflow/runs")
            count = export_unfinished(client, args.unfinished, records.expanduser().absolute())
            print(f"exported {count} interrupted runs to {args.unfinished}")
        return 0
    if args.source is None:
        parser.error("import needs --from")
    count = import_folder(client, args.source, already_here(client))
    print(f"imported {count} runs from {args.source} into {args.tracking_uri}")
    if args.unfinished is not None and args.unfinished.is_dir():
        count = import_folder(client, args.unfinished, already_here(client, finished=False))
        print(f"imported {count} interrupted runs from {args.unfinished}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
