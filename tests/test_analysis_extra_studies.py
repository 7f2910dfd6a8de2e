"""analysis.extra_studies, extra_study_tables, extra_study_figures and layer_store: the layer-wise, class-imbalance,
ETF-head and test-set-collapse tables and figures from a real MLflow store, with numbers known by construction.

The fixture runs are logged as training logs them (tests/mlflow_fixtures.py); the layer-wise runs' `layers/<l>/*`
metrics, layer T_NCs and `layers.csv`, and the imbalanced runs' minority-collapse metrics, are logged on top with
the MlflowClient, as training does under `--layerwise` and `--imbalance-ratio` > 1.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from analysis import catalogue, layer_store, report, store
from analysis.aggregate import Estimates
from analysis.extra_study_figures import make_extra_study_figures
from analysis.extra_study_tables import build_extra_study_tables
from ncshared import schema as c
from tests import mlflow_fixtures as fx

PHASE1, EPOCHS, DEPTH = 10, 40, 7
EPOCH_STEPS = np.arange(1, EPOCHS + 1)
# Layer-wise runs (MLP-7): per seed, each layer's T_NC (absent: never below ε) and final NC1; final NC2 per seed.
LAYER_T_NC = {0: {7: 25, 6: 28, 5: 33}, 1: {7: 27, 6: 30}}
LAYER_FINAL_NC1 = {seed: {layer: scale * (DEPTH + 1 - layer) for layer in range(1, DEPTH + 1)}
                   for seed, scale in ((0, 0.002), (1, 0.004))}
LAYER_FINAL_NC2 = {0: 0.5, 1: 0.7}
# Imbalance runs (MLP-5): per ρ, per seed, (T_NC or None, minority collapse, minority mean collapse).
IMBALANCE = {1.0: [(25, None, None), (27, None, None)], 10.0: [(30, 0.1, 0.05), (32, 0.3, 0.15)],
             100.0: [(None, 0.6, 0.4), (None, 0.8, 0.5)]}
# ETF-head runs (MLP-3, ε = 0.05): per head, per seed, (T_NC, fn*).
HEADS = {"learned": [(20, 1.0), (22, 1.2)], "etf": [(15, 0.9), (17, 1.1)]}


def _curves(t_nc: int | None, eps: float, fn_star: float = 1.1) -> tuple[np.ndarray, np.ndarray]:
    """NC1 crossing ε at exactly t_nc (None: stalls at 0.03) and fn equal to fn_star there."""
    nc1 = fx.nc1_trajectory(EPOCHS, PHASE1, t_nc, eps) if t_nc else np.full(EPOCHS, 0.03)
    return nc1, fx.fn_trajectory(EPOCHS, PHASE1, t_nc or EPOCHS, fn_star)


def _log_per_epoch(client: MlflowClient, run_id: str, columns: dict[str, np.ndarray]) -> None:
    now = int(time.time() * 1000)
    metrics = [Metric(key, float(values[row]), now + row, int(epoch))
               for key, values in columns.items() for row, epoch in enumerate(EPOCH_STEPS)]
    for begin in range(0, len(metrics), fx.BATCH_LIMIT):
        client.log_batch(run_id, metrics=metrics[begin:begin + fx.BATCH_LIMIT])


def layer_columns(seed: int) -> dict[str, np.ndarray]:
    """Every `layers/<l>/<name>` of a layer-wise run: NC1 geometric from 1 to its final value, NC2 linear."""
    columns = {}
    for layer, final in LAYER_FINAL_NC1[seed].items():
        nc1 = np.geomspace(1.0, final, EPOCHS)
        columns[c.layer_metric(layer, "nc1")] = nc1
        columns[c.layer_metric(layer, "nc1_pinv")] = 0.9 * nc1
        columns[c.layer_metric(layer, "nc2")] = np.linspace(1.0, LAYER_FINAL_NC2[seed], EPOCHS)
        columns[c.layer_metric(layer, "fn")] = np.ones(EPOCHS)
    return columns


def log_layerwise_run(client: MlflowClient, experiment_id: str, seed: int, layers_csv: bool = True) -> str:
    nc1, fn = _curves(LAYER_T_NC[seed][DEPTH], 0.01)
    run_id = fx.log_fake_training_run(client, experiment_id, depth=DEPTH, seed=seed, nc1_curve=nc1, fn_curve=fn,
                                      phase1_epochs=PHASE1, sweep="layerwise", params={"layerwise": "true"})
    columns = layer_columns(seed)
    _log_per_epoch(client, run_id, columns)
    client.log_batch(run_id, metrics=[Metric(c.layer_t_nc(layer), float(t), 0, 0)
                                      for layer, t in LAYER_T_NC[seed].items()])
    if layers_csv:
        client.log_text(run_id, fx.history_csv(columns, EPOCH_STEPS), c.LAYERS_FILE)
    return run_id


@pytest.fixture(scope="module")
def extra_study_store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Two layer-wise MLP-7 runs, the imbalance sweep (ρ = 1, 10, 100; 2 seeds) and the ETF sweep (MLP-3)."""
    root = tmp_path_factory.mktemp("extra_studies")
    uri = f"sqlite:///{root}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    experiment_id = client.create_experiment(c.DEFAULT_EXPERIMENT, artifact_location=(root / "artifacts").as_uri())
    for seed in LAYER_T_NC:
        log_layerwise_run(client, experiment_id, seed)
    for ratio, seeds in IMBALANCE.items():
        for seed, (t_nc, minority, minority_mean) in enumerate(seeds):
            nc1, fn = _curves(t_nc, 0.01)
            run_id = fx.log_fake_training_run(
                client, experiment_id, depth=5, seed=seed, nc1_curve=nc1, fn_curve=fn, phase1_epochs=PHASE1,
                sweep="imbalance", params={"imbalance_ratio": repr(ratio), "imbalance_profile": "step"})
            if minority is not None:  # training logs minority collapse only when ρ > 1; the last epoch's is this
                _log_per_epoch(client, run_id, {c.MINORITY_COLLAPSE: np.linspace(-0.11, minority, EPOCHS),
                                                c.MINORITY_MEAN_COLLAPSE: np.linspace(-0.11, minority_mean, EPOCHS)})
    for head, seeds in HEADS.items():
        for seed, (t_nc, fn_star) in enumerate(seeds):
            nc1, fn = _curves(t_nc, 0.05, fn_star)
            fx.log_fake_training_run(client, experiment_id, depth=3, seed=seed, nc1_curve=nc1, fn_curve=fn,
                                     phase1_epochs=PHASE1, sweep="etf", params={"classifier": head})
    runs = store.load_runs(uri)
    source = report.Source(uri, None, None, root / "cache", False)
    return {"uri": uri, "root": root, "client": client, "runs": runs, "source": source,
            "histories": report.read_histories(source, runs)}


