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


def history_csv(rows: Iterable[Mapping[str, float]], extra_columns: Iterable[str] = ()) -> bytes:
    """Every epoch's metrics, columns in `schema.HISTORY_COLUMNS` order, then `extra_columns` (a regularised run's
    `reg/value`, `reg/active`)."""
    frame = pd.DataFrame(list(rows), columns=[*schema.HISTORY_COLUMNS, *extra_columns])
    return frame.to_csv(index=False).encode()


def config_json(config: RunConfig) -> bytes:
    """The resolved RunConfig with typed values (`"depth": 7`, `"milestones": [300, 450]`); the MLflow params hold
    the same as strings. `ncflow.engine.config.config_from_values` reads it, and the strings of older runs."""
    return json.dumps(config.as_values(), indent=2).encode()


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
    """Histograms of the pairwise class-mean angles side by side, at T_NC and at the end (one panel when the run never
    collapsed), on shared bins and axes, each with the simplex angle arccos(−1/(K−1)) marked and its pairs' mean ±
    std; non-finite angles (a diverged run's) are left out, and the panel says how many."""
    import numpy as np
    from matplotlib.figure import Figure

    simplex = simplex_angle(num_classes)
    moments = [(values, f"at T_NC = epoch {t_nc}") for values in (at_collapse,) if t_nc is not None or values]
    moments.append((at_end, f"at the end, epoch {last_epoch}"))
    finite = [finite_only(values) for values, _ in moments]
    every = [angle for angles in finite for angle in angles] + [simplex]
    low, high = min(every), max(every)
    margin = max(0.5, 0.05 * (high - low))
    bins = np.linspace(low - margin, high + margin, 25)
    figure = Figure(figsize=(max(5.6, 3.6 * len(moments) + 0.6), 3.6), dpi=120, layout="constrained")
    axes = figure.subplots(1, len(moments), sharex=True, sharey=True, squeeze=False)[0]
    tallest = 1
    for ax, (values, label), angles, color in zip(axes, moments, finite, ("C0", "C1")):
        left_out = len(values or ()) - len(angles)
        if angles:
            counts, _, _ = ax.hist(angles, bins=bins, color=color, edgecolor="black", linewidth=0.6)
            tallest = max(tallest, int(max(counts)))
            std = float(np.std(angles, ddof=1)) if len(angles) > 1 else 0.0
            stats = f"{len(angles)} pairs: {np.mean(angles):.2f}° ± {std:.2f}°"
            stats += f", {left_out} not finite (left out)" if left_out else ""
        else:
            stats = "no finite angles" if values else "not measured"
        ax.axvline(simplex, color="k", linestyle="--", linewidth=1.2, label=f"simplex {simplex:.2f}°")
        ax.set_title(f"{label}\n{stats}", fontsize="medium", color="black" if angles else "C3")
        ax.set_xlabel("angle between centred class means (°)")
        ax.legend(loc="upper right", fontsize="small")
    axes[0].set(ylabel="class pairs", ylim=(0, tallest * 1.3))  # headroom for the legend
    never = "" if len(moments) == 2 else " (no T_NC: the run never collapsed)"
    figure.suptitle(f"{title}\npairwise class-mean angles, K = {num_classes}{never}", fontsize="medium")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
