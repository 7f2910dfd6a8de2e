"""analysis.figures and analysis.plots: files exist and are non-empty, plotted data equals what training logged,
and the panels draw precomputed estimates (hand-made ones here) without computing statistics themselves."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.axes import Axes
from matplotlib.image import imread
from matplotlib.layout_engine import ConstrainedLayoutEngine
from mlflow.tracking import MlflowClient

from analysis import aggregate, figures, plots, selection, stats, store
from analysis.stats import RegressionResult, Summary
from ncshared import dynamics_figure
from ncshared.schema import DEFAULT_EXPERIMENT, FN, FN_STAR, NC1, TRAIN_ACC
from tests import mlflow_fixtures as fx

PHASE1, EPOCHS = 10, 40


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """A small depth sweep (depths 5 and 7, two seeds) and a never-collapsing λ = 5e-4 run, in a real store."""
    root = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{root}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    experiment_id = client.create_experiment(DEFAULT_EXPERIMENT, artifact_location=(root / "artifacts").as_uri())
    curves = {}
    for depth, t_nc, fn_star in ((5, 25, 1.1), (7, 30, 1.3)):
        for seed in range(2):
            nc1 = fx.nc1_trajectory(EPOCHS, PHASE1, t_nc + seed, 0.01)
            fn = fx.fn_trajectory(EPOCHS, PHASE1, t_nc + seed, fn_star)
            run_id = fx.log_fake_training_run(client, experiment_id, depth=depth, seed=seed, nc1_curve=nc1,
                                              fn_curve=fn, phase1_epochs=PHASE1, sweep="depth")
            curves[run_id] = nc1
    fx.log_fake_training_run(client, experiment_id, depth=5, seed=0, nc1_curve=np.full(EPOCHS, 0.03),
                             fn_curve=np.linspace(16.0, 2.0, EPOCHS), phase1_epochs=PHASE1, sweep="weight_decay",
                             params={"weight_decay": "5e-4"})
    runs = store.load_runs(uri)
    histories = store.load_histories(runs, uri, cache_dir=root / "cache")
    return {"client": client, "runs": runs, "histories": histories, "nc1": curves}


def test_dynamics_nc1_line_is_the_logged_history(logged):
    runs, histories = logged["runs"], logged["histories"]
    run = runs[runs["run_name"] == "mlp5-relu-w512-wd1e-04-mnist-s0"].iloc[0]
    axes = dynamics_figure.plot_dynamics(selection.wide_history(histories, run["run_id"]), run)
    assert len(axes) == 4 and all(isinstance(ax, Axes) for ax in axes)
    (line,) = [line for line in axes[1].get_lines() if line.get_gid() == NC1]
    logged_points = logged["client"].get_metric_history(run["run_id"], NC1)
    steps = np.array([m.step for m in logged_points])
    values = np.array([m.value for m in logged_points])[np.argsort(steps)]
    np.testing.assert_array_equal(line.get_xdata(), np.arange(1, EPOCHS + 1))
    np.testing.assert_array_equal(line.get_ydata(), values)  # what MLflow holds …
    np.testing.assert_array_equal(line.get_ydata(), logged["nc1"][run["run_id"]])  # … is what training logged
    assert axes[1].get_yscale() == "log"
    marks = {line.get_label() for ax in axes for line in ax.get_lines()}
    assert {"ε = 0.01", "CE → MSE", "T_NC = 25", "fn* = 1.100"} <= marks


def test_plot_functions_draw_on_the_given_axes(logged):
    runs, histories = logged["runs"], logged["histories"]
    used = selection.select(runs[runs["sweep"] == "depth"]).used
    axes = dynamics_figure.new_axes(1, 2)
    summary = aggregate.summaries(used, ["depth"])
    bands = dict(zip(summary["depth"], summary["fn_star"]))
    assert plots.plot_trajectories(histories, used, FN, ax=axes[0], hue="depth", bands=bands) is axes[0]
    assert plots.plot_sweep(aggregate.numeric(summary), "depth", "T_NC", ax=axes[1]) is axes[1]
    # the error-bar line holds the condition means: depth 5 T_NC 25, 26 → 25.5; depth 7 30, 31 → 30.5.
    np.testing.assert_array_equal(axes[1].get_lines()[0].get_ydata(), [25.5, 30.5])
    assert len([line for line in axes[0].get_lines() if line.get_gid() in set(used["run_id"])]) == 4
    assert isinstance(plots.plot_trajectories(histories, used, NC1), Axes)  # ax=None makes one


def test_build_figures_writes_every_figure_whose_runs_exist(logged, tmp_path: Path):
    paths = figures.build_figures(aggregate.Estimates(logged["runs"], logged["histories"]), tmp_path)
    names = sorted(path.name for path in paths)
    stems = sorted({path.stem for path in paths})
    assert stems == ["fig1_dynamics", "fig3_depth", "fig5_weight_decay", "fig6_summary"]
    assert len(names) == 2 * len(stems)
    for path in paths:
        content = path.read_bytes()
        assert len(content) > 1000
        assert content.startswith(b"\x89PNG" if path.suffix == ".png" else b"%PDF")


def test_build_figures_with_no_runs(tmp_path: Path):
    empty = pd.DataFrame({name: pd.Series(dtype=object) for name in store.FIXED_COLUMNS})
    no_history = pd.DataFrame({"run_id": [], "epoch": [], "metric": [], "value": []})
    assert figures.build_figures(aggregate.Estimates(empty, no_history), tmp_path) == []


def test_histories_by_run_pivots_like_pivot_table():
    # run a logs x at epoch 2 twice (9.0, then 2.0: the last wins), x at 1, y at 1 and 3 → epochs 1, 2, 3.
    long = pd.DataFrame({"run_id": ["a", "b", "a", "a", "a", "a"], "epoch": [2, 1, 2, 1, 1, 3],
                         "metric": ["x", "x", "x", "x", "y", "y"], "value": [9.0, 7.0, 2.0, 4.0, 1.0, 5.0]})
    expected = pd.DataFrame({"x": [4.0, 2.0, np.nan], "y": [1.0, np.nan, 5.0]},
                            index=pd.Index([1, 2, 3], name="epoch")).rename_axis(columns="metric")
    wide = selection.histories_by_run(long)
    assert list(wide) == ["a", "b"]
    pd.testing.assert_frame_equal(wide["a"], expected)
    pd.testing.assert_frame_equal(selection.wide_history(long, "a"), expected)
    pivot = long[long["run_id"] == "a"].pivot_table(index="epoch", columns="metric", values="value", aggfunc="last")
    pd.testing.assert_frame_equal(wide["a"], pivot)


def test_save_figure_lays_out_once_and_draws_the_constrained_layout(logged, tmp_path: Path):
    runs, histories = logged["runs"], logged["histories"]
    run = runs[runs["run_name"] == "mlp5-relu-w512-wd1e-04-mnist-s0"].iloc[0]
    wide = selection.wide_history(histories, run["run_id"])
    live = dynamics_figure.plot_dynamics(wide, run)[0].figure
    assert isinstance(live.get_layout_engine(), ConstrainedLayoutEngine)
    live.savefig(tmp_path / "live.png", dpi=dynamics_figure.DPI)  # constrained layout solved inside this save
    frozen = dynamics_figure.plot_dynamics(wide, run)[0].figure
    png, pdf = figures.save_figure(frozen, tmp_path, "frozen")
    assert not isinstance(frozen.get_layout_engine(), ConstrainedLayoutEngine)  # solved once, then fixed
    np.testing.assert_array_equal(imread(png), imread(tmp_path / "live.png"))  # the same pixels
    assert pdf.read_bytes().startswith(b"%PDF")


def test_figures_draw_the_shared_estimates_without_computing_statistics(logged, monkeypatch):
    estimates = aggregate.Estimates(logged["runs"], logged["histories"])
    first = figures.make_figures(estimates)  # computes (and keeps) what the figures need

    def no_statistics(*args: object, **kwargs: object) -> None:
        raise AssertionError("a figure computed a statistic instead of reading the estimates")

    for name in ("describe", "one_way_anova", "loglog_regression", "pearson", "t_test", "lead_time_stats"):
        monkeypatch.setattr(stats, name, no_statistics)
    again = figures.make_figures(estimates)
    assert list(again) == list(first) == ["fig1_dynamics", "fig3_depth", "fig5_weight_decay", "fig6_summary"]


def _summary(n: int, mean: float, std: float) -> Summary:
    """A hand-made Summary (the plots use n, mean and std only)."""
    return Summary(n, mean, std, std / mean, (math.nan, math.nan), (math.nan, math.nan))


def _data_y(patch: object, ax: Axes) -> tuple[float, float]:
    """The data-space y extent of a span patch."""
    ys = (patch.get_transform() - ax.transData).transform(patch.get_path().vertices)[:, 1]
    return float(ys.min()), float(ys.max())


def test_plot_sweep_draws_a_hand_made_estimates_frame():
    # Depth 5: mean 25.5 ± 0.5 over 2 collapsed runs; depth 7: one run (std NaN → no bar); depth 9: DNF.
    numbers = pd.DataFrame({"depth": [5, 7, 9], "T_NC_mean": [25.5, 30.0, math.nan],
                            "T_NC_std": [0.5, math.nan, math.nan], "n_collapsed": [2, 1, 0]})
    ax = plots.plot_sweep(numbers, "depth", "T_NC")
    line = ax.get_lines()[0]
    np.testing.assert_array_equal(line.get_xdata(), [5, 7])
    np.testing.assert_array_equal(line.get_ydata(), [25.5, 30.0])
    (bars,) = ax.containers[0].lines[2]
    assert [tuple(segment[:, 1]) for segment in bars.get_segments()] == [(25.0, 26.0), (30.0, 30.0)]
    texts = {text.get_text() for text in ax.texts}
    assert {"n=2", "n=1", "DNF"} <= texts
    assert ax.get_xlabel() == "Depth" and ax.get_ylabel() == "T_NC (epochs)"


def test_plot_trajectories_shades_the_given_bands(logged):
    runs, histories = logged["runs"], logged["histories"]
    used = selection.select(runs[runs["sweep"] == "depth"]).used
    bands = {5: _summary(2, 1.2, 0.1), 7: _summary(1, 2.0, math.nan)}  # depth 7: one run, no spread
    ax = plots.plot_trajectories(selection.histories_by_run(histories), used, FN, hue="depth", bands=bands)
    dashed = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
    assert [tuple(line.get_ydata()) for line in dashed] == [(1.2, 1.2), (2.0, 2.0)]
    spans = [_data_y(patch, ax) for patch in ax.patches]
    assert spans[0] == pytest.approx((1.1, 1.3))
    assert spans[1] == pytest.approx((2.0, 2.0))
    assert {text.get_text() for text in ax.get_legend().get_texts()} == {"Depth = 5", "Depth = 7"}


def test_plot_fn_star_points_band_is_the_given_summary():
    used = pd.DataFrame({"weight_decay": [1e-4, 1e-4, 5e-4], FN_STAR: [1.0, 1.2, 1.1]})
    ax = plots.plot_fn_star_points(used, "weight_decay", band=_summary(2, 4.0, 0.5))
    assert [tuple(line.get_ydata()) for line in ax.get_lines()[:2]] == [(1.0, 1.2), (1.1,)]
    mean_line = [line for line in ax.get_lines() if line.get_label() == "mean 4.000"]
    assert len(mean_line) == 1 and tuple(mean_line[0].get_ydata()) == (4.0, 4.0)
    assert _data_y(ax.patches[0], ax) == pytest.approx((3.5, 4.5))
    assert [tick.get_text() for tick in ax.get_xticklabels()] == ["1e-04", "5e-04"]


def test_plot_power_law_and_lead_time_draw_given_estimates():
    fit = RegressionResult(slope=-0.5, intercept=math.log(2.0), r_squared=1.0, p=0.0, stderr=0.0, n=4)
    ax = plots.plot_power_law(fit, 4.0, 64.0, "width")
    (line,) = ax.get_lines()
    assert line.get_label() == "∝ width^-0.500"
    assert (line.get_xdata()[0], line.get_xdata()[-1]) == pytest.approx((4.0, 64.0))
    assert (line.get_ydata()[0], line.get_ydata()[-1]) == pytest.approx((1.0, 0.25))  # 2 · 4^-½, 2 · 64^-½

    frame = pd.DataFrame({"width": [128, 128, 256], "T_cross": [100.0, 110.0, 90.0], "T_NC": [160.0, 175.0, 150.0]})
    ax = plots.plot_lead_time(frame, 50, "width")
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert set(lines) == {"width 128", "width 256", "T_NC = T_cross", "T_cross + 50"}
    np.testing.assert_array_equal(lines["width 128"].get_xdata(), [100.0, 110.0])
    np.testing.assert_array_equal(lines["T_NC = T_cross"].get_ydata(), [90.0, 175.0])
    np.testing.assert_array_equal(lines["T_cross + 50"].get_ydata(), [140.0, 225.0])
    assert plots.plot_lead_time(pd.DataFrame(), 50).get_lines() == []  # no crossings: an empty panel


def test_summary_figure_draws_only_the_panels_it_has_and_dnf_panels_say_so(logged):
    from analysis.aggregate import Estimates
    from analysis.figures import figure_summary
    from analysis.plots import plot_sweep

    figure = figure_summary(Estimates(logged["runs"], logged["histories"]))
    panels = figure.get_axes()
    assert len(panels) == 2  # depth and weight decay: no empty activation or grid panels on a wide canvas
    assert figure.get_size_inches()[0] == pytest.approx(2 * 4.2)
    dnf = pd.DataFrame({"weight_decay": [5e-4], "T_NC_mean": [np.nan], "T_NC_std": [np.nan], "n_collapsed": [0]})
    ax = plot_sweep(dnf, "weight_decay", "T_NC", logx=True)
    assert any("no condition collapsed (DNF)" in text.get_text() for text in ax.texts)
    assert list(ax.get_yticks()) == []


def test_dynamics_fn_panel_is_log_scaled_and_the_switch_dip_is_noted(logged):
    runs, histories = logged["runs"], logged["histories"]
    run = runs[runs["run_name"] == "mlp5-relu-w512-wd1e-04-mnist-s0"].iloc[0]
    wide = selection.wide_history(histories, run["run_id"]).copy()
    wide.loc[PHASE1 + 1, TRAIN_ACC] = 0.05  # the CE → MSE switch dips far below every other epoch
    axes = dynamics_figure.plot_dynamics(wide, run)
    assert axes[3].get_yscale() == "log"
    low, _ = axes[0].get_ylim()
    assert low > 0.05 and any("switch dip to 5.0%" in text.get_text() for text in axes[0].texts)


def test_dynamics_draws_the_test_sets_nc1_beside_the_training_sets(logged):
    from ncshared.schema import TEST_NC1

    runs, histories = logged["runs"], logged["histories"]
    run = runs.iloc[0]
    axes = dynamics_figure.plot_dynamics(selection.wide_history(histories, run["run_id"]), run)
    (test_line,) = [line for line in axes[1].get_lines() if line.get_gid() == TEST_NC1]
    logged_values = [m.value for m in sorted(logged["client"].get_metric_history(run["run_id"], TEST_NC1),
                                             key=lambda m: m.step)]
    np.testing.assert_array_equal(test_line.get_ydata(), logged_values)
