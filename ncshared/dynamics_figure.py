"""One run's dynamics figure (the paper's Figure 1), and the axes helpers every figure module builds on.

A leaf: it imports matplotlib, numpy, pandas and `ncshared.schema` only (no scipy, no other analysis module),
because training imports it to log each run's `schema.DYNAMICS_FIGURE`. Figures are drawn on
`matplotlib.figure.Figure` objects directly (Agg canvas, no pyplot state), so it works headless and leaks no
open figures.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ncshared.schema import (
    COLLAPSE_THRESHOLD,
    FN,
    FN_STAR,
    HISTORY_EPOCH,
    NC1,
    NC2,
    NC3,
    PHASE,
    STATUS_DIVERGED,
    T_NC,
    TEST_ACC,
    TEST_NC1,
    TRAIN_ACC,
)

PANEL_SIZE = (4.2, 3.2)
SWITCH_SETTLE = 10  # epochs after the CE → MSE switch whose accuracy dip may fall below the accuracy axis
DPI = 120  # PNG resolution; figures are laid out at it, so a frozen layout is exactly the one PNG would get

Run = Mapping[str, object] | pd.Series


# ------------------------------------------------------------------------------------------ helpers


def new_axes(rows: int, cols: int, size: tuple[float, float] = PANEL_SIZE) -> np.ndarray:
    """A fresh constrained-layout figure of rows × cols panels; its Axes, flattened."""
    figure = Figure(figsize=(size[0] * cols, size[1] * rows), dpi=DPI, layout="constrained")
    return np.atleast_1d(figure.subplots(rows, cols, squeeze=False)).ravel()


def add_legend(ax: Axes) -> None:
    """A small legend, only when something is labelled."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")


def mark_vertical(ax: Axes, epoch: float, label: str, style: str, color: str) -> None:
    """A vertical line at `epoch` (nothing for NaN)."""
    if not math.isnan(epoch):
        ax.axvline(epoch, linestyle=style, color=color, linewidth=1, label=label)


def run_value(run: Run, key: str) -> float:
    """A run's param or metric as a float (NaN when absent or not a number)."""
    value = run.get(key, math.nan) if hasattr(run, "get") else math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def finite_series(history: pd.DataFrame, metric: str) -> pd.Series:
    """A metric's finite values by epoch (or step): NaN and ±inf (a diverged run's last epochs) are left out."""
    if metric not in history.columns:
        return pd.Series(dtype=float)
    values = pd.to_numeric(history[metric], errors="coerce")
    return values[np.isfinite(values.to_numpy(dtype=float))]


def _divergence_epoch(history: pd.DataFrame, run: Run) -> float:
    """The epoch a diverged run stopped at (its last: training ends where it diverges), or NaN."""
    if run.get("status") != STATUS_DIVERGED or history.empty:
        return math.nan
    return float(history.index.max())


def _by_epoch(history: pd.DataFrame) -> pd.DataFrame:
    """A wide history (an `epoch` column or index, one column per metric), indexed by epoch and sorted."""
    if {"metric", "value"} <= set(history.columns):
        raise ValueError("plot_dynamics draws a wide history (one row per epoch); convert the long histories "
                         "frame with analysis.selection.wide_history(histories, run_id)")
    return (history.set_index(HISTORY_EPOCH) if HISTORY_EPOCH in history.columns else history).sort_index()


def _phase_switch(history: pd.DataFrame, run: Run) -> float:
    """The last Phase-1 epoch (where the CE → MSE switch is drawn), or NaN."""
    phase = finite_series(history, PHASE)
    if (phase == 2).any() and (phase == 1).any():
        return float(phase[phase == 1].index.max())
    if run.get("protocol", "two-phase") == "two-phase" and not (phase == 1).all():
        return run_value(run, "phase1_epochs")
    return math.nan


def _clip_switch_dip(ax: Axes, history: pd.DataFrame, switch: float, settle: int = SWITCH_SETTLE) -> None:
    """Keep the accuracy axis on the curves, not on the few epochs after the CE → MSE switch: when those dip below
    everything else, the axis starts at the rest's minimum and a note gives the dip's depth."""
    if math.isnan(switch):
        return
    values = pd.concat([finite_series(history, key) for key in (TRAIN_ACC, TEST_ACC)])
    if values.empty:
        return
    dip = values[(values.index > switch) & (values.index <= switch + settle)]
    rest = values.drop(dip.index)
    if dip.empty or rest.empty or dip.min() >= rest.min():
        return
    low, high = float(rest.min()), float(values.max())
    margin = 0.05 * max(high - low, 0.01)
    ax.set_ylim(low - margin, high + margin)
    ax.annotate(f"switch dip to {dip.min():.1%} (below the axis)", xy=(0.98, 0.04), xycoords="axes fraction",
                ha="right", fontsize="small", color="0.4")