@pytest.fixture(scope="module")
def estimates(extra_study_store: dict[str, object]) -> Estimates:
    return Estimates(extra_study_store["runs"], extra_study_store["histories"])


def test_layerwise_table_gives_each_layers_collapse(estimates: Estimates):
    table = build_extra_study_tables(estimates)["table_layerwise"]
    frame = table.frame.set_index("Layer")
    assert list(frame.index) == list(range(1, DEPTH + 1)) and "Condition" not in frame.columns  # one condition
    # layer 7: T_NC 25, 27 → 26 ± 1.41; final NC1 0.002, 0.004 → 0.00300 ± 0.00141; NC2 0.5, 0.7 → 0.600 ± 0.141.
    assert frame.loc[7].to_dict() == {"N": 2, "Collapsed": "2/2", "NC1 thresh.": "< 0.01", "T_NC": "26 ± 1",
                                      "Final NC1": "0.00300 ± 0.00141", "Final NC2": "0.600 ± 0.141"}
    assert (frame.loc[6, "Collapsed"], frame.loc[6, "T_NC"]) == ("2/2", "29 ± 1")  # 28, 30
    assert (frame.loc[5, "Collapsed"], frame.loc[5, "T_NC"]) == ("1/2", "33")  # seed 1's layer 5 never collapsed
    assert (frame.loc[1, "Collapsed"], frame.loc[1, "T_NC"]) == ("0/2", "DNF")
    assert frame.loc[1, "Final NC1"] == "0.0210 ± 0.0099"  # 7 · 0.002, 7 · 0.004 → 0.021 ± 0.0099
    data = table.data.set_index("layer")
    assert data.loc[7, "nc1_mean"] == pytest.approx(0.003, rel=1e-9)
    assert data.loc[6, "T_NC_mean"] == 29.0 and data.loc[6, "T_NC_std"] == pytest.approx(np.sqrt(2))
    assert data.loc[1, "n_collapsed"] == 0 and np.isnan(data.loc[1, "T_NC_mean"])
    assert table.title.startswith("Layer-wise collapse (MLP-7, ReLU, width 512")


