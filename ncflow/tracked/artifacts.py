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
    run_id: str, history: list[Mapping[str, float]], summary: Mapping[str, float], config: RunConfig,
    status: str = "", divergence_reason: str | None = None,
) -> bytes:
    """`figures/dynamics.png`: the drawing the report's Figure 1 uses too (a leaf module: no tables or stats); a
    diverged run's non-finite values are left out and its last epoch marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ncshared.dynamics_figure import plot_dynamics

    run: dict[str, Any] = {**summary, **config.as_params(), "run_id": run_id, "run_name": run_name(config),
                           "status": status, "divergence_reason": divergence_reason}
    axes = plot_dynamics(pd.DataFrame(list(history)), run)
    figure = axes[0].figure
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()


def simplex_angle(num_classes: int) -> float:
    """arccos(−1/(K−1)) in degrees: the angle between any two vertices of a K-class simplex ETF."""
    return math.degrees(math.acos(-1.0 / (num_classes - 1)))


def finite_only(values: Iterable[float] | None) -> list[float]:
    """The finite values, in order (none of a diverged run's NaN or inf)."""
    return [value for value in values or () if math.isfinite(value)]


def angles_json(num_classes: int, at_collapse: list[float] | None, at_end: list[float] | None,
                t_nc: int | None, last_epoch: int | None) -> bytes:
    """The angles at T_NC and at the end; a non-finite angle is `null` (strict JSON has no NaN)."""
    def strict(values: list[float] | None) -> list[float | None] | None:
        return None if values is None else [value if math.isfinite(value) else None for value in values]

    pairs = num_classes * (num_classes - 1) // 2
    return json.dumps({"simplex_angle_deg": simplex_angle(num_classes), "pairs": pairs, "t_nc": t_nc,
                       "at_t_nc": strict(at_collapse), "last_epoch": last_epoch, "at_end": strict(at_end)},
                      indent=1, allow_nan=False).encode()


def angles_figure_png(num_classes: int, at_collapse: list[float] | None, at_end: list[float] | None,
                      t_nc: int | None, last_epoch: int | None, title: str) -> bytes:
    """Histograms of the pairwise class-mean angles at T_NC and at the end, the simplex angle marked (non-finite
    angles are left out, and the legend says how many)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5.0, 3.4), dpi=120, layout="constrained")
    ax = figure.subplots()
    for values, label, color in ((at_collapse, f"at T_NC = {t_nc}", "C0"), (at_end, f"epoch {last_epoch} (end)", "C1")):
        finite = finite_only(values)
        left_out = len(values or ()) - len(finite)
        if finite:
            ax.hist(finite, bins=20, alpha=0.6, color=color,
                    label=label + (f" ({left_out} not finite, left out)" if left_out else ""))
    if not finite_only(at_end):  # the end's features or class means were not finite: a diverged run
        ax.text(0.02, 0.96, f"epoch {last_epoch} (end): no finite angles", transform=ax.transAxes, va="top",
                fontsize="small", color="C3")
    ax.axvline(simplex_angle(num_classes), color="k", linestyle="--", linewidth=1,
               label=f"simplex arccos(−1/{num_classes - 1}) = {simplex_angle(num_classes):.2f}°")
    ax.set(xlabel="angle between centred class means (degrees)", ylabel="class pairs", title=title)
    ax.legend(fontsize="small")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
