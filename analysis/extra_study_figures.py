"""The figures of the studies beyond the paper — layer-wise NC1, collapse against class imbalance, train vs test
NC1 — drawn from `Estimates.extra_studies` (curves averaged and per-value estimates computed there, not here).

Each `figure_*` returns None when its runs do not exist; `build_extra_study_figures` writes the rest as
`analysis.figures.build_figures` writes the paper's (laid out once, PNG and PDF). `analysis.report` writes both.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from analysis.aggregate import Estimates, numeric
from analysis.extra_studies import MAX_PANELS, CurvePanel
from analysis.figures import FORMATS, save_figure
from analysis.render import count, fmt_value
from ncshared.dynamics_figure import add_legend, mark_vertical, new_axes

LAYER_PANEL_SIZE = (5.4, 3.8)  # room for a legend of every layer
IMBALANCE_PANELS = (  # (summary column, panel title, y label, log y)
    ("nc1", "(a) Final NC1", "NC1", True),
    ("nc2", "(b) Final NC2", "NC2", False),
    ("minority_collapse", "(c) Minority collapse", "mean cosine of minority classifier rows", False),
    ("test_acc", "(d) Test accuracy", "test accuracy", False),
)


def over_seeds(counts: Sequence[int], what: str = "mean") -> str:
    """What a figure's curves or points are, for its title, as the seed counts behind them say: `mean over 3 seeds`,
    `mean over 1–3 seeds`, or `one seed` / `one seed each` when nothing is averaged."""
    counts = [int(n) for n in counts if n]
    if not counts or max(counts) == 1:
        return "one seed" if len(counts) <= 1 else "one seed each"
    low, high = min(counts), max(counts)
    return f"{what} over {high} seeds" if low == high else f"{what} over {low}–{high} seeds"


def _mark_panel(ax: Axes, panel: CurvePanel) -> None:
    """ε dotted and the CE → MSE switch dashed, when known; log y; the legend."""
    if not math.isnan(panel.threshold):
        ax.axhline(panel.threshold, color="k", linestyle=":", linewidth=1, label=f"ε = {panel.threshold:g}")
    mark_vertical(ax, panel.switch, "CE → MSE", "--", "0.5")
    ax.set_yscale("log")
    add_legend(ax)


def figure_layerwise(estimates: Estimates) -> Figure | None:
    """NC1 of every hidden layer over the epochs (mean over seeds, log y), a panel per layer-wise condition; the
    title says over how many seeds (`over_seeds`)."""
    study = estimates.extra_studies.layerwise
    panels = [c.curves for c in (study.conditions if study else ()) if not c.curves.curves.empty][:MAX_PANELS]
    if not panels:
        return None
    axes = new_axes(1, len(panels), LAYER_PANEL_SIZE)
    for ax, panel in zip(axes, panels):
        layers = list(panel.curves.columns)
        colors = colormaps["viridis"](np.linspace(0.0, 0.9, len(layers)))
        for layer, color in zip(layers, colors):
            series = panel.curves[layer].dropna()
            ax.plot(series.index, series.to_numpy(), color=color, linewidth=1.2, label=f"layer {layer}",
                    gid=f"layer {layer}")
        ax.set(title=f"{panel.label} ({count(len(panel.runs), 'seed')})", xlabel="epoch", ylabel="NC1 of the layer's output")
        _mark_panel(ax, panel)
        ax.legend(fontsize="x-small", loc="lower left", ncols=2)  # the curves fall from the upper left
    axes[0].figure.suptitle(f"Layer-wise NC1 ({over_seeds([len(panel.runs) for panel in panels])})")
    return axes[0].figure


def plot_value_errorbars(numbers: pd.DataFrame, x: str, key: str, ax: Axes, logx: bool = False,
                         scale: float = 1.0) -> Axes:
    """Mean ± std of the summary column `key` (`<key>_mean`, `<key>_std` of `aggregate.numeric`) against `x`;
    values without a mean (not logged there) are left out."""
    xs = numbers[x].to_numpy(dtype=float)
    means = numbers[f"{key}_mean"].to_numpy(dtype=float) * scale
    errors = np.nan_to_num(numbers[f"{key}_std"].to_numpy(dtype=float) * scale, nan=0.0)
    done = ~np.isnan(means)
    ax.errorbar(xs[done], means[done], yerr=errors[done], marker="o", capsize=4, gid=key)
    if logx:
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks(xs, [fmt_value(x, v) for v in numbers[x]])
    return ax


def figure_imbalance(estimates: Estimates) -> Figure | None:
    """Final NC1, NC2, minority collapse and test accuracy against ρ (log x), mean ± std over seeds."""
    study = estimates.extra_studies.imbalance
    if study is None:
        return None
    numbers = numeric(study.summary)
    axes = new_axes(1, len(IMBALANCE_PANELS))
    for ax, (key, title, ylabel, logy) in zip(axes, IMBALANCE_PANELS):
        plot_value_errorbars(numbers, "imbalance_ratio", key, ax, logx=True)
        if logy and (numbers[f"{key}_mean"].dropna() > 0).all():
            ax.set_yscale("log")
        ax.set(title=title, xlabel="imbalance ratio ρ", ylabel=ylabel)
    axes[2].axhline(1.0, color="C3", linestyle=":", linewidth=1, label="merged (cos = 1)")
    add_legend(axes[2])
    seeds = over_seeds(numbers["n"] if "n" in numbers else [], "mean ± std")
    axes[0].figure.suptitle(f"Class imbalance: collapse and minority collapse against ρ ({seeds})")
    return axes[0].figure


def figure_train_test_nc1(estimates: Estimates) -> Figure | None:
    """Train and test NC1 over the epochs (mean over seeds, log y) for up to four conditions; the title says over
    how many seeds (`over_seeds`)."""
    panels = estimates.extra_studies.train_test
    if not panels:
        return None
    axes = new_axes(1, len(panels))
    for ax, panel in zip(axes, panels):
        for key, label, color in (("train", "train NC1", "C0"), ("test", "test NC1", "C1")):
            if key in panel.curves:
                series = panel.curves[key].dropna()
                ax.plot(series.index, series.to_numpy(), color=color, linewidth=1.2, label=label, gid=key)
        ax.set(title=f"{panel.label} ({count(len(panel.runs), 'seed')})", xlabel="epoch", ylabel="NC1")
        _mark_panel(ax, panel)
    seeds = over_seeds([len(panel.runs) for panel in panels])
    axes[0].figure.suptitle(f"Test-set collapse: train and test NC1 ({seeds})")
    return axes[0].figure


def make_extra_study_figures(estimates: Estimates) -> dict[str, Figure]:
    """Every figure beyond the paper whose runs exist, keyed by file stem."""
    candidates: dict[str, Callable[[Estimates], Figure | None]] = {
        "fig_imbalance": figure_imbalance,
        "fig_layerwise": figure_layerwise,
        "fig_train_test_nc1": figure_train_test_nc1,
    }
    return {stem: figure for stem, make in candidates.items() if (figure := make(estimates)) is not None}


def build_extra_study_figures(estimates: Estimates, out_dir: Path, formats: Sequence[str] = FORMATS) -> list[Path]:
    """Write every figure beyond the paper whose runs exist to `out_dir` in each format; return the paths."""
    paths = []
    for stem, figure in make_extra_study_figures(estimates).items():
        paths += save_figure(figure, out_dir, stem, formats)
    return paths
