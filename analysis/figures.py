"""The paper's Figures 1–9 (and the intervention trajectories) from the runs and histories frames.

Figures are drawn on `matplotlib.figure.Figure` objects directly (Agg canvas, no pyplot state), so the
module works headless and leaks no open figures. Every plotting function takes `ax=None` (or `axes=None`),
draws, and returns the Axes; `build_figures` writes every figure whose runs exist as PNG and PDF, each laid out
once (`freeze_layout`) and then drawn once per format.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.layout_engine import PlaceHolderLayoutEngine

from analysis import stats, tables
from analysis.tables import FN_STAR, SWEEP_NAMES, T_NC, THRESHOLD, column, family, select

Histories = pd.DataFrame | Mapping[str, pd.DataFrame]
PANEL_SIZE = (4.2, 3.2)
DPI = 120  # PNG resolution; figures are laid out at it, so the frozen layout is exactly the one PNG would get
METRIC_LABELS = {"nc/nc1": "NC1", "nc/fn": "fn (mean feature norm)", "train/acc": "train accuracy",
                 "test/acc": "test accuracy", "nc/nc2": "NC2", "nc/nc3": "NC3"}


# ------------------------------------------------------------------------------------------ data


def wide_history(history: pd.DataFrame, run_id: str | None = None) -> pd.DataFrame:
    """A run's history as one row per epoch (index `epoch`), one column per metric key (sorted).

    Accepts the long histories frame (`run_id, epoch, metric, value`; `run_id` selects the run when the
    frame holds several) or an already wide frame (index or column `epoch`).
    """
    if {"metric", "value"} <= set(history.columns):
        if run_id is not None and "run_id" in history.columns:
            history = history[history["run_id"] == run_id]
        return histories_by_run(history.assign(run_id="")).get("") if len(history) else _pivot(*_EMPTY)
    return (history.set_index("epoch") if "epoch" in history.columns else history).sort_index()


_EMPTY = (np.empty(0, "int64"), np.empty(0, "int64"), np.empty(0), np.empty(0, object))


def _pivot(epochs: np.ndarray, metric_codes: np.ndarray, values: np.ndarray, names: np.ndarray) -> pd.DataFrame:
    """Long rows (epoch, metric code into sorted `names`, value) → wide frame: epochs ascending, the metrics
    present in name order; a repeated (epoch, metric) keeps its last row, as `pivot_table(aggfunc="last")`."""
    present, columns = np.unique(metric_codes, return_inverse=True)
    steps, rows = np.unique(epochs, return_inverse=True)
    cells = rows.ravel() * len(present) + columns.ravel()
    _, last_reversed = np.unique(cells[::-1], return_index=True)
    keep = len(cells) - 1 - last_reversed
    grid = np.full(len(steps) * len(present), np.nan)
    grid[cells[keep]] = values[keep]
    return pd.DataFrame(grid.reshape(len(steps), len(present)), index=pd.Index(steps, name="epoch"),
                        columns=pd.Index([str(name) for name in names[present]], name="metric"))


def histories_by_run(histories: Histories) -> dict[str, pd.DataFrame]:
    """Wide history per run id (as `wide_history`), split from the long frame with one sort and integer codes."""
    if isinstance(histories, Mapping):
        return dict(histories)
    if histories.empty:
        return {}
    run_codes, run_ids = pd.factorize(histories["run_id"], sort=False)
    metric_codes, names = pd.factorize(histories["metric"], sort=True)
    order = np.argsort(run_codes, kind="stable")  # keeps each run's rows in their logged order
    bounds = np.searchsorted(run_codes[order], np.arange(len(run_ids) + 1))
    epochs, metric_codes = histories["epoch"].to_numpy()[order], metric_codes[order]
    values, names = histories["value"].to_numpy(dtype=float)[order], np.asarray(names, dtype=object)
    return {str(run_id): _pivot(epochs[lo:hi], metric_codes[lo:hi], values[lo:hi], names)
            for run_id, lo, hi in zip(run_ids, bounds[:-1], bounds[1:])}


def _series(history: pd.DataFrame, metric: str) -> pd.Series:
    return history[metric].dropna() if metric in history.columns else pd.Series(dtype=float)


def _value(run: Mapping[str, object] | pd.Series, key: str) -> float:
    value = run.get(key, math.nan) if hasattr(run, "get") else math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _phase_switch(history: pd.DataFrame, run: Mapping[str, object] | pd.Series) -> float:
    """The last Phase-1 epoch (where the CE → MSE switch is drawn), or NaN."""
    phase = _series(history, "phase")
    if (phase == 2).any() and (phase == 1).any():
        return float(phase[phase == 1].index.max())
    if run.get("protocol", "two-phase") == "two-phase" and not (phase == 1).all():
        return _value(run, "phase1_epochs")
    return math.nan


def _new_axes(rows: int, cols: int, size: tuple[float, float] = PANEL_SIZE) -> np.ndarray:
    figure = Figure(figsize=(size[0] * cols, size[1] * rows), dpi=DPI, layout="constrained")
    return np.atleast_1d(figure.subplots(rows, cols, squeeze=False)).ravel()


def _legend(ax: Axes) -> None:
    """A small legend, only when something is labelled."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")


