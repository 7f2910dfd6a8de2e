"""The panels the figures are made of, each drawn from precomputed estimates.

Every function takes `ax=None` (a fresh single-panel figure) or the Axes to draw on, draws, and returns the
Axes. None computes a statistic: means, spreads, fits and lead times come in from `analysis.aggregate`
(per-condition frames as `aggregate.numeric` flattens them, `Summary` objects, a `RegressionResult`).
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.axes import Axes

from analysis.render import LABELS, fmt_value, label
from analysis.selection import Histories, column, histories_by_run
from analysis.stats import RegressionResult, Summary
from ncshared.dynamics_figure import add_legend, new_axes
from ncshared.schema import FN, FN_STAR, NC1, NC2, NC3, PHASE, TEST_ACC, TRAIN_ACC

METRIC_LABELS = {NC1: "NC1", FN: "fn (mean feature norm)", TRAIN_ACC: "train accuracy", TEST_ACC: "test accuracy",
                 NC2: "NC2", NC3: "NC3"}


def plot_trajectories(
    histories: Histories,
    runs: pd.DataFrame,
    metric: str,
    ax: Axes | None = None,
    hue: str | None = None,
    bands: Mapping[object, Summary] | None = None,
    phase2_only: bool = False,
    logy: bool = False,
) -> Axes:
    """One line per run of `metric` against epoch, coloured by the value of `hue`.

    histories: the long frame or, cheaper, `histories_by_run` of it. bands: per hue value, a Summary whose
    mean ± std is shaded with the mean dashed (the paper's Fig. 4 fn* bands).
    """
    ax = new_axes(1, 1)[0] if ax is None else ax
    lookup = histories_by_run(histories)
    groups = runs.groupby(hue, sort=True) if hue else [(None, runs)]
    for index, (value, group) in enumerate(groups):
        color = f"C{index % 10}"
        name = None if value is None else label(hue, value)
        for _, run in group.sort_values("seed" if "seed" in group else "run_id").iterrows():
            wide = lookup.get(str(run["run_id"]))
            if wide is None or metric not in wide:
                continue
            series = wide[metric].dropna()
            if phase2_only and PHASE in wide:
                series = series[wide.loc[series.index, PHASE] == 2]
            ax.plot(series.index, series.to_numpy(), color=color, linewidth=1, alpha=0.8, label=name,
                    gid=str(run["run_id"]))
            name = None
        band = (bands or {}).get(value)
        if band is not None and band.n:
            spread = 0.0 if math.isnan(band.std) else band.std
            ax.axhspan(band.mean - spread, band.mean + spread, color=color, alpha=0.15)
            ax.axhline(band.mean, color=color, linestyle="--", linewidth=1)
    if logy:
        ax.set_yscale("log")
    ax.set(xlabel="epoch", ylabel=METRIC_LABELS.get(metric, metric))
    if hue:
        add_legend(ax)
    return ax


def plot_sweep(numbers: pd.DataFrame, x: str, y: str = "T_NC", ax: Axes | None = None, logx: bool = False) -> Axes:
    """Mean ± std of `y` (T_NC or fn_star, over collapsed runs) against the swept `x`, with error bars.

    `numbers` has one row per condition: `x`, `<y>_mean`, `<y>_std` and `n_collapsed` (`aggregate.numeric` of
    the per-condition summaries). A categorical x (activation) is placed at 0, 1, …; a condition with no
    collapse (mean NaN) is marked DNF at the top of the axis.
    """
    ax = new_axes(1, 1)[0] if ax is None else ax
    categorical = numbers[x].dtype == object or isinstance(numbers[x].iloc[0], str)
    positions = np.arange(len(numbers)) if categorical else numbers[x].to_numpy(dtype=float)
    means = numbers[f"{y}_mean"].to_numpy(dtype=float)
    errors = np.nan_to_num(numbers[f"{y}_std"].to_numpy(dtype=float), nan=0.0)
    done = ~np.isnan(means)
    ax.errorbar(positions[done], means[done], yerr=errors[done], marker="o", capsize=4,
                linestyle="none" if categorical else "-")
    for position, mean, n in zip(positions[done], means[done], numbers["n_collapsed"].to_numpy()[done]):
        ax.annotate(f"n={n}", (position, mean), textcoords="offset points", xytext=(4, 4), fontsize="x-small")
    if not done.any():  # nothing to draw: say so instead of an empty frame with meaningless ticks
        ax.text(0.5, 0.5, "no condition collapsed (DNF):\n" + ", ".join(fmt_value(x, v) for v in numbers[x]),
                transform=ax.transAxes, ha="center", va="center", color="C3", fontsize="small")
        ax.set_yticks([])
    if (~done).any():  # never collapsed: a DNF mark at the top, inside the x-range
        level = np.nanmean(means) if done.any() else 0.0
        ax.update_datalim(np.column_stack([positions[~done], np.full((~done).sum(), level)]))
        ax.autoscale_view()
        for position in positions[~done]:
            ax.annotate("DNF", (position, 0.97), xycoords=("data", "axes fraction"), ha="center", va="top", color="C3")
    if logx:
        ax.set_xscale("log")
        ax.minorticks_off()
    if categorical or logx:
        ax.set_xticks(positions, [fmt_value(x, v) for v in numbers[x]])
    ax.set(xlabel=LABELS.get(x, x), ylabel="T_NC (epochs)" if y == "T_NC" else "fn*")
    return ax


def plot_fn_star_points(
    used: pd.DataFrame, by: str | Sequence[str], ax: Axes | None = None, band: Summary | None = None
) -> Axes:
    """Every confirmed fn* as a point per group (strip plot); `band` (the pooled fn*) shaded as mean ± σ."""
    ax = new_axes(1, 1)[0] if ax is None else ax
    by = [by] if isinstance(by, str) else list(by)
    collapsed = used[column(used, FN_STAR).notna()]
    labels = []
    for index, (value, group) in enumerate(collapsed.groupby(by, sort=True)):
        value = value if isinstance(value, tuple) else (value,)
        labels.append("\n".join(fmt_value(p, v) for p, v in zip(by, value)))
        offsets = np.linspace(-0.15, 0.15, len(group)) if len(group) > 1 else np.zeros(1)
        ax.plot(index + offsets, group[FN_STAR].to_numpy(), "o", color=f"C{index % 10}")
    if band is not None and band.n:
        ax.axhline(band.mean, color="k", linestyle="--", linewidth=1, label=f"mean {band.mean:.3f}")
        if not math.isnan(band.std):
            ax.axhspan(band.mean - band.std, band.mean + band.std, color="0.5", alpha=0.15, label="± 1σ")
        add_legend(ax)
    ax.set_xticks(range(len(labels)), labels)
    ax.set(ylabel="fn*")
    return ax


def plot_power_law(fit: RegressionResult, low: float, high: float, param: str, ax: Axes | None = None) -> Axes:
    """The fitted y = e^intercept · x^slope from `low` to `high` (dashed), labelled `∝ param^slope`."""
    ax = new_axes(1, 1)[0] if ax is None else ax
    if not math.isnan(fit.slope):
        xs = np.geomspace(low, high, 50)
        ax.plot(xs, np.exp(fit.intercept) * xs**fit.slope, "k--", linewidth=1, label=f"∝ {param}^{fit.slope:.3f}")
        add_legend(ax)
    return ax


def plot_lead_time(frame: pd.DataFrame, lead: float, by: str = "width", ax: Axes | None = None) -> Axes:
    """T_NC against T_cross per run (`aggregate.lead_time_frame`), coloured by `by`, with T_NC = T_cross dotted
    and the rule T_cross + lead dashed."""
    ax = new_axes(1, 1)[0] if ax is None else ax
    if len(frame):
        for index, (value, group) in enumerate(frame.groupby(by)):
            ax.plot(group["T_cross"], group["T_NC"], "o", color=f"C{index % 10}", label=f"{by} {fmt_value(by, value)}")
        span = np.array([np.nanmin(frame[["T_cross", "T_NC"]].to_numpy()),
                         np.nanmax(frame[["T_cross", "T_NC"]].to_numpy())])
        ax.plot(span, span, "k:", linewidth=1, label="T_NC = T_cross")
        ax.plot(span, span + lead, "k--", linewidth=1, label=f"T_cross + {lead:g}")
        add_legend(ax)
    ax.set(xlabel="T_cross", ylabel="T_NC")
    return ax
