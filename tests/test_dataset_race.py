"""Two workers opening runs on the same data race to insert one MLflow dataset row: the loser retries and links it."""

from __future__ import annotations

import pytest
from mlflow.exceptions import MlflowException

from ncflow.tracked import mlflow_run


@pytest.mark.parametrize(("message", "retry"), [
    ("(sqlite3.IntegrityError) UNIQUE constraint failed: datasets.experiment_id, datasets.name, datasets.digest", True),
    ('duplicate key value violates unique constraint "dataset_pk"', True),
    ("database is locked", True),
    ("RESOURCE_DOES_NOT_EXIST: run abc", False),
])
def test_the_insert_race_is_retried_and_nothing_else(message, retry):
    assert mlflow_run.dataset_insert_race(MlflowException(message)) is retry


def test_a_lost_race_links_the_dataset_on_the_next_call(mlflow_store, monkeypatch):
    """The first log_inputs fails as the loser of the race does; the run still gets its dataset input."""
    import mlflow.data
    import numpy as np
    from mlflow.entities import Dataset, DatasetInput

    client = mlflow_store.client
    run_id = client.create_run(mlflow_store.experiment()).info.run_id
    dataset = mlflow.data.from_numpy(np.zeros((3, 2)), name="digits", digest="abc")
    real, calls = client.log_inputs, []

    def lose_once(run, datasets):
        calls.append(run)
        if len(calls) == 1:
            raise MlflowException("(sqlite3.IntegrityError) UNIQUE constraint failed: datasets.experiment_id")
        return real(run, datasets=datasets)

    monkeypatch.setattr(client, "log_inputs", lambda run, datasets: lose_once(run, datasets))
    mlflow_run.retried(lambda: client.log_inputs(run_id, datasets=[DatasetInput(Dataset(**dataset.to_dict()))]),
                       when=mlflow_run.dataset_insert_race, delays=(0.0,), attempts=5)
    assert len(calls) == 2 and [i.dataset.name for i in client.get_run(run_id).inputs.dataset_inputs] == ["digits"]
