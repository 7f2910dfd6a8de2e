"""`--layerwise`: every hidden layer's output from the same eval pass, its collapse metrics, and what a run keeps."""

import io

import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from ncflow.cli.main import main
from ncflow.collapse.metrics import collapse_metrics, feature_collapse
from ncflow.engine.data import load_dataset
from ncflow.engine.models import MLP, ResNet20, build_model, predict_in_chunks, predict_layers_in_chunks
from ncflow.engine.optional_metrics import layer_collapse, layer_collapse_epochs, layer_names
from ncshared import schema
from ncshared.run_config import RunConfig

TINY = ["--depth", "2", "--width", "64", "--phase1-epochs", "3", "--phase2-epochs", "3"]


def hand_mlp() -> MLP:
    """A 3-layer ReLU MLP on 2 inputs, width 2, whose layer outputs are worked out by hand below."""
    model = MLP(2, 2, depth=3, width=2)
    linears = [m for m in model.hidden if isinstance(m, torch.nn.Linear)] + [model.head]
    weights = [[[1.0, 0.0], [0.0, -1.0]], [[1.0, 1.0], [1.0, -1.0]], [[2.0, 0.0], [0.0, 2.0]], [[1.0, 0.0], [0.0, 1.0]]]
    biases = [[0.0, 1.0], [0.0, 0.0], [-1.0, -5.0], [0.0, 0.0]]
    with torch.no_grad():
        for linear, weight, bias in zip(linears, weights, biases):
            linear.weight.copy_(torch.tensor(weight))
            linear.bias.copy_(torch.tensor(bias))
    return model


def test_mlp_layer_outputs_are_the_hand_computed_ones():
    x = torch.tensor([[2.0, 3.0], [1.0, -1.0]])
    # layer 1: relu([x0, 1 − x1]) = [2, 0], [1, 2]; layer 2: relu([a+b, a−b]) = [2, 2], [3, 0];
    # layer 3: relu(2h − [1, 5]) = [3, 0], [5, 0]; logits = layer 3 (identity head).
    logits, features, layers = predict_layers_in_chunks(hand_mlp(), x, chunk_size=1)
    expected = [[[2.0, 0.0], [1.0, 2.0]], [[2.0, 2.0], [3.0, 0.0]], [[3.0, 0.0], [5.0, 0.0]]]
    assert [layer.tolist() for layer in layers] == expected
    assert features.tolist() == expected[-1] and logits.tolist() == expected[-1]
    assert torch.equal(predict_in_chunks(hand_mlp(), x)[1], features)  # the same features as the plain pass


def test_resnet20_layers_are_three_pooled_stages_and_the_pooled_vector():
    torch.manual_seed(0)
    model = ResNet20(1, 10).double()
    x = torch.randn(6, 1, 28, 28, dtype=torch.float64)
    logits, features, layers = predict_layers_in_chunks(model, x, chunk_size=4)
    assert [tuple(layer.shape) for layer in layers] == [(6, 64), (6, 128), (6, 256), (6, 64)]
    plain_logits, plain_features = predict_in_chunks(model, x)
    assert torch.allclose(features, plain_features, atol=1e-12) and torch.equal(layers[-1], features)
    assert torch.allclose(logits, plain_logits, atol=1e-12)


