"""Divergence at any point: a non-finite loss, feature or metric at any epoch ends the run FINISHED/`diverged`, every
end-of-run file copes with the NaN and inf, the description says why (never "resume"), and the analysis excludes
and counts it."""

import io
import json
import math

import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from analysis import selection, store
from ncflow.cli.main import main
from ncflow.collapse.detector import CollapseDetector
from ncflow.engine import loop, optional_metrics, run_setup
from ncflow.engine.config import build_config
from ncflow.tracked import artifacts, messages
from ncflow.tracked.pack_train import train_pack
from ncshared import dynamics_figure, schema

TINY = ["--depth", "2", "--width", "16", "--phase1-epochs", "2", "--phase2-epochs", "2"]
BLOW_UP = ["--lr", "1e6", "--optimizer", "sgd", "--momentum", "0"]  # NaN weights within the first epoch
PNG = b"\x89PNG"


@pytest.mark.parametrize("epoch, loss, metrics, named", [
    (1, math.nan, {}, "loss (nan)"),
    (4, 0.5, {"nc1": math.nan}, "nc1 (nan)"),
    (4, 0.5, {"fn": math.inf}, "fn (inf)"),
    (4, 0.5, {schema.NCC: math.inf}, f"{schema.NCC} (inf)"),
    (9, 0.5, {schema.layer_metric(1, "nc1"): math.nan}, f"{schema.layer_metric(1, 'nc1')} (nan)"),
])
def test_any_non_finite_value_at_any_epoch_is_divergence(epoch, loss, metrics, named):
    detector = CollapseDetector(threshold=0.05)
    for before in range(1, epoch):
        assert detector.update(before, 1, {"nc1": 0.9, "fn": 2.0}, 0.5) == []
    events = detector.update(epoch, 1, {"nc1": 0.9, "fn": 2.0, **metrics}, loss)
    assert events == ["diverged"] and detector.status == "diverged"
    assert detector.divergence_reason == f"non-finite {named} at epoch {epoch}"
    assert detector.divergence_epoch == epoch
    assert detector.update(epoch + 1, 1, {"nc1": 0.001, "fn": 2.0}, 0.1) == []  # it stays diverged
    assert detector.t_nc is None


def diverged_history() -> list[dict[str, float]]:
    """Two finite epochs, then one with NaN and inf everywhere a blow-up puts them."""
    rows = []
    for epoch, value in ((1, 0.8), (2, 0.4), (3, math.nan)):
        row = {name: value for name in schema.HISTORY_COLUMNS}
        row.update({schema.HISTORY_EPOCH: float(epoch), schema.PHASE: 1.0 if epoch < 3 else 2.0,
                    schema.TRAIN_ACC: 0.5, schema.TEST_ACC: 0.5, schema.layer_metric(1, "nc1"): value,
                    schema.layer_metric(2, "nc1"): value})
        rows.append(row)
    rows[-1][schema.FN] = rows[-1][schema.TRAIN_LOSS] = math.inf
    return rows


def test_every_end_of_run_file_copes_with_non_finite_values():
    config = build_config(None, {"depth": "2", "width": "16", "phase1_epochs": "2", "phase2_epochs": "2",
                                 "layerwise": "true"})
    history = diverged_history()
    reason = "non-finite loss (inf) at epoch 3"
    table = pd.read_csv(io.BytesIO(artifacts.history_csv(history)))
    assert table[schema.FN].tolist()[:2] == [0.8, 0.4] and math.isinf(table[schema.FN].iloc[2])
    figure = artifacts.dynamics_figure_png("r1", history, {schema.COLLAPSE_THRESHOLD: 0.05}, config, "diverged", reason)
    assert figure.startswith(PNG)
    axes = dynamics_figure.plot_dynamics(pd.DataFrame(history), {"status": "diverged", "divergence_reason": reason})
    nc1_line = next(line for line in axes[1].get_lines() if line.get_gid() == schema.NC1)
    assert list(nc1_line.get_xdata()) == [1.0, 2.0]  # the non-finite epoch is left out ...
    assert "diverged (epoch 3)" in axes[3].get_legend_handles_labels()[1]  # ... and marked
    assert reason in axes[0].figure.get_suptitle()
    angles = [90.0, math.nan, math.inf]
    parsed = json.loads(artifacts.angles_json(3, angles, None, None, 3),
                        parse_constant=lambda name: pytest.fail(f"{name} in strict JSON"))
    assert parsed["at_t_nc"] == [90.0, None, None] and parsed["at_end"] is None
    assert artifacts.angles_figure_png(3, angles, [math.nan] * 3, 2, 3, title="t").startswith(PNG)
    assert artifacts.angles_figure_png(3, None, None, None, 1, title="t").startswith(PNG)
    assert optional_metrics.layers_figure_png(history, config, "t").startswith(PNG)
    assert optional_metrics.layers_figure_png(history[2:], config, "t").startswith(PNG)  # nothing finite at all
    assert optional_metrics.layer_collapse_epochs(history, config, 0.5) == {schema.layer_t_nc(1): 2.0,
                                                                            schema.layer_t_nc(2): 2.0}
    nan_features = torch.full((6, 4), math.nan)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    class_nc1 = pd.read_csv(io.BytesIO(optional_metrics.class_nc1_csv(nan_features, labels, [2, 2, 2], [1, 2])))
    assert class_nc1["nc1"].isna().all() and class_nc1["count"].tolist() == [2, 2, 2]