def test_imbalance_table_gives_minority_collapse_per_ratio(estimates: Estimates):
    table = build_extra_study_tables(estimates)["table_imbalance"]
    frame = table.frame.set_index("ρ")
    assert list(frame.index) == ["1", "10", "100"]
    assert frame.loc["1", "Minority collapse"] == "—" and frame.loc["1", "Minority mean collapse"] == "—"
    assert (frame.loc["10", "Minority collapse"], frame.loc["10", "Minority mean collapse"]) == ("0.200 ± 0.141",
                                                                                                 "0.100 ± 0.071")
    assert (frame.loc["100", "Minority collapse"], frame.loc["100", "Minority mean collapse"]) == ("0.700 ± 0.141",
                                                                                                   "0.450 ± 0.071")
    assert [frame.loc[r, "T_NC"] for r in frame.index] == ["26 ± 1", "31 ± 1", "DNF"]
    assert [frame.loc[r, "Collapsed"] for r in frame.index] == ["2/2", "2/2", "0/2"]
    # test accuracy 0.98 − 0.05 · NC1: NC1 floors at ε/5 = 0.002 (collapsed) or stays 0.03.
    accuracy = frame["Test acc. (%)"]
    assert (accuracy["1"], accuracy["100"]) == ("97.99 ± 0.00", "97.85 ± 0.00")
    assert frame.loc["100", "Final NC1"] == "0.0300 ± 0.0000"
    data = table.data.set_index("imbalance_ratio")
    assert data.loc[100.0, "minority_collapse_mean"] == pytest.approx(0.7)
    assert data.loc[1.0, "minority_collapse_n"] == 0
    assert "step profile" in table.title


def test_etf_table_gives_t_nc_per_head(estimates: Estimates):
    table = build_extra_study_tables(estimates)["table_etf"]
    frame = table.frame.set_index("Classifier")
    assert list(frame.index) == ["Learned", "Fixed simplex ETF"]
    assert frame.loc["Learned", "T_NC"] == "21 ± 1" and frame.loc["Fixed simplex ETF", "T_NC"] == "16 ± 1"
    assert frame.loc["Learned", "fn* (mean ± std)"] == "1.100 ± 0.141"
    assert frame.loc["Fixed simplex ETF", "fn* (mean ± std)"] == "1.000 ± 0.141"
    assert (frame.loc["Learned", "N"], frame.loc["Learned", "Collapsed"]) == (2, "2/2")
    data = table.data.set_index("classifier")
    assert data.loc["etf", "T_NC_mean"] == 16.0 and data.loc["learned", "T_NC_mean"] == 21.0


def test_the_extra_study_sweeps_get_no_generic_sweep_table(estimates: Estimates):
    from analysis.tables import build_tables

    assert not {"sweep_imbalance", "sweep_etf", "sweep_layerwise"} & set(build_tables(estimates))


def test_layer_histories_come_from_layers_csv_and_the_cache(extra_study_store: dict[str, object], monkeypatch):
    runs, source = extra_study_store["runs"], extra_study_store["source"]
    layerwise = runs[runs["sweep"] == "layerwise"].sort_values("seed")
    long = layer_store.load_layer_histories(runs, source.tracking_uri, cache_dir=source.cache_dir)
    assert set(long["run_id"]) == set(layerwise["run_id"])  # only the layer-wise runs
    assert set(long["metric"]) == {c.layer_metric(layer, name) for layer in range(1, DEPTH + 1)
                                   for name in c.LAYER_METRIC_NAMES}
    first = long[(long["run_id"] == layerwise["run_id"].iloc[0]) & (long["metric"] == c.layer_metric(3, "nc1"))]
    np.testing.assert_allclose(first.sort_values("epoch")["value"], layer_columns(0)[c.layer_metric(3, "nc1")])

    def no_download(*args: object, **kwargs: object) -> None:
        raise AssertionError("an ended run's layer history was downloaded again")

    monkeypatch.setattr(layer_store, "download_history_csv", no_download)
    again = layer_store.load_layer_histories(runs, source.tracking_uri, cache_dir=source.cache_dir)
    pd.testing.assert_frame_equal(again, long)


def test_a_run_without_layers_csv_falls_back_to_its_metric_histories(mlflow_store, tmp_path: Path):
    experiment_id = mlflow_store.experiment()
    run_id = log_layerwise_run(mlflow_store.client, experiment_id, 1, layers_csv=False)
    runs = store.load_runs(mlflow_store.uri)
    long = layer_store.load_layer_histories(runs, mlflow_store.uri, cache_dir=tmp_path / "cache")
    nc1 = long[(long["run_id"] == run_id) & (long["metric"] == c.layer_metric(DEPTH, "nc1"))]
    np.testing.assert_allclose(nc1.sort_values("epoch")["value"], layer_columns(1)[c.layer_metric(DEPTH, "nc1")])


