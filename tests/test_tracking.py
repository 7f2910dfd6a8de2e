"""`ncflow/tracked/mlflow_run.py` against a real temp sqlite store: run set-up, params, lookups, logging, checkpoints."""

from __future__ import annotations

import pytest
from mlflow.entities import Param
from mlflow.tracking import MlflowClient

from ncflow.engine.config import ConfigError, build_config, condition_hash
from ncflow.tracked import mlflow_run
from ncshared import schema


@pytest.fixture
def store(tmp_path, monkeypatch) -> str:
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def config_in(store: str, **changes):
    return build_config(None, {"tracking_uri": store, **changes})


def test_open_run_writes_name_tags_and_every_param(store):
    config = config_in(store, depth=3, weight_decay=1e-4)
    client = mlflow_run.client_for(config)
    run_id = mlflow_run.open_run(client, config, sweep="depth", extra_tags={schema.TAG_TRIAL: "ncflow-depth#4"})
    run = client.get_run(run_id)
    assert run.info.run_name == "mlp3-relu-w512-wd1e-04-digits-s0"
    assert client.get_experiment(run.info.experiment_id).name == "ncflow"
    tags = run.data.tags
    assert tags[schema.TAG_KIND] == schema.KIND_TRAIN and tags[schema.TAG_STATUS] == schema.STATUS_RUNNING
    assert tags[schema.TAG_CONDITION] == condition_hash(config) and tags[schema.TAG_SWEEP] == "depth"
    assert tags[schema.TAG_TRIAL] == "ncflow-depth#4"
    assert run.data.params == config.as_params()


def test_adopted_run_keeps_typed_params_and_rejects_conflicts(store, monkeypatch):
    client = MlflowClient(store)
    experiment_id = client.create_experiment("Default-like")
    run_id = client.create_run(experiment_id).info.run_id
    # `mlflow run -P weight_decay=2e-4 -P seed=1.0` logs the values as typed: the same numbers ncflow means.
    client.log_batch(run_id, params=[Param("weight_decay", "2e-4"), Param("seed", "1.0")], synchronous=True)
    monkeypatch.setenv("MLFLOW_RUN_ID", run_id)
    config = config_in(store, weight_decay=2e-4, seed=1)
    adopted = mlflow_run.open_run(client, mlflow_run.with_adopted_experiment(client, config))
    assert adopted == run_id
    assert client.get_run(run_id).data.params["experiment"] == "Default-like"
    other = client.create_run(experiment_id).info.run_id
    client.log_batch(other, params=[Param("depth", "7")], synchronous=True)
    monkeypatch.setenv("MLFLOW_RUN_ID", other)
    with pytest.raises(ConfigError, match="depth: the run already has '7', the configuration says '5'"):
        mlflow_run.open_run(client, config)


def test_logged_param_matches_compares_parsed_values():
    assert mlflow_run.logged_param_matches("weight_decay", "2e-4", "0.0002")
    assert mlflow_run.logged_param_matches("seed", "1.0", "1")
    assert mlflow_run.logged_param_matches("nesterov", "True", "true")
    assert not mlflow_run.logged_param_matches("depth", "7", "5")


def finished_run(client: MlflowClient, experiment_id: str, config, seed_param: str, fn_star: float | None) -> str:
    run_id = client.create_run(experiment_id).info.run_id
    params = {**config.as_params(), "seed": seed_param}
    client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()], synchronous=True)
    status = schema.STATUS_COLLAPSED if fn_star is not None else schema.STATUS_NOT_COLLAPSED
    client.set_tag(run_id, schema.TAG_CONDITION, condition_hash(config))
    client.set_tag(run_id, schema.TAG_STATUS, status)
    if fn_star is not None:
        client.log_metric(run_id, schema.FN_STAR, fn_star, step=0)
    client.set_terminated(run_id, "FINISHED")
    return run_id


def test_reference_fn_star_is_the_mean_of_other_seeds(store):
    client = MlflowClient(store)
    experiment_id = mlflow_run.ensure_experiment(client, "ncflow")
    config = config_in(store, seed=0)
    finished_run(client, experiment_id, config, "0.0", 100.0)  # this run's own seed: never its own reference
    finished_run(client, experiment_id, config, "1", 2.0)
    finished_run(client, experiment_id, config, "2", 4.0)
    finished_run(client, experiment_id, config, "3", None)  # did not collapse: no fn*
    finished_run(client, experiment_id, config.replace(depth=7), "4", 50.0)  # another condition
    assert mlflow_run.reference_fn_star(client, config) == pytest.approx(3.0)
    assert mlflow_run.reference_fn_star(client, config.replace(experiment="empty")) is None


def test_checkpoint_round_trip_corrupt_file_and_missing_run(store, tmp_path):
    import torch

    client = MlflowClient(store)
    run_id = client.create_run(mlflow_run.ensure_experiment(client, "ncflow")).info.run_id
    path = tmp_path / schema.CHECKPOINT_DIR / "last.pt"
    path.parent.mkdir()
    torch.save({"epoch": 3, "model": {"w": torch.arange(4.0)}}, path)
    client.log_artifact(run_id, str(path), artifact_path=schema.CHECKPOINT_DIR)
    state = mlflow_run.load_checkpoint(client, run_id, schema.CHECKPOINT_LAST)
    assert state["epoch"] == 3 and state["model"]["w"].tolist() == [0.0, 1.0, 2.0, 3.0]
    path.write_bytes(path.read_bytes()[:40])  # truncated, as a kill during a copy leaves it
    with pytest.raises(ValueError, match=f"{path.name} is not a readable checkpoint"):
        mlflow_run.load_state_file(path, str(path))
    path.write_bytes(b"")
    with pytest.raises(ValueError, match="is not a readable checkpoint"):
        mlflow_run.load_state_file(path, str(path))
    with pytest.raises(ConfigError, match="resume: no MLflow run 'nope' in sqlite:///"):
        mlflow_run.require_run(client, "nope", "resume")


def test_bad_stores_are_one_line_config_errors(tmp_path):
    for uri, message in [
        ("bogus://", "is not a store MLflow can open"),
        ("sqlite:////proc/x.db", "cannot be written"),
        (f"sqlite:///{tmp_path}/missing/dir/m.db", "does not exist"),
        ("http://127.0.0.1:9", "no MLflow tracking server answers at http://127.0.0.1:9"),
    ]:
        with pytest.raises(ConfigError, match=message) as caught:
            mlflow_run.client_for_uri(uri)
        assert "\n" not in str(caught.value)