def _mark_vertical(ax: Axes, epoch: float, label: str, style: str, color: str) -> None:
    if not math.isnan(epoch):
        ax.axvline(epoch, linestyle=style, color=color, linewidth=1, label=label)


# ------------------------------------------------------------------------------------- per run


def plot_dynamics(
    history: pd.DataFrame, run: Mapping[str, object] | pd.Series, axes: Sequence[Axes] | None = None
) -> np.ndarray:
    """Figure 1 for one run: (a) accuracy, (b) NC1 on a log axis with the ε line, (c) NC2 and NC3,
    (d) fn with fn*, the CE → MSE switch and T_NC marked. `history` is long or wide; returns the 4 Axes."""
    wide = wide_history(history, str(run.get("run_id")) if run.get("run_id") is not None else None)
    axes = _new_axes(2, 2) if axes is None else np.asarray(axes).ravel()
    switch, t_nc, eps = _phase_switch(wide, run), _value(run, T_NC), _value(run, THRESHOLD)
    acc, nc1, pair, fn = axes[:4]
    for key, label in (("train/acc", "train"), ("test/acc", "test")):
        series = _series(wide, key)
        if len(series):
            acc.plot(series.index, series.to_numpy(), label=label)
    acc.set(title="(a) Accuracy", xlabel="epoch", ylabel="accuracy")
    series = _series(wide, "nc/nc1")
    nc1.plot(series.index, series.to_numpy(), color="C0", label="NC1", gid="nc/nc1")
    nc1.set_yscale("log")
    if not math.isnan(eps):
        nc1.axhline(eps, color="k", linestyle=":", linewidth=1, label=f"ε = {eps:g}")
    nc1.set(title="(b) NC1", xlabel="epoch", ylabel="Tr(Σ_W) / Tr(Σ_B)")
    for key, label in (("nc/nc2", "NC2"), ("nc/nc3", "NC3")):
        series = _series(wide, key)
        if len(series):
            pair.plot(series.index, series.to_numpy(), label=label, gid=key)
    pair.set(title="(c) NC2 and NC3", xlabel="epoch")
    series = _series(wide, "nc/fn")
    fn.plot(series.index, series.to_numpy(), color="C2", label="fn", gid="nc/fn")
    fn_star = _value(run, FN_STAR)
    if not math.isnan(fn_star):
        fn.axhline(fn_star, color="C3", linestyle="--", linewidth=1, label=f"fn* = {fn_star:.3f}")
    fn.set(title="(d) Mean feature norm", xlabel="epoch", ylabel="fn")
    for ax in axes[:4]:
        _mark_vertical(ax, switch, "CE → MSE", "--", "0.5")
        _mark_vertical(ax, t_nc, f"T_NC = {t_nc:.0f}" if not math.isnan(t_nc) else "", ":", "C3")
        _legend(ax)
    axes[0].figure.suptitle(str(run.get("run_name", "")))
    return axes


