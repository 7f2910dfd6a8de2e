"""The real `ncflow train` CLI on `digits` into a temporary sqlite store: what lands in MLflow."""

import json
import math
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from ncflow.cli.main import main
from ncshared import schema

EPOCH_KEYS = set(schema.PER_EPOCH_METRICS)
TINY = ["--depth", "2", "--width", "64", "--phase1-epochs", "3", "--phase2-epochs", "3", "--checkpoint-every", "2"]


@pytest.fixture
def store(cli_store: str) -> str:
    return cli_store


def only_run(uri: str):
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("ncflow")
    runs = client.search_runs([experiment.experiment_id]) if experiment else []
    assert len(runs) == 1
    return client, runs[0]


def test_train_cli_logs_everything(store, tmp_path: Path):
    # lr 0.01 and nc1_threshold 0.9 make a 6-epoch run "collapse", so the collapse outputs are checked too.
    result = CliRunner().invoke(main, ["train", "--quiet", "--lr", "0.01", "--nc1-threshold", "0.9", *TINY])
    assert result.exit_code == 0, result.output
    client, run = only_run(store)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "mlp2-relu-w64-wd2e-04-digits-s0"
    assert run.data.params["depth"] == "2" and run.data.params["weight_decay"] == "0.0002"
    assert run.data.params["phase1_epochs"] == "3" and run.data.params["nc1_threshold"] == "0.9"
    tags = run.data.tags
    assert tags["ncflow.kind"] == "train" and tags["ncflow.status"] == "collapsed"
    assert len(tags["ncflow.condition"]) == 12
    for key in EPOCH_KEYS:
        history = client.get_metric_history(run.info.run_id, key)
        assert sorted(m.step for m in history) == [1, 2, 3, 4, 5, 6], key
    phases = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "phase")}
    assert phases == {1: 1.0, 2: 1.0, 3: 1.0, 4: 2.0, 5: 2.0, 6: 2.0}
    metrics = run.data.metrics
    assert metrics["collapse/threshold"] == 0.9
    t_nc = metrics["collapse/T_NC"]
    assert 1 <= t_nc <= 6
    fn_at_t_nc = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "nc/fn")}[int(t_nc)]
    assert metrics["collapse/fn_star"] == pytest.approx(fn_at_t_nc)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"history.csv", "config.json", "checkpoints", "figures"} <= artifacts
    checkpoints = {a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")}
    assert checkpoints == {"checkpoints/phase1_end.pt", "checkpoints/last.pt"}  # --checkpoints phase, the default
    assert [a.path for a in client.list_artifacts(run.info.run_id, "figures")] == [
        "figures/class_mean_angles.png", "figures/dynamics.png"]
    angles = json.loads(Path(client.download_artifacts(run.info.run_id, "class_mean_angles.json", str(tmp_path))).read_text())
    assert angles["simplex_angle_deg"] == pytest.approx(math.degrees(math.acos(-1 / 9))) and angles["pairs"] == 45
    assert angles["t_nc"] == int(t_nc) and len(angles["at_t_nc"]) == len(angles["at_end"]) == 45
    final_mean = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "nc/angle_mean_deg")}[6]
    assert sum(angles["at_end"]) / 45 == pytest.approx(final_mean, rel=1e-9)  # the end is the last epoch's state
    history = pd.read_csv(client.download_artifacts(run.info.run_id, "history.csv", str(tmp_path)))
    assert list(history["epoch"]) == [1, 2, 3, 4, 5, 6]
    for key in EPOCH_KEYS - {"time/epoch_s"}:
        logged = [m.value for m in sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)]
        assert list(history[key]) == pytest.approx(logged, rel=1e-12, nan_ok=True), key
    # The end of the run says where it is, and the description summarises it with the figure inlined.
    run_id, experiment_id = run.info.run_id, run.info.experiment_id
    lines = result.output.strip().splitlines()[-6:]
    assert lines[0] == f"run {run_id}: collapsed, T_NC={int(t_nc)}, fn*={metrics['collapse/fn_star']:.4f}"
    assert lines[1].split() == ["name", "mlp2-relu-w64-wd2e-04-digits-s0"]
    assert lines[2].split() == ["experiment", "ncflow", "(id", f"{experiment_id})"]
    assert lines[3].split() == ["store", store]
    assert lines[4].split() == ["figure", f"{run.info.artifact_uri}/figures/dynamics.png"]
    assert lines[5].split() == ["see", "it", "mlflow", "ui", "--backend-store-uri", store, "then",
                                f"http://127.0.0.1:5000/#/experiments/{experiment_id}/runs/{run_id}?workflowType=machine_learning"]
    note = tags["mlflow.note.content"]
    assert note.startswith(f"**collapsed** at **T_NC = {int(t_nc)}**, **fn\\* = {metrics['collapse/fn_star']:.4f}**")
    assert "(collapse: NC1 < ε = 0.9)" in note and "Phase 1 (cross-entropy) epochs 1–3, Phase 2" in note
    assert f"![dynamics](get-artifact?path=figures%2Fdynamics.png&run_uuid={run_id})" in note
    # The UI's views: log10 NC1 and fn, and the 0/1 series that steps to 1 at T_NC.
    nc1 = {m.step: m.value for m in client.get_metric_history(run_id, "nc/nc1")}
    log_nc1 = {m.step: m.value for m in client.get_metric_history(run_id, "NC/NC1_log10")}
    assert log_nc1 == pytest.approx({step: math.log10(value) for step, value in nc1.items()})
    under = {m.step: m.value for m in client.get_metric_history(run_id, "NC/under_eps")}
    assert under == {step: float(value < 0.9) for step, value in nc1.items()} and under[int(t_nc)] == 1.0
    assert "NC/NC1_log10" not in history.columns