def test_layerwise_figure_draws_each_layers_mean_nc1(estimates: Estimates):
    figure = make_extra_study_figures(estimates)["fig_layerwise"]
    (ax,) = figure.get_axes()
    lines = {line.get_gid(): line for line in ax.get_lines() if line.get_gid()}
    assert set(lines) == {f"layer {layer}" for layer in range(1, DEPTH + 1)}
    mean = (layer_columns(0)[c.layer_metric(4, "nc1")] + layer_columns(1)[c.layer_metric(4, "nc1")]) / 2
    np.testing.assert_allclose(lines["layer 4"].get_ydata(), mean)
    np.testing.assert_array_equal(lines["layer 4"].get_xdata(), EPOCH_STEPS)
    assert ax.get_yscale() == "log"
    assert {"CE → MSE", "ε = 0.01"} <= {line.get_label() for line in ax.get_lines()}
    switch = [line for line in ax.get_lines() if line.get_label() == "CE → MSE"][0]
    assert tuple(switch.get_xdata()) == (PHASE1, PHASE1)


def test_imbalance_figure_draws_the_per_ratio_means(estimates: Estimates):
    figure = make_extra_study_figures(estimates)["fig_imbalance"]
    axes = figure.get_axes()
    assert len(axes) == 4 and all(ax.get_xscale() == "log" for ax in axes)
    minority = [line for line in axes[2].get_lines() if line.get_gid() == "minority_collapse"][0]
    np.testing.assert_array_equal(minority.get_xdata(), [10.0, 100.0])  # ρ = 1 logs no minority collapse
    np.testing.assert_allclose(minority.get_ydata(), [0.2, 0.7])


def test_train_test_figure_draws_both_sets_nc1(estimates: Estimates, extra_study_store: dict[str, object]):
    figure = make_extra_study_figures(estimates)["fig_train_test_nc1"]
    axes = figure.get_axes()
    assert 1 <= len(axes) <= 4
    for ax in axes:
        lines = {line.get_gid(): line for line in ax.get_lines() if line.get_gid()}
        # the fixtures log test/nc1 = 2 · nc/nc1 at every epoch
        np.testing.assert_allclose(lines["test"].get_ydata(), 2 * lines["train"].get_ydata())
        assert ax.get_yscale() == "log"


def test_report_writes_the_extra_study_outputs_with_titles(extra_study_store: dict[str, object], tmp_path: Path):
    out = tmp_path / "report"
    report.build_report(extra_study_store["source"], out, ["md", "csv"], ["png"])
    markdown = (out / "report.md").read_text(encoding="utf-8")
    for stem in ("table_layerwise", "table_imbalance", "table_etf"):
        assert f"### {stem}" in markdown and (out / "tables" / f"{stem}.csv").stat().st_size > 0
    assert "**Layer-wise collapse (MLP-7" in markdown and "**Class imbalance (" in markdown
    for stem in ("fig_layerwise", "fig_imbalance", "fig_train_test_nc1"):
        png = out / "figures" / f"{stem}.png"
        assert png.read_bytes().startswith(b"\x89PNG") and png.stat().st_size > 1000
        assert f"(figures/{stem}.png)" in markdown
    not_written = markdown.split("## Not written", 1)[1]
    assert "table_layerwise" not in not_written and "fig_imbalance" not in not_written


def test_a_store_without_these_runs_lists_them_as_not_written(mlflow_store, tmp_path: Path):
    experiment_id = mlflow_store.experiment()
    for seed in range(2):
        nc1, fn = _curves(25 + seed, 0.01)
        fx.log_fake_training_run(mlflow_store.client, experiment_id, depth=5, seed=seed, nc1_curve=nc1, fn_curve=fn,
                                 phase1_epochs=PHASE1, sweep="depth")
    out = tmp_path / "report"
    source = report.Source(mlflow_store.uri, None, None, tmp_path / "cache", False)
    report.build_report(source, out, ["md"], ["png"])
    markdown = (out / "report.md").read_text(encoding="utf-8")
    section = markdown.split("## Not written", 1)[1]
    extra_study_outputs = {"table_layerwise", "table_imbalance", "table_etf", "fig_layerwise", "fig_imbalance"}
    for output in (*catalogue.TABLES, *catalogue.FIGURES):
        if output.stem in extra_study_outputs:
            assert f"**{output.title}** (`{output.stem}`): needs {output.needs}; none found." in section
    assert "`ncflow sweep layerwise`" in section and "`ncflow sweep imbalance`" in section
    assert (out / "figures" / "fig_train_test_nc1.png").stat().st_size > 1000  # every run has test/nc1
    assert not any((out / "tables").glob("table_*.md"))