def plot_trajectories(
    histories: Histories,
    runs: pd.DataFrame,
    metric: str,
    ax: Axes | None = None,
    hue: str | None = None,
    band: bool = False,
    phase2_only: bool = False,
    logy: bool = False,
) -> Axes:
    """One line per run of `metric` against epoch, coloured by the value of `hue`.

    band: shade fn* ± σ (over the collapsed runs) per hue value — the paper's Fig. 4 bands.
    """
    ax = _new_axes(1, 1)[0] if ax is None else ax
    lookup = histories_by_run(histories)
    groups = runs.groupby(hue, sort=True) if hue else [(None, runs)]
    for index, (value, group) in enumerate(groups):
        color = f"C{index % 10}"
        label = None if value is None else f"{tables.LABELS.get(hue, hue)} = {tables.fmt_value(hue, value)}"
        for _, run in group.sort_values("seed" if "seed" in group else "run_id").iterrows():
            wide = lookup.get(str(run["run_id"]))
            if wide is None or metric not in wide:
                continue
            series = wide[metric].dropna()
            if phase2_only and "phase" in wide:
                series = series[wide.loc[series.index, "phase"] == 2]
            ax.plot(series.index, series.to_numpy(), color=color, linewidth=1, alpha=0.8, label=label,
                    gid=str(run["run_id"]))
            label = None
        if band:
            fn = stats.describe(column(group, FN_STAR))
            if fn.n:
                spread = 0.0 if math.isnan(fn.std) else fn.std
                ax.axhspan(fn.mean - spread, fn.mean + spread, color=color, alpha=0.15)
                ax.axhline(fn.mean, color=color, linestyle="--", linewidth=1)
    if logy:
        ax.set_yscale("log")
    ax.set(xlabel="epoch", ylabel=METRIC_LABELS.get(metric, metric))
    if hue:
        _legend(ax)
    return ax


# ------------------------------------------------------------------------------------ per sweep


def plot_sweep(summary: pd.DataFrame, x: str, y: str = "T_NC", ax: Axes | None = None, logx: bool = False) -> Axes:
    """Mean ± std of `y` (T_NC or fn_star, over collapsed runs) against the swept `x`, with error bars.

    `summary` is `tables.summaries(...)` (Summary cells). A categorical x (activation) is placed at 0, 1, …;
    a condition with no collapse is marked DNF at the top of the axis.
    """
    ax = _new_axes(1, 1)[0] if ax is None else ax
    categorical = summary[x].dtype == object or isinstance(summary[x].iloc[0], str)
    positions = np.arange(len(summary)) if categorical else summary[x].to_numpy(dtype=float)
    means = np.array([cell.mean for cell in summary[y]])
    errors = np.array([0.0 if math.isnan(cell.std) else cell.std for cell in summary[y]])
    done = ~np.isnan(means)
    ax.errorbar(positions[done], means[done], yerr=errors[done], marker="o", capsize=4,
                linestyle="none" if categorical else "-")
    for position, mean, n in zip(positions[done], means[done], summary["n_collapsed"].to_numpy()[done]):
        ax.annotate(f"n={n}", (position, mean), textcoords="offset points", xytext=(4, 4), fontsize="x-small")
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
        ax.set_xticks(positions, [tables.fmt_value(x, v) for v in summary[x]])
    ax.set(xlabel=tables.LABELS.get(x, x), ylabel="T_NC (epochs)" if y == "T_NC" else "fn*")
    return ax