@pytest.mark.parametrize("choice, kept", [
    ("all", {"phase1_end", "collapse", "last"}), ("last", {"last"}), ("none", set()),
])
def test_checkpoints_option_chooses_what_mlflow_keeps(store, choice, kept):
    result = CliRunner().invoke(main, ["train", "--quiet", "--lr", "0.01", "--nc1-threshold", "0.9", *TINY,
                                       "--checkpoints", choice])
    assert result.exit_code == 0, result.output
    client, run = only_run(store)
    assert run.data.tags["ncflow.status"] == "collapsed" and run.data.params["checkpoints"] == choice
    listed = {a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")}
    assert listed == {f"checkpoints/{name}.pt" for name in kept}


def test_boolean_fields_are_flags_and_the_mlproject_form_takes_a_value(store):
    from ncflow.cli.options import merge_value_forms

    assert merge_value_forms({"nesterov": None, "nesterov_value": "true"}) == {"nesterov": "true"}
    assert merge_value_forms({"nesterov": "false", "nesterov_value": "true"}) == {"nesterov": "false"}
    result = CliRunner().invoke(main, ["train", "--quiet", *TINY, "--optimizer", "sgd", "--nesterov"])
    assert result.exit_code == 0, result.output
    assert only_run(store)[1].data.params["nesterov"] == "true"
    help_text = CliRunner().invoke(main, ["train", "--help"]).output
    assert "--nesterov / --no-nesterov" in help_text and "--nesterov-value" not in help_text
    assert "--depth INTEGER" in help_text and "--activation [relu|gelu|tanh]" in help_text
    assert "--lr FLOAT" in help_text and "VALUE" not in help_text
    sections = [line for line in help_text.splitlines() if line.endswith("options:")]
    assert sections == ["Start options:", "Model options:", "Optimisation options:", "Protocol options:",
                        "Regulariser (Han et al.) options:", "Collapse options:", "Data options:", "Tracking options:", "Other options:"]


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("--depth", "0", "depth: expected an integer from 1 to 64, got 0"),
        ("--activation", "swish", "activation: 'swish' is not one of relu, gelu, tanh"),
        ("--weight-decay", "-1", "weight_decay: expected a finite number >= 0, got -1.0"),
        ("--nc1-threshold", "2", "nc1_threshold: expected auto or a number in (0, 1), got '2'"),
        ("--init-from", "0123456789abcdef", "init_from: no MLflow run '0123456789abcdef'"),
        ("--dataset", "imagenet", "dataset: 'imagenet' is not one of"),
        ("--matmul-precision", "tf32", "matmul_precision: 'tf32' is not one of highest, high"),
    ],
)
def test_bad_input_is_one_line_and_creates_no_run(store, option, value, message):
    result = CliRunner().invoke(main, ["train", "--quiet", *TINY, option, value])
    assert result.exit_code == 2
    error_lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(error_lines) == 1 and message in error_lines[0], result.output
    client = MlflowClient(store)
    experiment = client.get_experiment_by_name("ncflow")
    assert experiment is None or client.search_runs([experiment.experiment_id]) == []


def test_etf_classifier_is_an_exact_simplex_and_stays_fixed(store, tmp_path: Path):
    import torch

    from ncflow.engine.models import simplex_etf

    etf = simplex_etf(10, 64, seed=0)
    gram = etf @ etf.T
    expected = torch.full((10, 10), -1 / 9, dtype=torch.float64) + torch.eye(10, dtype=torch.float64) * (1 + 1 / 9)
    assert torch.allclose(gram, expected, atol=1e-12)  # unit rows, pairwise cosine −1/(K−1)
    assert not torch.allclose(simplex_etf(10, 64, seed=1), etf)  # the frame is seeded
    result = CliRunner().invoke(main, ["train", "--quiet", *TINY, "--classifier", "etf", "--checkpoints", "all"])
    assert result.exit_code == 0, result.output
    client, run = only_run(store)
    assert run.info.run_name == "mlp2-relu-w64-wd2e-04-digits-etf-head-s0" and run.data.params["classifier"] == "etf"
    for name in ("phase1_end", "last"):  # after training: the head is exactly the ETF, the bias exactly zero
        state = torch.load(client.download_artifacts(run.info.run_id, f"checkpoints/{name}.pt", str(tmp_path)),
                           weights_only=True)
        assert torch.equal(state["model"]["head.weight"], etf.to(state["model"]["head.weight"].dtype))
        assert not state["model"]["head.bias"].any()
    bad = CliRunner().invoke(main, ["train", "--quiet", *TINY, "--classifier", "etf", "--width", "8"])
    assert bad.exit_code == 2
    assert bad.output.strip() == "Error: classifier: etf needs a feature dimension of at least K − 1 = 9, got 8"


def test_printed_ui_links_open_the_model_training_view():
    from ncflow.tracked.messages import RunPlace, see_it, ui_page

    place = RunPlace("abc123", "mlp2-s0", "ncflow", "3", "http://mlflow.lab:5000/", "mlflow-artifacts:/3/abc123")
    assert see_it(place) == "http://mlflow.lab:5000/#/experiments/3/runs/abc123?workflowType=machine_learning"
    assert ui_page("http://127.0.0.1:5000", "3") == "http://127.0.0.1:5000/#/experiments/3?workflowType=machine_learning"
