"""The grid's MNIST half on mnist-5k: ResNet-20 runs of the grid sweep beside MLP-5 runs another sweep trained give
Table 6's MNIST row, the ANOVA between the two pairs, the architecture effect with its CI and Figure 7 (mnist-5k is
drawn from MNIST); and `ncflow reproduce --grid-data mnist-5k` plans exactly the ResNet-20 points."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pytest

from analysis import compare, tables
from analysis.aggregate import Estimates
from analysis.figures import grid_figures
from analysis.store import load_histories, load_runs
from ncflow.engine.config import ConfigError
from ncflow.sweeps import reproduce
from ncflow.sweeps.grids import NAMED_SWEEPS, with_datasets
from tests import mlflow_fixtures as fx

NC1 = [0.9, 0.2, 0.008, 0.004]  # T_NC = 3 at ε = 0.01 (MLP-5 and ResNet-20)


def fn_curve(fn_star: float) -> list[float]:
    return [16.2, 3.0, fn_star, fn_star - 0.05]


def test_resnet20_beside_mlp5_on_mnist_5k(mlflow_store, tmp_path):
    client, eid = mlflow_store.client, mlflow_store.experiment()
    for seed, fn_star in enumerate((1.0, 1.1, 1.2)):  # MLP-5: the depth sweep's runs
        fx.log_fake_training_run(client, eid, depth=5, seed=seed, nc1_curve=NC1, fn_curve=fn_curve(fn_star),
                                 phase1_epochs=2, sweep="depth", params={"dataset": "mnist-5k"})
    for seed, fn_star in enumerate((5.8, 5.9, 6.0)):  # ResNet-20: the grid's own
        fx.log_fake_training_run(client, eid, depth=5, seed=seed, nc1_curve=NC1, fn_curve=fn_curve(fn_star),
                                 phase1_epochs=2, sweep="grid", params={"dataset": "mnist-5k", "arch": "resnet20"})
    fx.log_fake_training_run(client, eid, depth=5, seed=3, nc1_curve=[0.9, 0.5, 0.3, 0.2], fn_curve=fn_curve(1.0),
                             phase1_epochs=2, sweep="depth", params={"dataset": "mnist-5k"})  # not collapsed
    runs = load_runs(mlflow_store.uri)
    estimates = Estimates(runs, load_histories(runs, mlflow_store.uri, cache_dir=tmp_path / "cache"))
    grid = estimates.grid
    assert grid.n_cells == 2 and sorted(grid.summary["architecture"]) == ["MLP-5", "ResNet-20"]
    # Between SS = 2 · 3 · (1.1 − 3.5)² = 34.56 (df 1); within SS = 0.02 + 0.02 = 0.04 (df 4): F = 34.56 / 0.01.
    assert grid.anova.f == pytest.approx(3456.0) and (grid.anova.df_between, grid.anova.df_within) == (1, 4)
    base, other, effect, interval = grid.architecture_effects["mnist-5k"]
    assert (base, other) == ("MLP-5", "ResNet-20")
    assert effect.delta == pytest.approx(4.8) and effect.relative == pytest.approx(5.9 / 1.1 - 1)
    # Every resample's ratio lies between 5.8 / 1.2 and 6.0 / 1.0.
    assert 5.8 / 1.2 - 1 <= interval[0] < effect.relative < interval[1] <= 6.0 / 1.0 - 1
    table = tables.grid_table(estimates)
    assert any(note.startswith("Architecture effect on fn* within mnist-5k (MLP-5 → ResNet-20): Δ = +4.800 (+436%), "
                               "95% bootstrap CI of the relative effect [") for note in table.notes)
    # The paper's MNIST row holds mnist-5k's cells; the ResNet-20 cell is Figure 7, the MLP-5 mean its dotted line.
    rows = compare.grid_comparison(estimates).frame.set_index("Pair")
    assert rows.loc["mlp / mnist", "N paper / ncflow"] == "12 / 4" and rows.loc["mlp / mnist", "Collapsed ncflow"] == "3/4"
    assert rows.loc["resnet20 / mnist", "N paper / ncflow"] == "3 / 3" and rows.loc["resnet20 / cifar10", "fn* ncflow"] \
        == "—" and rows.loc["resnet20 / mnist", "fn* ncflow"].startswith("5.900 ± 0.100 (n=3)")
    notes = compare.grid_comparison(estimates).notes
    assert notes[1].startswith("Paper: architecture effect on fn* (MLP → ResNet-20) +458% on mnist; +68% on cifar10; "
                               "ncflow: within mnist-5k (MLP-5 → ResNet-20): Δ = +4.800 (+436%)")
    assert grid.reference_fn_star == pytest.approx(1.1) and grid.reference_data == "mnist-5k"
    figures = grid_figures(estimates)
    assert list(figures) == ["fig7_resnet20_mnist"]
    assert figures["fig7_resnet20_mnist"].texts[0].get_text() == "ResNet-20 on mnist-5k (3 seeds; dotted: MLP fn* on mnist-5k)"
    assert figures["fig7_resnet20_mnist"].axes[2].get_yscale() == "log"  # fn: fn* and the reference stay readable
    plt.close("all")


def test_reproduce_grid_data_puts_the_grid_on_mnist_5k():
    grid = with_datasets(NAMED_SWEEPS["grid"], ("mnist-5k",))
    assert grid.blocks[0].dims["dataset"] == ("mnist-5k",) and NAMED_SWEEPS["grid"].blocks[0].dims["dataset"] == (
        "mnist", "cifar10")
    stages = reproduce.program(("grid",), None, {"dataset": "mnist-5k"}, reproduce.parse_grid_data("mnist-5k"))
    _, planned = reproduce.plan_points(stages)
    configs = sorted(((item.point.config.arch, item.point.config.dataset, item.point.seed) for item in planned))
    assert configs == [("mlp", "mnist-5k", 0), ("mlp", "mnist-5k", 1), ("mlp", "mnist-5k", 2),
                       ("resnet20", "mnist-5k", 0), ("resnet20", "mnist-5k", 1), ("resnet20", "mnist-5k", 2)]
    resnet = next(item.point.config for item in planned if item.point.config.arch == "resnet20")
    assert (resnet.optimizer, resnet.lr, resnet.nesterov, resnet.weight_decay, resnet.milestones, resnet.total_epochs) \
        == ("sgd", 0.1, True, 1e-3, (300, 450), 800)  # the paper's ResNet protocol
    # The MLP-5 point is the depth sweep's depth-5 point: one condition, trained once.
    depth = reproduce.program(("depth",), None, {"dataset": "mnist-5k"})
    _, depth_points = reproduce.plan_points(depth)
    mlp = {item.point.key for item in planned if item.point.config.arch == "mlp"}
    assert mlp <= {item.point.key for item in depth_points}
    assert reproduce.parse_grid_data(None) is None and reproduce.parse_grid_data("none") is None
    with pytest.raises(ConfigError, match="^--grid-data: expected data sets from digits, "):
        reproduce.parse_grid_data("imagenet")