def plot_fn_star_points(
    used: pd.DataFrame, by: str | Sequence[str], ax: Axes | None = None, band: bool = True
) -> Axes:
    """Every confirmed fn* as a point per group (strip plot), with the grand mean ± σ shaded when `band`."""
    ax = _new_axes(1, 1)[0] if ax is None else ax
    by = [by] if isinstance(by, str) else list(by)
    collapsed = used[column(used, FN_STAR).notna()]
    labels = []
    for index, (value, group) in enumerate(collapsed.groupby(by, sort=True)):
        value = value if isinstance(value, tuple) else (value,)
        labels.append("\n".join(tables.fmt_value(p, v) for p, v in zip(by, value)))
        offsets = np.linspace(-0.15, 0.15, len(group)) if len(group) > 1 else np.zeros(1)
        ax.plot(index + offsets, group[FN_STAR].to_numpy(), "o", color=f"C{index % 10}")
    if band and len(collapsed):
        grand = stats.describe(collapsed[FN_STAR])
        ax.axhline(grand.mean, color="k", linestyle="--", linewidth=1, label=f"mean {grand.mean:.3f}")
        if not math.isnan(grand.std):
            ax.axhspan(grand.mean - grand.std, grand.mean + grand.std, color="0.5", alpha=0.15, label="± 1σ")
        _legend(ax)
    ax.set_xticks(range(len(labels)), labels)
    ax.set(ylabel="fn*")
    return ax


# ---------------------------------------------------------------------------------- the figures


def _used_family(runs: pd.DataFrame, param: str) -> pd.DataFrame:
    return select(family(runs, [param], SWEEP_NAMES[param])).used


def _first_seed(runs: pd.DataFrame, by: str) -> pd.DataFrame:
    """The lowest-seed run of each value of `by` (the paper's "seed 0" panels)."""
    return runs.sort_values("seed").groupby(by, sort=True).head(1)


def baseline_run(runs: pd.DataFrame) -> pd.Series | None:
    """Figure 1's run: the lowest seed of the collapsed two-phase MLP condition that the sweeps share —
    the one taking the most common value of the most design params (MLP-5, ReLU, width 512, λ = 1e-4)."""
    used = select(runs).used
    used = used[column(used, T_NC).notna() & ~tables.is_intervention(used) & (column(used, "arch") == "mlp")]
    used = used[column(used, "protocol").isin(["two-phase"])]
    if used.empty:
        return None
    keys = tables.design_key(used, ())
    typical = (keys == keys.mode().iloc[0]).sum(axis=1)
    best = used[typical == typical.max()]
    return best.sort_values(["seed", "run_id"]).iloc[0]


def figure_dynamics(runs: pd.DataFrame, lookup: Mapping[str, pd.DataFrame]) -> Figure | None:
    run = baseline_run(runs)
    if run is None or str(run["run_id"]) not in lookup:
        return None
    return plot_dynamics(lookup[str(run["run_id"])], run)[0].figure


def figure_condition(used: pd.DataFrame, lookup: Mapping[str, pd.DataFrame], title: str,
                     reference: float = math.nan) -> Figure:
    """Figures 2 and 7: accuracy, NC1 and fn of every seed of one condition; fn* dashed, a reference dotted."""
    axes = _new_axes(1, 3)
    plot_trajectories(lookup, used, "train/acc", ax=axes[0], hue="seed")
    plot_trajectories(lookup, used, "nc/nc1", ax=axes[1], hue="seed", logy=True)
    plot_trajectories(lookup, used, "nc/fn", ax=axes[2], hue="seed")
    fn = stats.describe(column(used, FN_STAR))
    if fn.n:
        axes[2].axhline(fn.mean, color="k", linestyle="--", linewidth=1, label=f"fn* = {fn.mean:.3f}")
    if not math.isnan(reference):
        axes[2].axhline(reference, color="k", linestyle=":", linewidth=1, label=f"reference {reference:.3f}")
    eps = column(used, THRESHOLD).dropna()
    if len(eps):
        axes[1].axhline(float(eps.iloc[0]), color="k", linestyle=":", linewidth=1)
    for ax, name in zip(axes, ("(a) Accuracy", "(b) NC1", "(c) fn")):
        ax.set_title(name)
        _legend(ax)
    axes[0].figure.suptitle(title)
    return axes[0].figure


