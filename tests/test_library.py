"""ncflow as a library: hooks and the monitor on models ncflow did not build, their MLflow runs as the analysis
reads them, and bad input refused before any run exists."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from analysis.store import load_runs
from ncflow import CollapseMonitor, FeatureTap, MonitorInputError
from ncflow.collapse.metrics import METRIC_NAMES, collapse_metrics, feature_collapse
from ncflow.library.capture import as_rows
from ncshared import schema

NUM_CLASSES = 4


class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.mlp = nn.Sequential(nn.Flatten(), nn.Linear(3 * 6 * 6, 16), nn.Tanh())


class Classifier(nn.Module):
    """Nested modules, a classifier under a dotted name, dropout (so eval mode matters) and a dict output."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = Encoder()
        self.dropout = nn.Dropout(0.5)
        self.head = nn.ModuleDict({"out": nn.Linear(16, NUM_CLASSES)})

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        hidden = self.encoder.mlp(torch.relu(self.encoder.conv(images)))
        return {"logits": self.head["out"](self.dropout(hidden))}


def images(seed: int, per_class: int = 12) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(NUM_CLASSES).repeat(per_class)
    x = torch.randn(len(labels), 1, 6, 6, generator=generator) + labels[:, None, None, None].float()
    return TensorDataset(x, labels)


