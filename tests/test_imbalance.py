"""Class imbalance: exact class counts for both profiles, the seeded subsample, minority collapse, and a real run."""

import json

import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from ncflow.cli.main import main
from ncflow.collapse.metrics import class_nc1, collapse_metrics
from ncflow.engine.config import ConfigError
from ncflow.engine.data import load_dataset
from ncflow.engine.imbalance import class_counts, minority_classes, subsample
from ncshared import schema

TINY = ["--depth", "2", "--width", "64", "--phase1-epochs", "2", "--phase2-epochs", "2"]


def test_step_and_exp_counts_are_exact():
    assert class_counts([500] * 10, 10, "step") == [500] * 5 + [50] * 5
    assert class_counts([520, 500, 510, 530], 4, "step") == [500, 500, 125, 125]  # n_max = the smallest class
    # exp: n_c = round(500 · 100^(−c/9)); 100^(1/3) = 4.6416, so class 3 has round(107.72) = 108.
    assert class_counts([500] * 10, 100, "exp") == [500, 300, 180, 108, 65, 39, 23, 14, 8, 5]
    assert class_counts([7, 9, 8], 1, "step") == [7, 9, 8]  # balanced: untouched
    assert minority_classes(10) == [5, 6, 7, 8, 9] and minority_classes(5) == [3, 4]
    with pytest.raises(ConfigError, match=r"^imbalance_ratio: 600 leaves .* expected at most 500$"):
        class_counts([500] * 10, 600, "step")


def test_subsample_keeps_the_counts_the_seed_decides_and_the_test_set_stays():
    data = load_dataset("digits")
    cut, counts = subsample(data, 10, "step", seed=0)
    smallest = int(torch.bincount(data.train_y).min())
    assert counts == [smallest] * 5 + [round(smallest / 10)] * 5
    assert torch.bincount(cut.train_y, minlength=10).tolist() == counts
    assert torch.equal(cut.test_x, data.test_x) and torch.equal(cut.test_y, data.test_y)
    kept_rows = {tuple(row.flatten().tolist()) for row in data.train_x}
    assert all(tuple(row.flatten().tolist()) in kept_rows for row in cut.train_x)  # rows of the training set, unscaled
    again, _ = subsample(data, 10, "step", seed=0)
    other, _ = subsample(data, 10, "step", seed=1)
    assert torch.equal(again.train_x, cut.train_x) and not torch.equal(other.train_x, cut.train_x)
    assert subsample(data, 1, "step", seed=0)[0] is data


def test_minority_collapse_is_one_when_the_minority_rows_are_equal():
    features = torch.tensor([[3.0, 0.0], [0.0, 3.0], [1.0, 1.0], [1.0, 1.2], [1.1, 1.0], [1.0, 1.0]],
                            dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 2, 3, 3])
    weight = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, 2.0]], dtype=torch.float64)
    values = collapse_metrics(features, labels, weight, torch.zeros(4, dtype=torch.float64), 4,
                              minority_classes=[2, 3])
    assert values["minority_collapse"] == pytest.approx(1.0)  # rows 2 and 3 point the same way
    # centred means: μ_G = (7.1/6, 7.2/6); m_2 = (1, 1.1) − μ_G, m_3 = (1.05, 1) − μ_G
    mean = torch.tensor([7.1, 7.2], dtype=torch.float64) / 6
    m2, m3 = torch.tensor([1.0, 1.1], dtype=torch.float64) - mean, torch.tensor([1.05, 1.0], dtype=torch.float64) - mean
    assert values["minority_mean_collapse"] == pytest.approx(float(m2 @ m3 / (m2.norm() * m3.norm())))
    spread = collapse_metrics(features, labels, weight[[0, 1, 0, 1]],
                              torch.zeros(4, dtype=torch.float64), 4, minority_classes=[2, 3])
    assert spread["minority_collapse"] == pytest.approx(0.0)  # orthogonal rows
    # per-class NC1: V_c / Tr Σ_B, weighted by n_c / N it sums to NC1
    per_class = class_nc1(features, labels, 4)
    counts = torch.bincount(labels).double()
    assert float((counts / 6) @ torch.tensor(per_class, dtype=torch.float64)) == pytest.approx(values["nc1"])
    assert per_class[0] == 0.0 and per_class[1] == 0.0  # one sample each: no spread


def test_train_imbalanced_logs_counts_minority_collapse_and_class_nc1(cli_store: str, tmp_path):
    result = CliRunner().invoke(main, ["train", "--quiet", *TINY, "--imbalance-ratio", "10"])
    assert result.exit_code == 0, result.output
    client = MlflowClient(cli_store)
    (run,) = client.search_runs([client.get_experiment_by_name("ncflow").experiment_id])
    run_id = run.info.run_id
    assert run.info.run_name == "mlp2-relu-w64-wd2e-04-digits-imb10-step-s0"
    smallest = int(torch.bincount(load_dataset("digits").train_y).min())
    counts = [smallest] * 5 + [round(smallest / 10)] * 5
    assert run.data.tags[schema.TAG_CLASS_COUNTS] == ",".join(map(str, counts))
    saved = json.loads(open(client.download_artifacts(run_id, schema.CLASS_COUNTS_FILE, str(tmp_path))).read())
    assert saved == {"counts": counts, "imbalance_ratio": 10.0, "imbalance_profile": "step",
                     "minority_classes": [5, 6, 7, 8, 9]}
    for name in schema.IMBALANCE_METRICS:
        values = [m.value for m in client.get_metric_history(run_id, name)]
        assert len(values) == 4 and all(-1.0 <= v <= 1.0 for v in values), name
    table = pd.read_csv(client.download_artifacts(run_id, schema.CLASS_NC1_FILE, str(tmp_path)))
    assert table["count"].tolist() == counts and table["minority"].tolist() == [False] * 5 + [True] * 5
    nc1 = run.data.metrics[schema.NC1]
    assert float((table["count"] / sum(counts)) @ table["nc1"]) == pytest.approx(nc1, rel=1e-5)
    assert run.data.params["imbalance_ratio"] == "10.0" and run.data.params["imbalance_profile"] == "step"


@pytest.mark.parametrize("args, message", [
    (["--imbalance-ratio", "0.5"], "imbalance_ratio: expected a number from 1 to"),
    (["--imbalance-profile", "linear"], "imbalance_profile: 'linear' is not one of step, exp"),
    (["--imbalance-ratio", "1000"], "imbalance_ratio: 1000 leaves the minority classes under one training sample"),
    (["--imbalance-ratio", "2", "--dataset", "synthetic", "--synthetic-classes", "3"],
     "imbalance_ratio: needs at least 4 classes (two minority classes to compare), got 3"),
])
def test_bad_imbalance_is_one_line_before_any_run(cli_store: str, args, message):
    result = CliRunner().invoke(main, ["train", "--quiet", *TINY, *args])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]  # after MLflow's own log lines
    assert len(errors) == 1 and errors[0].startswith(f"Error: {message}"), result.output
    experiment = MlflowClient(cli_store).get_experiment_by_name("ncflow")
    assert experiment is None or MlflowClient(cli_store).search_runs([experiment.experiment_id]) == []