def figure_depth(runs: pd.DataFrame, lookup: Mapping[str, pd.DataFrame]) -> Figure | None:
    used = _used_family(runs, "depth")
    if used.empty:
        return None
    summary = tables.summaries(used, ["depth"])
    axes = _new_axes(1, 3)
    plot_sweep(summary, "depth", "T_NC", ax=axes[0]).set_title("(a) T_NC vs depth")
    plot_sweep(summary, "depth", "fn_star", ax=axes[1]).set_title("(b) fn* vs depth")
    plot_trajectories(lookup, _first_seed(used, "depth"), "nc/fn", ax=axes[2], hue="depth", phase2_only=True)
    axes[2].set_title("(c) Phase-2 fn (lowest seed)")
    return axes[0].figure


def figure_activation(runs: pd.DataFrame, lookup: Mapping[str, pd.DataFrame]) -> Figure | None:
    used = _used_family(runs, "activation")
    if used.empty:
        return None
    values = sorted(used["activation"].unique())
    axes = _new_axes(2, len(values)).reshape(2, len(values))
    for index, value in enumerate(values):
        group = used[used["activation"] == value]
        name = tables.fmt_value("activation", value)
        plot_trajectories(lookup, group, "nc/nc1", ax=axes[0, index], logy=True).set_title(f"{name}: NC1")
        plot_trajectories(lookup, group.assign(_act=value), "nc/fn", ax=axes[1, index], hue="_act", band=True)
        axes[1, index].set_title(f"{name}: fn (fn* ± σ shaded)")
    return axes[0, 0].figure


def figure_weight_decay(runs: pd.DataFrame) -> Figure | None:
    used = _used_family(runs, "weight_decay")
    if used.empty:
        return None
    summary = tables.summaries(used, ["weight_decay"])
    axes = _new_axes(1, 3)
    plot_sweep(summary, "weight_decay", "T_NC", ax=axes[0], logx=True).set_title("(a) T_NC vs λ")
    plot_sweep(summary, "weight_decay", "fn_star", ax=axes[1], logx=True).set_title("(b) fn* vs λ")
    grand = stats.describe(column(used, FN_STAR))
    if grand.n:
        axes[1].axhline(grand.mean, color="k", linestyle="--", linewidth=1)
    plot_fn_star_points(used, "weight_decay", ax=axes[2]).set_title("(c) confirmed fn* (grand mean ± 1σ)")
    return axes[0].figure


def figure_summary(runs: pd.DataFrame) -> Figure | None:
    panels = [(p, _used_family(runs, p)) for p in ("depth", "activation", "weight_decay")]
    grid = tables.grid_cells(runs)
    if all(used.empty for _, used in panels) and grid.empty:
        return None
    axes = _new_axes(1, 4)
    for ax, (param, used), letter in zip(axes, panels, "abc"):
        if used.empty:
            ax.set_axis_off()
            continue
        summary = tables.summaries(used, [param])
        plot_sweep(summary, param, "T_NC", ax=ax, logx=param == "weight_decay")
        ax.set_title(f"({letter}) T_NC vs {tables.LABELS[param]}")
        if param == "activation":  # activation moves both speed and fn*: fn* on a second axis
            twin = plot_sweep(summary, param, "fn_star", ax=ax.twinx())
            for line in twin.get_lines():
                line.set_color("C1")
            twin.set_ylabel("fn* (orange)")
            ax.set_title(f"({letter}) T_NC and fn* vs {tables.LABELS[param]}")
    if grid.empty:
        axes[3].set_axis_off()
    else:
        plot_fn_star_points(grid, ["cell_arch", "dataset"], ax=axes[3], band=False)
        groups = [column(g, FN_STAR).dropna().to_numpy() for _, g in grid.groupby(["cell_arch", "dataset"])]
        anova = stats.one_way_anova(groups)
        axes[3].set_title(f"(d) fn* by pair (ANOVA F = {anova.f:.2f})")
    return axes[0].figure