def reference_features(model: Classifier, data: TensorDataset, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The penultimate features and the conv output pooled to 2×2, by hand in eval mode (batched as the loader
    is, so float32 rounds the same)."""
    model.eval()
    hidden, pooled = [], []
    with torch.no_grad():
        for x in data.tensors[0].split(batch_size):
            conv = model.encoder.conv(x)
            hidden.append(model.encoder.mlp(torch.relu(conv)))
            pooled.append(nn.functional.adaptive_avg_pool2d(conv, 2).flatten(1))
    return torch.cat(hidden), torch.cat(pooled)


def test_the_monitor_logs_what_the_in_memory_path_computes(mlflow_store):
    torch.manual_seed(0)
    model, train, test = Classifier(), images(0), images(1, per_class=3)
    model.train()
    monitor = CollapseMonitor(model, NUM_CLASSES, DataLoader(train, batch_size=7), DataLoader(test, batch_size=5),
                              classifier="head.out", layers=["encoder.conv"], arch="toy-cnn", dataset="blobs",
                              seed=3, tracking_uri=mlflow_store.uri, experiment="library")
    row = monitor.measure(1, train_loss=0.5)
    assert model.training and torch.is_grad_enabled()  # the mode and grad state are restored
    assert not model.head["out"]._forward_pre_hooks and not model.encoder.conv._forward_hooks  # hooks removed
    features, pooled = reference_features(model, train, 7)
    head = model.head["out"]
    expected = collapse_metrics(features, train.tensors[1], head.weight.detach(), head.bias.detach())
    for name in METRIC_NAMES:
        assert row[schema.NC_PREFIX + name] == pytest.approx(expected[name], rel=1e-9, abs=1e-12), name
    layer = feature_collapse(pooled, train.tensors[1], NUM_CLASSES)
    assert row[schema.layer_metric(1, "nc1")] == pytest.approx(layer["nc1"], rel=1e-9)
    logits = features @ head.weight.detach().T + head.bias.detach()
    assert row[schema.TRAIN_ACC] == pytest.approx((logits.argmax(1) == train.tensors[1]).double().mean().item())
    assert row[schema.TRAIN_LOSS] == 0.5
    test_features, _ = reference_features(model, test, 5)
    test_expected = collapse_metrics(test_features, test.tensors[1], head.weight.detach(), head.bias.detach())
    assert row[schema.TEST_NC1] == pytest.approx(test_expected["nc1"], rel=1e-9)
    model.train()
    monitor.measure(2)
    summary = monitor.finish()
    assert summary[schema.COLLAPSE_THRESHOLD] == 0.01
    client = mlflow_store.client
    run = client.get_run(monitor.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["arch"] == "toy-cnn" and run.data.params["seed"] == "3"
    assert run.data.tags[schema.TAG_KIND] == schema.KIND_TRAIN
    assert run.data.tags[schema.TAG_SOURCE] == schema.SOURCE_MONITOR
    assert run.data.tags[schema.TAG_STATUS] == schema.STATUS_NOT_COLLAPSED
    assert "Metric steps count **epochs**: 2 measurements" in run.data.tags[schema.TAG_NOTE]
    history = client.get_metric_history(monitor.run_id, schema.NC1)
    assert [m.step for m in history] == [1, 2] and history[0].value == row[schema.NC1]
    artifacts = {a.path for a in client.list_artifacts(monitor.run_id)}
    assert {schema.HISTORY_FILE, "figures", schema.ANGLES_FILE} <= artifacts
    frame = load_runs(mlflow_store.uri, experiment="library")
    assert list(frame["run_name"]) == ["toy-cnn-blobs-s3"] and list(frame["source"]) == [schema.SOURCE_MONITOR]


def test_collapse_is_detected_and_summarised(mlflow_store):
    """A classifier on features that are their class means: NC1 = 0 from the first step, T_NC = 1."""
    labels = torch.arange(NUM_CLASSES).repeat(5)
    means = torch.eye(NUM_CLASSES) * 3.0
    model = nn.Sequential(nn.Embedding.from_pretrained(means), nn.Linear(NUM_CLASSES, NUM_CLASSES))
    loader = DataLoader(TensorDataset(labels, labels), batch_size=6)
    with CollapseMonitor(model, NUM_CLASSES, loader, classifier="1", arch="lookup", dataset="labels",
                         tracking_uri=mlflow_store.uri, nc1_threshold=0.05) as monitor:
        monitor.measure(1)
        monitor.measure(2)
    assert monitor.detector.t_nc == 1 and monitor.detector.fn_star == pytest.approx(3.0)
    run = mlflow_store.client.get_run(monitor.run_id)
    assert run.data.metrics[schema.T_NC] == 1 and run.data.tags[schema.TAG_STATUS] == schema.STATUS_COLLAPSED


def test_token_features_and_last_positions_become_rows():
    features = torch.arange(2 * 3 * 2, dtype=torch.float32).reshape(2, 3, 2)
    token_labels = torch.tensor([[1, -100, 0], [2, 2, -100]])
    rows, labels = as_rows(features, token_labels)
    assert labels.tolist() == [1, 0, 2, 2] and rows[:, 0].tolist() == [0.0, 4.0, 6.0, 8.0]
    rows, labels = as_rows(features, torch.tensor([0, 1]))
    assert rows.tolist() == [[4.0, 5.0], [10.0, 11.0]]
    with pytest.raises(MonitorInputError, match=r"shape \(2, 3, 2\) do not match labels of shape \(5,\)"):
        as_rows(features, torch.zeros(5, dtype=torch.long))


def test_the_tap_keeps_nothing_after_its_block():
    model = Classifier()
    with FeatureTap(model, "head.out", ["encoder.conv"]) as tap:
        model(torch.randn(2, 1, 6, 6))
        assert tap.take("head.out").shape == (2, 16)
        with pytest.raises(MonitorInputError, match="was not called"):
            tap.take("head.out")
    assert not model.head["out"]._forward_pre_hooks and not tap._captured


@pytest.mark.parametrize(("change", "message"), [
    ({"classifier": "head.outt"}, r"classifier: no module named 'head.outt' in Classifier \(closest: head.out"),
    ({"classifier": "encoder.mlp"}, r"classifier: 'encoder.mlp' is a Sequential, not an nn.Linear"),
    ({"num_classes": 5}, r"num_classes: 5, but the classifier 'head.out' has 4 outputs"),
    ({"layers": ["encoder.cnv"]}, r"layers: no module named 'encoder.cnv'.*closest: encoder.conv"),
    ({"train_loader": [torch.randn(3, 1, 6, 6)]}, r"loader: a batch must be \(inputs, labels, ...\)"),
    ({"train_loader": [{"images": torch.randn(3, 1, 6, 6)}]}, r"loader: a batch mapping has no 'labels'"),
    ({"train_loader": [(torch.randn(4, 1, 6, 6), torch.tensor([0, 1, 2, 4]))]},
     r"labels must lie in range\(4\); batch 0 has label 4"),
    ({"train_loader": [(torch.randn(4, 1, 6, 6), torch.tensor([0, 1, 2, 3])),
                       (torch.full((4, 1, 6, 6), math.nan), torch.tensor([0, 1, 2, 3]))]},
     r"non-finite values \(NaN or inf\), first in batch 1"),
    ({"train_loader": [(torch.randn(4, 1, 6, 6), torch.tensor([0.0, 1, 2, 3]))]}, r"labels must be integers"),
    ({"nc1_threshold": 1.5}, r"nc1_threshold: expected a number in \(0, 1\)"),
])
def test_bad_input_is_one_error_before_any_run(mlflow_store, change, message):
    options = {"model": Classifier(), "num_classes": NUM_CLASSES, "train_loader": DataLoader(images(0), batch_size=8),
               "classifier": "head.out", "tracking_uri": mlflow_store.uri, **change}
    with pytest.raises(ValueError, match=message):
        CollapseMonitor(**options).measure(1)
    assert mlflow_store.client.search_runs([e.experiment_id for e in mlflow_store.client.search_experiments()]) == []
