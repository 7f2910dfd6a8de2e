"""The files a finished run keeps beside its metrics: history.csv, config.json and the dynamics figure, as bytes."""

from __future__ import annotations

import io
import json
from typing import Any, Iterable, Mapping

import pandas as pd

from analysis import contract
from ncflow.config import RunConfig, run_name


def history_csv(rows: Iterable[Mapping[str, float]]) -> bytes:
    """Every epoch's metrics, columns in `contract.HISTORY_COLUMNS` order."""
    frame = pd.DataFrame(list(rows), columns=list(contract.HISTORY_COLUMNS))
    return frame.to_csv(index=False).encode()


def config_json(config: RunConfig) -> bytes:
    return json.dumps(config.as_params(), indent=2).encode()


def dynamics_figure_png(
    run_id: str, history: list[Mapping[str, float]], summary: Mapping[str, float], config: RunConfig
) -> bytes:
    """`figures/dynamics.png`: the drawing the report's Figure 1 uses too (a leaf module: no tables or stats)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from analysis.dynamics import plot_dynamics

    run: dict[str, Any] = {**summary, **config.as_params(), "run_id": run_id, "run_name": run_name(config)}
    axes = plot_dynamics(pd.DataFrame(list(history)), run)
    figure = axes[0].figure
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()