def figure_width(runs: pd.DataFrame, histories: Histories) -> Figure | None:
    used = _used_family(runs, "width")
    if used.empty:
        return None
    summary = tables.summaries(used, ["width"])
    axes = _new_axes(1, 3)
    plot_sweep(summary, "width", "fn_star", ax=axes[0], logx=True).set_title("(a) fn* vs width")
    data = tables.numeric(summary)
    fit = stats.loglog_regression(data["width"], data["fn_star_mean"])
    if not math.isnan(fit.slope):
        widths = np.geomspace(data["width"].min(), data["width"].max(), 50)
        axes[0].plot(widths, np.exp(fit.intercept) * widths**fit.slope, "k--", linewidth=1,
                     label=f"∝ width^{fit.slope:.3f}")
        _legend(axes[0])
    plot_sweep(summary, "width", "T_NC", ax=axes[1], logx=True).set_title("(b) T_NC vs width")
    long = histories if not isinstance(histories, Mapping) else None
    lead = tables.lead_time_frame(used, long) if long is not None else pd.DataFrame()
    ax = axes[2]
    if len(lead):
        for index, (width, group) in enumerate(lead.groupby("width")):
            label = f"width {tables.fmt_value('width', width)}"
            ax.plot(group["T_cross"], group["T_NC"], "o", color=f"C{index % 10}", label=label)
        low = np.nanmin(lead[["T_cross", "T_NC"]].to_numpy())
        high = np.nanmax(lead[["T_cross", "T_NC"]].to_numpy())
        span = np.array([low, high])
        ax.plot(span, span, "k:", linewidth=1, label="T_NC = T_cross")
        ax.plot(span, span + tables.LEAD, "k--", linewidth=1, label=f"T_cross + {tables.LEAD}")
        _legend(ax)
    ax.set(title="(c) fn crossing precedes T_NC", xlabel="T_cross", ylabel="T_NC")
    return axes[0].figure


def figure_intervention(runs: pd.DataFrame, lookup: Mapping[str, pd.DataFrame]) -> Figure | None:
    used = select(family(runs, ["rescale_alpha"], SWEEP_NAMES["rescale_alpha"])).used
    if used.empty:
        return None
    axes = _new_axes(1, 2)
    plot_trajectories(lookup, used, "nc/fn", ax=axes[0], hue="rescale_alpha", band=True)
    axes[0].set_title("(a) fn after rescaling (fn* ± σ shaded)")
    plot_trajectories(lookup, used, "nc/nc1", ax=axes[1], hue="rescale_alpha", logy=True).set_title("(b) NC1")
    return axes[0].figure


def figure_protocol(runs: pd.DataFrame, lookup: Mapping[str, pd.DataFrame]) -> Figure | None:
    used = _used_family(runs, "protocol")
    if used.empty:
        return None
    first = _first_seed(used, "protocol")
    axes = _new_axes(1, 2)
    plot_trajectories(lookup, first, "nc/nc1", ax=axes[0], hue="protocol", logy=True).set_title("(a) NC1")
    plot_trajectories(lookup, first, "nc/fn", ax=axes[1], hue="protocol").set_title("(b) fn")
    eps = column(first, THRESHOLD).dropna()
    if len(eps):
        axes[0].axhline(float(eps.min()), color="k", linestyle=":", linewidth=1, label=f"ε = {eps.min():g}")
    two_phase = first[first["protocol"] == "two-phase"]
    switch = _value(two_phase.iloc[0], "phase1_epochs") if len(two_phase) else math.nan
    for ax in axes:
        _mark_vertical(ax, switch, "CE → MSE (two-phase)", "--", "0.5")
        _legend(ax)
    return axes[0].figure


