"""analysis.figures: files exist and are non-empty, and plotted data equals what training logged."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.axes import Axes
from matplotlib.image import imread
from matplotlib.layout_engine import ConstrainedLayoutEngine
from mlflow.tracking import MlflowClient

from analysis import figures, store, tables
from tests import mlflow_fixtures as fx

PHASE1, EPOCHS = 10, 40


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """A small depth sweep (depths 5 and 7, two seeds) and a never-collapsing λ = 5e-4 run, in a real store."""
    root = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{root}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    experiment_id = client.create_experiment("ncflow", artifact_location=(root / "artifacts").as_uri())
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
    axes = figures.plot_dynamics(histories, run)
    assert len(axes) == 4 and all(isinstance(ax, Axes) for ax in axes)
    (line,) = [line for line in axes[1].get_lines() if line.get_gid() == "nc/nc1"]
    logged_points = logged["client"].get_metric_history(run["run_id"], "nc/nc1")
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
    used = tables.select(runs[runs["sweep"] == "depth"]).used
    axes = figures._new_axes(1, 2)
    assert figures.plot_trajectories(histories, used, "nc/fn", ax=axes[0], hue="depth", band=True) is axes[0]
    summary = tables.summaries(used, ["depth"])
    assert figures.plot_sweep(summary, "depth", "T_NC", ax=axes[1]) is axes[1]
    # the error-bar line holds the condition means: depth 5 T_NC 25, 26 → 25.5; depth 7 30, 31 → 30.5.
    np.testing.assert_array_equal(axes[1].get_lines()[0].get_ydata(), [25.5, 30.5])
    assert len([line for line in axes[0].get_lines() if line.get_gid() in set(used["run_id"])]) == 4
    assert isinstance(figures.plot_trajectories(histories, used, "nc/nc1"), Axes)  # ax=None makes one


def test_build_figures_writes_every_figure_whose_runs_exist(logged, tmp_path: Path):
    paths = figures.build_figures(logged["runs"], logged["histories"], tmp_path)
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
    assert figures.build_figures(empty, no_history, tmp_path) == []


def test_histories_by_run_pivots_like_pivot_table():
    # run a logs x at epoch 2 twice (9.0, then 2.0: the last wins), x at 1, y at 1 and 3 → epochs 1, 2, 3.
    long = pd.DataFrame({"run_id": ["a", "b", "a", "a", "a", "a"], "epoch": [2, 1, 2, 1, 1, 3],
                         "metric": ["x", "x", "x", "x", "y", "y"], "value": [9.0, 7.0, 2.0, 4.0, 1.0, 5.0]})
    expected = pd.DataFrame({"x": [4.0, 2.0, np.nan], "y": [1.0, np.nan, 5.0]},
                            index=pd.Index([1, 2, 3], name="epoch")).rename_axis(columns="metric")
    wide = figures.histories_by_run(long)
    assert list(wide) == ["a", "b"]
    pd.testing.assert_frame_equal(wide["a"], expected)
    pd.testing.assert_frame_equal(figures.wide_history(long, "a"), expected)
    pivot = long[long["run_id"] == "a"].pivot_table(index="epoch", columns="metric", values="value", aggfunc="last")
    pd.testing.assert_frame_equal(wide["a"], pivot)


def test_save_figure_lays_out_once_and_draws_the_constrained_layout(logged, tmp_path: Path):
    runs, histories = logged["runs"], logged["histories"]
    run = runs[runs["run_name"] == "mlp5-relu-w512-wd1e-04-mnist-s0"].iloc[0]
    live = figures.plot_dynamics(histories, run)[0].figure
    assert isinstance(live.get_layout_engine(), ConstrainedLayoutEngine)
    live.savefig(tmp_path / "live.png", dpi=figures.DPI)  # constrained layout solved inside this save
    frozen = figures.plot_dynamics(histories, run)[0].figure
    png, pdf = figures.save_figure(frozen, tmp_path, "frozen")
    assert not isinstance(frozen.get_layout_engine(), ConstrainedLayoutEngine)  # solved once, then fixed
    np.testing.assert_array_equal(imread(png), imread(tmp_path / "live.png"))  # the same pixels
    assert pdf.read_bytes().startswith(b"%PDF")
