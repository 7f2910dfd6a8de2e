"""tools/reproduction_doc.py's reading of the ResNet-20 runs: at each ε, how many collapse and in which phase."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pandas as pd

from ncshared import schema

TOOL = Path(__file__).resolve().parents[1] / "tools" / "reproduction_doc.py"


def load_tool():
    spec = importlib.util.spec_from_file_location("reproduction_doc", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_resnet_reading_counts_each_eps_and_the_phase_of_collapse():
    tool = load_tool()
    nan = math.nan
    runs = pd.DataFrame({
        "arch": ["resnet20", "resnet20", "resnet20", "mlp"],
        "phase1_epochs": ["200"] * 4,
        schema.t_nc_at(0.01): [262.0, 273.0, nan, 100.0],
        schema.fn_star_at(0.01): [1.83, 1.84, nan, 9.0],
        schema.t_nc_at(0.02): [106.0, 231.0, nan, 90.0],
        schema.fn_star_at(0.02): [6.01, 1.78, nan, 9.0],
        schema.t_nc_at(0.05): [51.0, 70.0, 30.0, 80.0],
        schema.fn_star_at(0.05): [6.3, 6.45, 7.23, 9.0],
    })
    (line,) = tool.resnet_reading(runs)
    assert "(epoch 201, Figure 7 (c))" in line
    assert ("at ε = 0.01 2 of 3 collapse, 0 of them in Phase 1 (T_NC 262–273, fn* 1.83–1.84); "
            "at ε = 0.02 2 of 3 collapse, 1 of them in Phase 1 (T_NC 106–231, fn* 1.78–6.01); "
            "at ε = 0.05 3 of 3 collapse, 3 of them in Phase 1 (T_NC 30–70, fn* 6.30–7.23)") in line
    assert tool.resnet_reading(runs[runs["arch"] == "mlp"]) == []
