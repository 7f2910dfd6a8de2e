"""ncshared.dynamics_figure: the per-run dynamics figure that training logs and the report draws, a leaf."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from ncshared import dynamics_figure, schema


def test_importing_dynamics_loads_no_statistics_tables_figures_or_store():
    code = ("import json, sys, ncshared.dynamics_figure; print(json.dumps(sorted("
            "m for m in sys.modules if m == 'scipy' or m.startswith(('analysis', 'ncshared.', 'scipy.')))))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    loaded = json.loads(result.stdout)
    for module in ("analysis.tables", "analysis.stats", "analysis.figures", "analysis.store", "scipy"):
        assert module not in loaded
    assert "ncshared.schema" in loaded  # a leaf: the shared names (and the params they derive from) are all it needs
    assert [module for module in loaded if not module.startswith("ncshared.")] == []


def _training_history(epochs: int = 6, phase1: int = 3) -> list[dict[str, float]]:
    """Per-epoch records as training keeps them (one mapping per epoch, keyed by the contract's names)."""
    return [{schema.HISTORY_EPOCH: epoch, schema.TRAIN_ACC: 0.1 * epoch, schema.TEST_ACC: 0.09 * epoch,
             schema.NC1: 1.0 / epoch, schema.NC2: 0.5, schema.NC3: 0.4, schema.FN: 10.0 - epoch,
             schema.PHASE: 1.0 if epoch <= phase1 else 2.0} for epoch in range(1, epochs + 1)]


def test_plot_dynamics_draws_training_records_as_tracking_calls_it():
    run = {schema.T_NC: 5.0, schema.FN_STAR: 5.0, schema.COLLAPSE_THRESHOLD: 0.25, "protocol": "two-phase",
           "phase1_epochs": "3", "run_id": "r0", "run_name": "mlp5-relu-w512-wd1e-04-mnist-s0"}
    axes = dynamics_figure.plot_dynamics(pd.DataFrame(list(_training_history())), run)
    assert len(axes) == 4 and axes[0].figure.get_suptitle() == run["run_name"]
    (nc1,) = [line for line in axes[1].get_lines() if line.get_gid() == schema.NC1]
    np.testing.assert_array_equal(nc1.get_xdata(), np.arange(1, 7))
    np.testing.assert_array_equal(nc1.get_ydata(), 1.0 / np.arange(1, 7))
    marks = {line.get_label() for ax in axes for line in ax.get_lines()}
    assert {"ε = 0.25", "CE → MSE", "T_NC = 5", "fn* = 5.000"} <= marks
    switch = [line for line in axes[0].get_lines() if line.get_label() == "CE → MSE"]
    assert switch[0].get_xdata()[0] == 3.0  # the last Phase-1 epoch, from the logged phase


def test_plot_dynamics_asks_for_a_wide_history():
    long = pd.DataFrame({"run_id": ["r0"], schema.HISTORY_EPOCH: [1], "metric": [schema.NC1], "value": [0.5]})
    with pytest.raises(ValueError, match="wide_history"):
        dynamics_figure.plot_dynamics(long, {"run_id": "r0"})
