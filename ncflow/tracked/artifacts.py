"""The files a finished run keeps beside its metrics: history.csv, config.json, the dynamics figure and the
class-mean angles (JSON and histogram), as bytes."""

from __future__ import annotations

import io
import json
import math
from typing import Any, Iterable, Mapping

import pandas as pd

from ncflow.engine.config import run_name
from ncshared import schema
from ncshared.run_config import RunConfig


def history_csv(rows: Iterable[Mapping[str, float]]) -> bytes:
    """Every epoch's metrics, columns in `schema.HISTORY_COLUMNS` order."""
    frame = pd.DataFrame(list(rows), columns=list(schema.HISTORY_COLUMNS))
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

    from ncshared.dynamics_figure import plot_dynamics

    run: dict[str, Any] = {**summary, **config.as_params(), "run_id": run_id, "run_name": run_name(config)}
    axes = plot_dynamics(pd.DataFrame(list(history)), run)
    figure = axes[0].figure
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()


def simplex_angle(num_classes: int) -> float:
    """arccos(−1/(K−1)) in degrees: the angle between any two vertices of a K-class simplex ETF."""
    return math.degrees(math.acos(-1.0 / (num_classes - 1)))


def angles_json(num_classes: int, at_collapse: list[float] | None, at_end: list[float] | None,
                t_nc: int | None, last_epoch: int | None) -> bytes:
    return json.dumps({"simplex_angle_deg": simplex_angle(num_classes), "pairs": num_classes * (num_classes - 1) // 2,
                       "t_nc": t_nc, "at_t_nc": at_collapse, "last_epoch": last_epoch, "at_end": at_end},
                      indent=1).encode()


def angles_figure_png(num_classes: int, at_collapse: list[float] | None, at_end: list[float] | None,
                      t_nc: int | None, last_epoch: int | None, title: str) -> bytes:
    """Histograms of the pairwise class-mean angles at T_NC and at the end, the simplex angle marked."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5.0, 3.4), dpi=120, layout="constrained")
    ax = figure.subplots()
    for values, label, color in ((at_collapse, f"at T_NC = {t_nc}", "C0"), (at_end, f"epoch {last_epoch} (end)", "C1")):
        if values:
            ax.hist(values, bins=20, alpha=0.6, color=color, label=label)
    ax.axvline(simplex_angle(num_classes), color="k", linestyle="--", linewidth=1,
               label=f"simplex arccos(−1/{num_classes - 1}) = {simplex_angle(num_classes):.2f}°")
    ax.set(xlabel="angle between centred class means (degrees)", ylabel="class pairs", title=title)
    ax.legend(fontsize="small")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