def _grid_figures(runs: pd.DataFrame, lookup: Mapping[str, pd.DataFrame]) -> dict[str, Figure]:
    """Figures 2 and 7: every seed of each ResNet-20 grid cell (CIFAR-10 → Fig. 2, MNIST → Fig. 7)."""
    grid = tables.grid_cells(runs)
    grid = grid[column(grid, "arch") == "resnet20"]
    figures: dict[str, Figure] = {}
    if grid.empty:
        return figures
    cells = tables.grid_cells(runs)
    mlp = cells[(column(cells, "arch") == "mlp") & (column(cells, "dataset") == "mnist")]
    reference = float(column(mlp, FN_STAR).mean()) if len(mlp) else math.nan  # the paper's dotted MLP/MNIST fn*
    for dataset, used in grid.groupby("dataset"):
        number = {"cifar10": "fig2", "mnist": "fig7"}.get(str(dataset), "fig")
        note = "" if math.isnan(reference) else "; dotted: MLP fn* on mnist"
        figures[f"{number}_resnet20_{dataset}"] = figure_condition(
            used, lookup, f"ResNet-20 on {dataset} ({len(used)} seeds{note})", reference)
    return figures


def freeze_layout(figure: Figure) -> Figure:
    """Run the figure's layout engine once (at DPI) and fix the result, so that each later save only draws.

    Constrained layout otherwise re-solves on every `savefig` (once for PNG, again for PDF), each solve costing
    about as much as a draw. The PNG is pixel-identical to a save with the layout engine live; the PDF uses the
    same layout (solved with Agg's text metrics rather than the PDF renderer's: the same fonts, no visible change).
    """
    engine = figure.get_layout_engine()
    if engine is not None and figure.axes and not isinstance(engine, PlaceHolderLayoutEngine):
        figure.set_dpi(DPI)
        engine.execute(figure)
        figure.set_layout_engine("none")
    return figure


def save_figure(figure: Figure, out_dir: Path, stem: str, formats: Sequence[str] = ("png", "pdf")) -> list[Path]:
    """Write `figure` as `out_dir/stem.<fmt>` for each format (laid out once, see `freeze_layout`)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    freeze_layout(figure)
    paths = []
    for fmt in formats:
        path = out_dir / f"{stem}.{fmt}"
        figure.savefig(path, dpi=DPI)
        paths.append(path)
    return paths


def make_figures(runs: pd.DataFrame, histories: pd.DataFrame) -> dict[str, Figure]:
    """Every figure whose runs exist, keyed by file stem."""
    lookup = histories_by_run(histories)
    candidates = {
        "fig1_dynamics": lambda: figure_dynamics(runs, lookup),
        "fig3_depth": lambda: figure_depth(runs, lookup),
        "fig4_activation": lambda: figure_activation(runs, lookup),
        "fig5_weight_decay": lambda: figure_weight_decay(runs),
        "fig6_summary": lambda: figure_summary(runs),
        "fig8_width": lambda: figure_width(runs, histories),
        "fig9_protocol": lambda: figure_protocol(runs, lookup),
        "fig_intervention": lambda: figure_intervention(runs, lookup),
    }
    figures = {name: fig for name, make in candidates.items() if (fig := make()) is not None}
    figures.update(_grid_figures(runs, lookup))
    return dict(sorted(figures.items()))


def build_figures(
    runs: pd.DataFrame, histories: pd.DataFrame, out_dir: Path, formats: Sequence[str] = ("png", "pdf")
) -> list[Path]:
    """Write every figure whose runs exist to `out_dir` in each format; return the paths."""
    paths = []
    for stem, figure in make_figures(runs, histories).items():
        paths += save_figure(figure, out_dir, stem, formats)
    return paths