def test_layer_metrics_copy_the_last_layer_and_compute_the_others():
    features = torch.tensor([[2.0, 0.0], [1.0, 2.0], [0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1])
    # class means (1.5, 1) and (0.5, 1); μ_G (1, 1): Tr Σ_B = 0.25, Tr Σ_W = (0.25+1+0.25+1+0.25+0+0.25+0)/4 = 0.75.
    assert feature_collapse(features, labels, 2)["nc1"] == pytest.approx(3.0)
    penultimate = {schema.NC_PREFIX + name: float(index) for index, name in enumerate(schema.LAYER_METRIC_NAMES)}
    values = layer_collapse([features, features], labels, 2, penultimate)
    assert values["layers/1/nc1"] == pytest.approx(3.0)
    assert values["layers/1/fn"] == pytest.approx((2 + 5 ** 0.5 + 1 + 2 ** 0.5) / 4)
    assert [values[f"layers/2/{name}"] for name in schema.LAYER_METRIC_NAMES] == [0.0, 1.0, 2.0, 3.0]
    weight = torch.eye(2, dtype=torch.float64)
    full = collapse_metrics(features, labels, weight, torch.zeros(2, dtype=torch.float64), 2)
    assert {name: full[name] for name in schema.LAYER_METRIC_NAMES} == pytest.approx(feature_collapse(features, labels, 2))


def test_layer_t_nc_is_each_layers_first_epoch_below_the_threshold():
    config = RunConfig(depth=2, layerwise=True)
    assert layer_names(config) == ("layers/1/nc1", "layers/1/nc1_pinv", "layers/1/nc2", "layers/1/fn",
                                   "layers/2/nc1", "layers/2/nc1_pinv", "layers/2/nc2", "layers/2/fn")
    history = [{"epoch": 1.0, "layers/1/nc1": 0.5, "layers/2/nc1": 0.2},
               {"epoch": 2.0, "layers/1/nc1": 0.3, "layers/2/nc1": 0.05},
               {"epoch": 3.0, "layers/1/nc1": 0.2, "layers/2/nc1": 0.01}]
    assert layer_collapse_epochs(history, config, threshold=0.1) == {"collapse/layers/2/T_NC": 2.0}
    assert layer_names(RunConfig(arch="resnet20", layerwise=True))[-1] == "layers/4/fn"
    assert layer_names(RunConfig(depth=2)) == ()


def test_train_layerwise_logs_every_layer_and_its_files(cli_store: str, tmp_path):
    result = CliRunner().invoke(main, ["train", "--quiet", *TINY, "--lr", "0.01", "--nc1-threshold", "0.9",
                                       "--layerwise", "--checkpoints", "all"])
    assert result.exit_code == 0, result.output
    client = MlflowClient(cli_store)
    (run,) = client.search_runs([client.get_experiment_by_name("ncflow").experiment_id])
    run_id, metrics = run.info.run_id, run.data.metrics
    assert run.data.params["layerwise"] == "true" and run.info.run_name == "mlp2-relu-w64-wd2e-04-digits-s0"
    for name in layer_names(RunConfig(depth=2, layerwise=True)):
        assert [m.step for m in client.get_metric_history(run_id, name)] == [1, 2, 3, 4, 5, 6], name
    history = {key: [m.value for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]
               for key in ("nc/nc1", "layers/2/nc1", "layers/1/nc1")}
    assert history["layers/2/nc1"] == history["nc/nc1"]  # the last layer is the penultimate feature
    assert metrics["collapse/layers/2/T_NC"] == metrics["collapse/T_NC"]
    # Layer 1 at epoch 6 from the saved model: the logged value is its NC1 on the full training set.
    state = torch.load(client.download_artifacts(run_id, "checkpoints/last.pt", str(tmp_path)), weights_only=True)
    data = load_dataset("digits")
    model = build_model("mlp", data.input_shape, data.num_classes, 2, 64, "relu")
    model.load_state_dict(state["model"])
    _, _, layers = predict_layers_in_chunks(model, data.train_x)
    assert history["layers/1/nc1"][-1] == pytest.approx(feature_collapse(layers[0], data.train_y, 10)["nc1"], rel=1e-6)
    table = pd.read_csv(io.StringIO(open(client.download_artifacts(run_id, schema.LAYERS_FILE, str(tmp_path))).read()))
    assert list(table.columns) == ["epoch", *layer_names(RunConfig(depth=2, layerwise=True))]
    assert table["layers/1/nc1"].tolist() == pytest.approx(history["layers/1/nc1"])
    figures = {a.path for a in client.list_artifacts(run_id, "figures")}
    assert schema.LAYERS_FIGURE in figures
    history_csv = pd.read_csv(client.download_artifacts(run_id, schema.HISTORY_FILE, str(tmp_path)))
    assert list(history_csv.columns) == list(schema.HISTORY_COLUMNS)  # history.csv keeps its columns


SMALL = {"dataset": "synthetic", "synthetic_classes": "4", "synthetic_shape": "1x4x4", "synthetic_per_class": "16",
         "depth": "3", "width": "32", "batch_size": "16", "phase1_epochs": "3", "phase2_epochs": "3",
         "checkpoint_every": "2", "layerwise": "true", "imbalance_ratio": "2"}


def test_a_crashed_layerwise_imbalanced_run_resumes_to_the_uninterrupted_history(tmp_path, monkeypatch, crash_measure):
    from ncflow.engine.config import build_config
    from ncflow.tracked import resume as resuming
    from ncflow.tracked import train as training

    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    restore = crash_measure(5, "simulated crash")
    config = build_config(None, {**SMALL, "tracking_uri": store})
    with pytest.raises(RuntimeError, match="simulated"):
        training.train(config, progress=False, record_dir=tmp_path / "records")
    client = MlflowClient(store)
    (run,) = client.search_runs([client.get_experiment_by_name("ncflow").experiment_id])
    restore()
    resumed = resuming.resume(run.info.run_id, tracking_uri=store, progress=False, record_dir=tmp_path / "records")
    straight = training.train(config, progress=False, record_dir=tmp_path / "records")
    timeless = [[{k: v for k, v in row.items() if k != "time/epoch_s"} for row in result.history]
                for result in (resumed, straight)]
    assert timeless[0] == timeless[1] and "layers/2/nc1" in timeless[0][0] and "nc/minority_collapse" in timeless[0][0]
    for key in ("layers/1/nc1", "layers/3/fn", "nc/minority_collapse"):  # one value per epoch, none twice
        assert sorted(m.step for m in client.get_metric_history(run.info.run_id, key)) == [1, 2, 3, 4, 5, 6], key
    assert client.get_run(run.info.run_id).data.tags["ncflow.class_counts"] == "16,16,8,8"


def test_resnet20_layerwise_measures_its_stages_and_pooled_vector(tmp_path, monkeypatch):
    from ncflow.engine.config import build_config
    from ncflow.tracked import train as training

    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    config = build_config(None, {**SMALL, "imbalance_ratio": "1", "arch": "resnet20", "synthetic_shape": "3x8x8",
                                 "optimizer": "sgd", "lr": "0.05", "phase1_epochs": "1", "phase2_epochs": "0",
                                 "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"})
    row = training.train(config, progress=False, record_dir=tmp_path / "records").history[0]
    assert all(row[f"layers/{layer}/nc1"] > 0 for layer in (1, 2, 3, 4))
    assert [row[f"layers/4/{name}"] for name in schema.LAYER_METRIC_NAMES] == \
        [row[f"nc/{name}"] for name in schema.LAYER_METRIC_NAMES]
