"""`mlflow_run.sweep_parent_run`: the one lookup of a sweep's parent run, used by the sweep and its end message."""

from __future__ import annotations

import pytest

from ncflow.tracked import mlflow_run
from ncflow.tracked.messages import sweep_end_message
from ncshared import schema
from ncshared.mlflow_env import ADOPTED_RUN_VARIABLE
from tests.mlflow_fixtures import local_store, log_sweep_parent


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.delenv(ADOPTED_RUN_VARIABLE, raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return local_store(tmp_path)


def test_the_latest_run_of_that_sweep_is_its_parent(store):
    experiment_id = store.experiment()
    assert mlflow_run.sweep_parent_run(store.client, experiment_id, "depth") is None
    assert mlflow_run.sweep_parent_run(store.client, None, "depth") is None
    parent_tags = {schema.TAG_KIND: schema.KIND_SWEEP, schema.TAG_SWEEP: "depth"}
    latest = store.client.create_run(experiment_id, start_time=2000, tags=parent_tags, run_name="sweep-depth")
    store.client.create_run(experiment_id, start_time=1000, tags=parent_tags, run_name="sweep-depth")  # created later
    log_sweep_parent(store.client, experiment_id, "width")
    store.client.create_run(experiment_id, tags={schema.TAG_SWEEP: "depth"})  # a child run, not a parent
    assert mlflow_run.sweep_parent_run(store.client, experiment_id, "depth").info.run_id == latest.info.run_id

    lines = sweep_end_message(store.uri, "ncflow", "depth")
    assert lines[0] == f"  parent run  {latest.info.run_id} (sweep-depth), experiment ncflow"
    assert lines[-1] == f"  tables      ncflow-analysis report --sweep depth --tracking-uri {store.uri}"
    assert sweep_end_message(store.uri, "ncflow", "nosuch") == []
    assert sweep_end_message(store.uri, "no-experiment", "depth") == []


def test_under_mlflow_run_the_adopted_run_is_the_parent(store, monkeypatch):
    experiment_id = store.experiment()
    log_sweep_parent(store.client, experiment_id, "depth")
    adopted = store.client.create_run(experiment_id, run_name="mlflow-run-made-me").info.run_id
    monkeypatch.setenv(ADOPTED_RUN_VARIABLE, adopted)
    assert mlflow_run.sweep_parent_run(store.client, experiment_id, "depth").info.run_id == adopted
    assert sweep_end_message(store.uri, "ncflow", "depth")[0] == (
        f"  parent run  {adopted} (mlflow-run-made-me), experiment ncflow"
    )