@pytest.mark.parametrize("weights", [math.nan, 0.0])  # blown up, or dead: every class mean the global one
def test_end_of_run_measures_cope_with_non_finite_or_degenerate_features(weights):
    setup = run_setup.prepare(build_config(None, {"depth": "2", "width": "16", "imbalance_ratio": "10"}))
    with torch.no_grad():
        for parameter in setup.model.parameters():
            parameter.fill_(weights)
    end = loop.measure_end_of_run(setup)
    assert end.angles is None
    table = pd.read_csv(io.BytesIO(end.class_nc1_table))
    assert len(table) == 10 and not (table["nc1"].abs() < math.inf).any()


def test_description_of_a_diverged_run_says_why_and_never_resume():
    config = build_config(None, {"depth": "2"})
    last = diverged_history()[-1]
    note = messages.description("r1", config, "diverged", {schema.COLLAPSE_THRESHOLD: 0.05}, last,
                                 "non-finite nc1 (nan) at epoch 3")
    assert note.startswith("**diverged**") and "- diverged: non-finite nc1 (nan) at epoch 3." in note
    assert "resume" not in note.lower()


def test_a_run_that_blows_up_ends_finished_diverged_with_every_file_and_the_analysis_counts_it(cli_store: str):
    result = CliRunner().invoke(main, ["train", "--quiet", *TINY, *BLOW_UP, "--layerwise", "--imbalance-ratio", "10"])
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output and ": diverged," in result.output
    client = MlflowClient(cli_store)
    (run,) = client.search_runs([client.get_experiment_by_name("ncflow").experiment_id])
    tags = run.data.tags
    assert run.info.status == "FINISHED" and tags[schema.TAG_STATUS] == "diverged"
    assert tags[schema.TAG_DIVERGENCE_REASON] == "non-finite loss (nan) at epoch 1"
    note = tags[schema.TAG_NOTE]
    assert "diverged: non-finite loss (nan) at epoch 1" in note and "resume" not in note.lower()
    files = {item.path for folder in (None, "figures") for item in client.list_artifacts(run.info.run_id, folder)}
    assert {schema.HISTORY_FILE, schema.ANGLES_FILE, schema.LAYERS_FILE, schema.CLASS_NC1_FILE, schema.DYNAMICS_FIGURE,
            schema.ANGLES_FIGURE, schema.LAYERS_FIGURE} <= files
    chosen = selection.select(store.load_runs(cli_store))
    assert (len(chosen.used), len(chosen.diverged), len(chosen.unfinished)) == (0, 1, 0)
    assert any("Excluded 1 diverged run" in line and "at epoch 1" in line for line in chosen.notes())


def test_a_pack_member_that_diverges_alone_ends_diverged_and_its_sibling_trains_on(cli_store: str, tmp_path):
    base = {"depth": "2", "width": "16", "phase1_epochs": "2", "phase2_epochs": "2", "optimizer": "sgd",
            "momentum": "0", "tracking_uri": cli_store}
    configs = [build_config(None, {**base, "lr": lr, "seed": seed}) for lr, seed in (("1e6", "0"), ("0.01", "1"))]
    blown, healthy = train_pack(configs, progress=False, record_dir=tmp_path / "records")
    assert blown.status == "diverged" and len(blown.history) == 1
    assert healthy.status != "diverged" and [row["epoch"] for row in healthy.history] == [1, 2, 3, 4]
    client = MlflowClient(cli_store)
    assert [client.get_run(r.run_id).info.status for r in (blown, healthy)] == ["FINISHED", "FINISHED"]
    assert client.get_run(blown.run_id).data.tags[schema.TAG_STATUS] == "diverged"
    assert all(math.isfinite(row[schema.NC1]) for row in healthy.history)
