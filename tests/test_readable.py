"""Readable outputs: the class-mean angle histograms side by side with the simplex angle marked (never two
translucent histograms blended into one), titles that say over how many seeds a curve is averaged, and the run's
description giving what the MLflow UI's metrics table shows to 17 digits to 4 significant ones."""

from __future__ import annotations

import io
import math

import matplotlib.image
import pytest

from analysis import report
from analysis.extra_study_figures import make_extra_study_figures, over_seeds
from ncflow.engine.config import build_config
from ncflow.tracked import artifacts, messages
from ncshared import schema
from tests.mlflow_fixtures import fn_trajectory, log_fake_training_run, nc1_trajectory


def test_over_seeds_says_what_the_seed_counts_say():
    assert over_seeds([1]) == "one seed" and over_seeds([1, 1, 1]) == "one seed each"
    assert over_seeds([3, 3]) == "mean over 3 seeds" and over_seeds([1, 3]) == "mean over 1–3 seeds"
    assert over_seeds([2, 2], "mean ± std") == "mean ± std over 2 seeds"


@pytest.mark.parametrize("seeds, title", [(1, "one seed"), (2, "mean over 2 seeds")])
def test_the_train_vs_test_nc1_title_matches_its_seeds(mlflow_store, tmp_path, seeds, title):
    experiment_id = mlflow_store.experiment()
    for seed in range(seeds):
        log_fake_training_run(mlflow_store.client, experiment_id, depth=5, seed=seed, phase1_epochs=10,
                              nc1_curve=nc1_trajectory(40, 10, 30), fn_curve=fn_trajectory(40, 10, 30, 1.1))
    estimates = report.read_estimates(report.Source(mlflow_store.uri, None, None, None, False))
    figure = make_extra_study_figures(estimates)["fig_train_test_nc1"]
    assert figure.get_suptitle() == f"Test-set collapse: train and test NC1 ({title})"
    assert figure.get_axes()[0].get_title().endswith(f"({seeds} seed{'s' if seeds > 1 else ''})")


def angle_figure(at_collapse, at_end, t_nc):
    png = artifacts.angles_figure_png(10, at_collapse, at_end, t_nc, 600, title="run")
    return matplotlib.image.imread(io.BytesIO(png), format="png")


def test_the_angle_histograms_stand_side_by_side_with_the_simplex_angle_marked(monkeypatch):
    drawn = {}
    real = artifacts.angles_figure_png

    from matplotlib.figure import Figure

    save = Figure.savefig

    def keep(self, *args, **kwargs):  # look at the figure that is saved
        drawn["figure"] = self
        return save(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keep)
    real(10, [90.0, 95.0, 96.0, 100.0], [96.0, 96.4, math.nan, 96.8], 285, 600, title="run")
    axes = drawn["figure"].get_axes()
    assert [ax.get_title() for ax in axes] == [
        "at T_NC = epoch 285\n4 pairs: 95.25° ± 4.11°",  # 90, 95, 96, 100: mean 95.25, sample std 4.11
        "at the end, epoch 600\n3 pairs: 96.40° ± 0.40°, 1 not finite (left out)",  # 96, 96.4, 96.8
    ]
    simplex = math.degrees(math.acos(-1 / 9))  # 96.38°
    for ax, pairs in zip(axes, (4, 3), strict=True):
        bars = [patch for patch in ax.patches if patch.get_height() > 0]
        assert sum(patch.get_height() for patch in bars) == pairs and all(p.get_alpha() in (None, 1) for p in bars)
        (line,) = [line for line in ax.get_lines() if line.get_label().startswith("simplex")]
        assert line.get_xdata()[0] == pytest.approx(simplex) and line.get_label() == "simplex 96.38°"
    assert axes[0].get_xlim() == axes[1].get_xlim()  # shared bins and axes: the two moments compare directly
    real(10, None, [96.0, 96.4], None, 600, title="run")  # a run that never collapsed: one panel, said so
    (only,) = drawn["figure"].get_axes()
    assert only.get_title().startswith("at the end, epoch 600")
    assert "the run never collapsed" in drawn["figure"].get_suptitle()
    assert angle_figure([96.0], [96.0], 1).shape[2] in (3, 4)  # a PNG that reads back


def test_the_description_gives_the_metrics_to_4_significant_digits():
    summary = {schema.COLLAPSE_THRESHOLD: 0.01, schema.T_NC: 285.0, schema.FN_STAR: 1.8375123456789012,
               schema.t_nc_at(0.01): 285.0, schema.fn_star_at(0.01): 1.8375123456789012,
               schema.t_nc_at(0.05): 201.0, schema.fn_star_at(0.05): 2.1234567890123456}
    last = {schema.HISTORY_EPOCH: 600.0, schema.NC1: 0.0012345678901234, schema.FN: 1.7777777777777777,
            schema.TRAIN_ACC: 1.0, schema.TEST_ACC: 0.9611111111111111, schema.NC2: 0.12345678901234567,
            schema.NC3: 0.045678901234567, schema.NC4: 0.0, schema.NCC: 0.3333333333333333,
            schema.TEST_NC1: 0.5555555555555556, schema.ANGLE_MEAN: 96.40123456789012}
    note = messages.description("r", build_config(None, {}), schema.STATUS_COLLAPSED, summary, last)
    assert "- at every logged ε: ε = 0.01: T_NC 285, fn\\* 1.838; ε = 0.02: not reached; ε = 0.05: T_NC 201, " \
           "fn\\* 2.123" in note
    assert ("- last epoch, 4 significant digits (the metrics table has them in full): NC2 0.1235, NC3 0.04568, NC4 0, "
            "NCC 0.3333, test NC1 0.5556, class-mean angle 96.4°") in note
    assert "56789" not in note  # no value to 17 digits
