"""The MLflow run a `CollapseMonitor` writes to: found or created, given the params and tags the analysis reads.

Which run: the `run_id` given (e.g. a Lightning `MLFlowLogger`'s), else the active run (`mlflow.active_run()`, as
Hugging Face's `MLflowCallback` starts one), else a new run in `experiment`, which the monitor then also ends. It is
opened only after the first measurement succeeded, so bad input never leaves a run behind.

What it carries, so that `ncflow-analysis runs` and `report` list it next to engine runs: the tags `ncflow.kind =
train`, `ncflow.condition` (a hash of the params but the seed), `ncflow.status`, the ncflow version and commit and
the environment (`ncflow.tracked.provenance.environment`); the params `arch`, `dataset`, `seed`, `num_classes`, the
monitor's settings and whatever `params` the user adds. A param the run already holds with the same value is left
alone (Hugging Face logs `seed` itself); a different value is an error. Per-step metrics go out in one
`log_batch` per measurement with `synchronous=False`, so logging does not wait on the tracking server; `close`
waits for them.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunStatus, RunTag

from ncflow import __version__
from ncflow.library.capture import MonitorInputError
from ncflow.tracked.mlflow_run import ensure_experiment
from ncshared import provenance, schema
from ncshared.mlflow_env import resolve_tracking_uri

NON_CONDITION = frozenset({"seed", "experiment", "tracking_uri"})


def condition_tag(params: Mapping[str, str]) -> str:
    """12 hex digits of sha256 over the sorted params that define the condition (all but the seed)."""
    kept = {name: value for name, value in params.items() if name not in NON_CONDITION}
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:12]


class MonitorRun:
    """One MLflow run for a monitor's measurements."""

    def __init__(self, tracking_uri: str | None, experiment: str, run_id: str | None, run_name: str) -> None:
        self.tracking_uri = resolve_tracking_uri(tracking_uri)
        self.experiment, self.requested_run_id, self.run_name = experiment, run_id, run_name
        self.client = MlflowClient(self.tracking_uri)
        self.run_id: str | None = None
        self.owned = False  # ncflow created the run, so it ends it

    def open(self, params: Mapping[str, str], tags: Mapping[str, str]) -> str:
        """Find or create the run and write its params and tags; its id."""
        active = mlflow.active_run()
        if self.requested_run_id:
            self.run_id = self.requested_run_id
        elif active is not None:
            self.run_id = active.info.run_id
        else:
            experiment_id = ensure_experiment(self.client, self.experiment)
            self.run_id = self.client.create_run(experiment_id, run_name=self.run_name).info.run_id
            self.owned = True
        logged = self.client.get_run(self.run_id).data.params
        clashes = [f"{name}={logged[name]!r} (ncflow: {value!r})" for name, value in params.items()
                   if name in logged and logged[name] != value]
        if clashes:
            raise MonitorInputError(f"params: the run already holds {', '.join(clashes)}")
        all_tags = {schema.TAG_KIND: schema.KIND_TRAIN, schema.TAG_CONDITION: condition_tag(params),
                    schema.TAG_STATUS: schema.STATUS_RUNNING, **tags}
        if self.owned:
            all_tags[schema.TAG_RUN_NAME] = self.run_name
        self.client.log_batch(self.run_id, params=[Param(k, v) for k, v in params.items() if k not in logged],
                              tags=[RunTag(k, v) for k, v in all_tags.items()], synchronous=True)
        return self.run_id

    def log_step(self, step: int, metrics: Mapping[str, float], timestamp_ms: int) -> None:
        """The step's metrics in one batch, sent in the background."""
        batch = [Metric(key, float(value), timestamp_ms, step) for key, value in metrics.items()]
        for start in range(0, len(batch), 1000):  # MLflow's limit on metrics per batch
            self.client.log_batch(self.run_id, metrics=batch[start:start + 1000], synchronous=False)

    def log_summary(self, metrics: Mapping[str, float], timestamp_ms: int) -> None:
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), timestamp_ms, 0) for k, v in metrics.items()],
                              synchronous=True)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()], synchronous=True)

    def artifact(self, path: str, content: bytes) -> None:
        """Write `content` as the artifact `path` (a/b.png goes to the folder a)."""
        with tempfile.TemporaryDirectory() as folder:
            local = Path(folder) / Path(path).name
            local.write_bytes(content)
            parent = str(Path(path).parent)
            self.client.log_artifact(self.run_id, str(local), None if parent == "." else parent)

    def close(self, failed: bool) -> None:
        """Wait for the background logging; end the run when ncflow created it."""
        mlflow.flush_async_logging()
        if self.owned:
            self.client.set_terminated(self.run_id, RunStatus.to_string(RunStatus.FAILED if failed else
                                                                        RunStatus.FINISHED))


def code_tags() -> dict[str, Any]:
    """ncflow's version and the commit of its code (the user's own code is theirs to record)."""
    return {schema.TAG_VERSION: __version__, schema.TAG_GIT_COMMIT: provenance.code_state().commit}