# ------------------------------------------------------------------------------------- the figure


def plot_dynamics(history: pd.DataFrame, run: Run, axes: Sequence[Axes] | None = None) -> np.ndarray:
    """Figure 1 for one run: (a) accuracy (the switch's brief dip may fall below the axis, noted), (b) NC1 on a
    log axis with the ε line (and the test set's NC1 when logged), (c) NC2 and NC3, (d) fn on a log axis with fn*, the CE → MSE switch and T_NC marked.

    `history` is wide: one row per epoch (an `epoch` column, as training's per-epoch records, or the epoch
    index of `analysis.selection.histories_by_run`), one column per metric key. `run` holds the run's params
    and summary metrics (and `run_name` for the title; `status` and `divergence_reason` for a diverged run, whose
    last epoch is marked and whose non-finite values are left out). Returns the 4 Axes.
    """
    wide = _by_epoch(history)
    axes = new_axes(2, 2) if axes is None else np.asarray(axes).ravel()
    switch, t_nc, eps = _phase_switch(wide, run), run_value(run, T_NC), run_value(run, COLLAPSE_THRESHOLD)
    acc, nc1, pair, fn = axes[:4]
    for key, label in ((TRAIN_ACC, "train"), (TEST_ACC, "test")):
        series = finite_series(wide, key)
        if len(series):
            acc.plot(series.index, series.to_numpy(), label=label)
    acc.set(title="(a) Accuracy", xlabel="epoch", ylabel="accuracy")
    _clip_switch_dip(acc, wide, switch)
    series = finite_series(wide, NC1)
    nc1.plot(series.index, series.to_numpy(), color="C0", label="NC1 (train)", gid=NC1)
    test_series = finite_series(wide, TEST_NC1)
    if len(test_series):  # runs logged before test-set collapse existed have none
        nc1.plot(test_series.index, test_series.to_numpy(), color="C1", linewidth=1, label="NC1 (test)",
                 gid=TEST_NC1)
    nc1.set_yscale("log")
    if not math.isnan(eps):
        nc1.axhline(eps, color="k", linestyle=":", linewidth=1, label=f"ε = {eps:g}")
    nc1.set(title="(b) NC1", xlabel="epoch", ylabel="Tr(Σ_W) / Tr(Σ_B)")
    for key, label in ((NC2, "NC2"), (NC3, "NC3")):
        series = finite_series(wide, key)
        if len(series):
            pair.plot(series.index, series.to_numpy(), label=label, gid=key)
    pair.set(title="(c) NC2 and NC3", xlabel="epoch")
    series = finite_series(wide, FN)
    fn.plot(series.index, series.to_numpy(), color="C2", label="fn", gid=FN)
    fn_star = run_value(run, FN_STAR)
    if not math.isnan(fn_star):
        fn.axhline(fn_star, color="C3", linestyle="--", linewidth=1, label=f"fn* = {fn_star:.3f}")
    if len(series) and (series > 0).all():
        fn.set_yscale("log")  # Phase 1's norms are often 10× fn*: a linear axis flattens the approach to it
    fn.set(title="(d) Mean feature norm (log)", xlabel="epoch", ylabel="fn")
    diverged = _divergence_epoch(wide, run)
    for ax in axes[:4]:
        mark_vertical(ax, switch, "CE → MSE", "--", "0.5")
        mark_vertical(ax, t_nc, f"T_NC = {t_nc:.0f}" if not math.isnan(t_nc) else "", ":", "C3")
        mark_vertical(ax, diverged, f"diverged (epoch {diverged:.0f})", "-.", "C3")
        add_legend(ax)
    title, reason = str(run.get("run_name", "")), run.get("divergence_reason")
    if not math.isnan(diverged) and isinstance(reason, str) and reason:
        title += f"\ndiverged: {reason}"
    axes[0].figure.suptitle(title)
    return axes
