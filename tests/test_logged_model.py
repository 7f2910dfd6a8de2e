"""The trained network back in one line: the run's MLflow model (`runs:/RUN_ID/model`, forward → logits), typed
configurations in checkpoints and config.json (older string-valued ones still read), and `load_network`, which
rebuilds the network from a run id or a checkpoint and reproduces the run's logged test accuracy."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow.pytorch
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from mlflow.tracking._tracking_service.utils import _use_tracking_uri

from ncflow.cli.main import main
from ncflow.engine.config import build_config, config_from_values
from ncflow.record import logged_model
from ncflow.record.local_record import RunRecord
from ncflow.tracked import mlflow_run, pack_train, rebuild
from ncshared import schema
from tests.mlflow_fixtures import local_store

SMALL = {"dataset": "synthetic", "synthetic_classes": "4", "synthetic_shape": "1x4x4", "synthetic_per_class": "16",
         "depth": "2", "width": "16", "batch_size": "16", "phase1_epochs": "2", "phase2_epochs": "2",
         "nesterov": "true", "log_model": "true"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, mlflow_template_db):
    """A pack of two seeds trained with log_model (one process, one MLflow run and one model each), once."""
    root = tmp_path_factory.mktemp("logged-model")
    store = local_store(root / "store", mlflow_template_db)
    store.experiment("ncflow")
    configs = [build_config(None, {**SMALL, "seed": seed, "tracking_uri": store.uri}) for seed in (0, 1)]
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_RUN_ID", raising=False)
        return store, pack_train.train_pack(configs, progress=False, record_dir=root / "records")


def test_each_member_logs_its_model_and_it_gives_the_checkpoints_logits(trained):
    store, results = trained
    for result in results:
        assert result.model and result.unshipped == 0
        with _use_tracking_uri(store.uri):
            network = mlflow.pytorch.load_model(f"runs:/{result.run_id}/{schema.MODEL_NAME}")
        rebuilt = rebuild.load_run(result.run_id, store.uri)  # from checkpoints/last.pt, the run's last epoch
        images = rebuilt.data().test_x
        assert torch.equal(network(images), rebuilt.network(images)[0])
        (model,) = logged_model.run_models(store.client, store.client.get_run(result.run_id), schema.MODEL_NAME)
        assert (model.status, model.tags[schema.TAG_MODEL_EPOCH], model.params["seed"]) == \
               ("READY", "4", str(rebuilt.config.seed))
        with _use_tracking_uri(store.uri):
            info = mlflow.models.get_model_info(f"models:/{model.model_id}")
        assert info.signature.inputs.to_dict() == [{"type": "tensor", "tensor-spec": {"dtype": "float32",
                                                                                   "shape": (-1, 1, 4, 4)}}]
        assert info.signature.outputs.to_dict() == [{"type": "tensor", "tensor-spec": {"dtype": "float32",
                                                                                    "shape": (-1, 4)}}]
        assert info.saved_input_example_info["type"] == "ndarray"


def test_load_network_reproduces_the_logged_test_accuracy_from_the_run_and_from_its_checkpoint(trained, tmp_path):
    store, results = trained
    run_id = results[0].run_id
    logged = store.client.get_run(run_id).data.metrics[schema.TEST_ACC]
    path = store.client.download_artifacts(run_id, schema.checkpoint_path(schema.CHECKPOINT_LAST), str(tmp_path))
    for source in (run_id, path):
        run = rebuild.load_run(source, store.uri)
        data = run.data()
        logits, features = rebuild.load_network(source, store.uri)(data.test_x)
        assert (logits.argmax(dim=1) == data.test_y).double().mean().item() == logged
        assert (run.epoch, features.shape) == (4, (len(data.test_y), 16))


def test_checkpoints_and_config_json_hold_typed_values_and_old_strings_still_read(trained, tmp_path):
    store, results = trained
    run_id = results[0].run_id
    path = store.client.download_artifacts(run_id, schema.checkpoint_path(schema.CHECKPOINT_LAST), str(tmp_path))
    state = torch.load(path, weights_only=True)
    saved = json.loads(open(store.client.download_artifacts(run_id, schema.CONFIG_FILE, str(tmp_path))).read())
    for config in (state["config"], saved):
        assert (config["depth"], config["lr"], config["nesterov"], config["milestones"], config["dataset"]) == \
               (2, 0.001, True, [300, 450], "synthetic")
    typed = config_from_values(saved)
    assert typed == mlflow_run.config_of_run(store.client, run_id)
    # A checkpoint from before: every value a string ('depth': '2'), as building the model from it once failed on.
    old = tmp_path / "old.pt"
    torch.save({**state, "config": typed.as_params()}, old)
    assert config_from_values(torch.load(old, weights_only=True)["config"]) == typed
    images = torch.randn(5, 1, 4, 4)
    assert torch.equal(rebuild.load_network(old)(images)[0], rebuild.load_network(path)(images)[0])


def test_shipping_a_model_again_keeps_one_and_a_later_epoch_replaces_it(trained):
    store, results = trained
    result = results[0]
    record = RunRecord(Path(result.record_dir))
    (entry,) = [entry for entry in record.entries() if entry["type"] == "model"]
    logged_model.ship(store.client, record, entry)  # shipped before the process could note it: nothing new
    (first,) = logged_model.run_models(store.client, store.client.get_run(result.run_id), schema.MODEL_NAME)
    logged_model.ship(store.client, record, {**entry, "epoch": 9})  # a resumed run that trained on
    (latest,) = logged_model.run_models(store.client, store.client.get_run(result.run_id), schema.MODEL_NAME)
    assert latest.model_id != first.model_id and latest.tags[schema.TAG_MODEL_EPOCH] == "9"


def test_no_log_model_logs_none_and_the_end_message_says_where_the_model_is(cli_store):
    tiny = ["--quiet", "--dataset", "synthetic", "--synthetic-shape", "1x4x4", "--synthetic-per-class", "8",
            "--depth", "1", "--width", "8", "--phase1-epochs", "1", "--phase2-epochs", "1"]
    with_model = CliRunner().invoke(main, ["train", *tiny, "--log-model"])
    without = CliRunner().invoke(main, ["train", *tiny, "--no-log-model"])
    assert with_model.exit_code == 0 and without.exit_code == 0, with_model.output + without.output
    (model_line,) = [line for line in with_model.output.splitlines() if line.startswith("  model ")]
    run_id, other = (next(line for line in result.output.splitlines() if line.startswith("run ")).split()[1][:-1]
                     for result in (with_model, without))
    assert f'mlflow.pytorch.load_model("runs:/{run_id}/model")' in model_line
    assert not [line for line in without.output.splitlines() if line.startswith("  model ")]
    client = mlflow_run.client_for_uri(cli_store)
    assert client.get_run(other).data.params["log_model"] == "false" and not client.get_run(other).outputs.model_outputs
    with _use_tracking_uri(cli_store):
        network = mlflow.pytorch.load_model(f"runs:/{run_id}/model")
    assert network(torch.from_numpy(np.zeros((3, 1, 4, 4), np.float32))).shape == (3, 10)
