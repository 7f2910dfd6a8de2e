"""The paper's Figures 1–9 (and the intervention trajectories) from `analysis.aggregate.Estimates`.

Each `figure_*` lays out one figure from the estimates — the runs a family uses, their wide histories
(`Estimates.lookup`) and the numbers computed once for the tables too — out of the panels of `analysis.plots`
(and `ncshared.dynamics_figure` for Figure 1), or returns None when its runs do not exist. `build_figures` writes every
figure as PNG and PDF, each laid out once (`freeze_layout`) and then drawn once per format.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.layout_engine import PlaceHolderLayoutEngine

from analysis.aggregate import Estimates
from analysis.plots import plot_fn_star_points, plot_lead_time, plot_power_law, plot_sweep, plot_trajectories
from analysis.render import LABELS, count, fmt_value
from analysis.selection import baseline_run, column, first_seed, paper_data_set
from analysis.stats import Summary
from ncshared.dynamics_figure import DPI, add_legend, mark_vertical, new_axes, plot_dynamics, run_value
from ncshared.schema import COLLAPSE_THRESHOLD, FN, NC1, TRAIN_ACC

FORMATS = ("png", "pdf")
GRID_FIGURES = {"cifar10": "fig2", "mnist": "fig7"}  # the dataset of each ResNet-20 condition figure


def figure_dynamics(estimates: Estimates) -> Figure | None:
    """Figure 1: the dynamics of the baseline run (`selection.baseline_run`)."""
    run = baseline_run(estimates.runs)
    if run is None or str(run["run_id"]) not in estimates.lookup:
        return None
    return plot_dynamics(estimates.lookup[str(run["run_id"])], run)[0].figure


def figure_condition(used: pd.DataFrame, lookup: Mapping[str, pd.DataFrame], title: str, fn_star: Summary,
                     reference: float = math.nan) -> Figure:
    """Figures 2 and 7: accuracy, NC1 and fn of every seed of one condition; fn* dashed, a reference dotted.

    fn is drawn on a log axis: a ResNet-20's fn falls several-fold at the switch to MSE and can spike an order of
    magnitude above its level in Phase 1, which on a linear axis hides fn* and the reference under the spikes.
    """
    axes = new_axes(1, 3)
    plot_trajectories(lookup, used, TRAIN_ACC, ax=axes[0], hue="seed")
    plot_trajectories(lookup, used, NC1, ax=axes[1], hue="seed", logy=True)
    plot_trajectories(lookup, used, FN, ax=axes[2], hue="seed", logy=True)
    if fn_star.n:
        axes[2].axhline(fn_star.mean, color="k", linestyle="--", linewidth=1, label=f"fn* = {fn_star.mean:.3f}")
    if not math.isnan(reference):
        axes[2].axhline(reference, color="k", linestyle=":", linewidth=1, label=f"reference {reference:.3f}")
    eps = column(used, COLLAPSE_THRESHOLD).dropna()
    if len(eps):
        axes[1].axhline(float(eps.iloc[0]), color="k", linestyle=":", linewidth=1)
    for ax, name in zip(axes, ("(a) Accuracy", "(b) NC1", "(c) fn")):
        ax.set_title(name)
        add_legend(ax)
    axes[0].figure.suptitle(title)
    return axes[0].figure


def grid_figures(estimates: Estimates) -> dict[str, Figure]:
    """Figures 2 and 7: every seed of each ResNet-20 grid cell (CIFAR-10 → Fig. 2, MNIST → Fig. 7)."""
    grid = estimates.grid
    if grid is None:
        return {}
    resnet = grid.cells[column(grid.cells, "arch") == "resnet20"]
    note = "" if math.isnan(grid.reference_fn_star) else f"; dotted: MLP fn* on {grid.reference_data}"
    figures: dict[str, Figure] = {}
    for (label, dataset), used in resnet.groupby(["cell_arch", "dataset"]):
        paper = paper_data_set(dataset)  # mnist-5k's runs are Figure 7, as MNIST's would be
        number = GRID_FIGURES.get(paper, "fig")
        stem = f"{number}_resnet20_{paper}"
        figures[stem if stem not in figures else f"{number}_resnet20_{dataset}"] = figure_condition(
            used, estimates.lookup, f"ResNet-20 on {dataset} ({count(len(used), 'seed')}{note})",
            grid.fn_star(label, dataset), grid.reference_fn_star)
    return figures


def figure_depth(estimates: Estimates) -> Figure | None:
    family = estimates.family("depth")
    if family.empty:
        return None
    axes = new_axes(1, 3)
    plot_sweep(family.numbers, "depth", "T_NC", ax=axes[0]).set_title("(a) T_NC vs depth")
    plot_sweep(family.numbers, "depth", "fn_star", ax=axes[1]).set_title("(b) fn* vs depth")
    plot_trajectories(estimates.lookup, first_seed(family.used, "depth"), FN, ax=axes[2], hue="depth",
                      phase2_only=True)
    axes[2].set_title("(c) Phase-2 fn (lowest seed)")
    return axes[0].figure


def figure_activation(estimates: Estimates) -> Figure | None:
    family = estimates.family("activation")
    if family.empty:
        return None
    used, bands = family.used, family.fn_star_by_value()
    values = sorted(used["activation"].unique())
    axes = new_axes(2, len(values)).reshape(2, len(values))
    for index, value in enumerate(values):
        group = used[used["activation"] == value]
        name = fmt_value("activation", value)
        plot_trajectories(estimates.lookup, group, NC1, ax=axes[0, index], logy=True).set_title(f"{name}: NC1")
        plot_trajectories(estimates.lookup, group, FN, ax=axes[1, index], hue="activation", bands=bands)
        axes[1, index].set_title(f"{name}: fn (fn* ± σ shaded)")
    return axes[0, 0].figure


def figure_weight_decay(estimates: Estimates) -> Figure | None:
    family = estimates.family("weight_decay")
    if family.empty:
        return None
    axes = new_axes(1, 3)
    plot_sweep(family.numbers, "weight_decay", "T_NC", ax=axes[0], logx=True).set_title("(a) T_NC vs λ")
    plot_sweep(family.numbers, "weight_decay", "fn_star", ax=axes[1], logx=True).set_title("(b) fn* vs λ")
    if family.fn_star.n:
        axes[1].axhline(family.fn_star.mean, color="k", linestyle="--", linewidth=1)
    plot_fn_star_points(family.used, "weight_decay", ax=axes[2], band=family.fn_star)
    axes[2].set_title("(c) confirmed fn* (grand mean ± 1σ)")
    return axes[0].figure


def figure_summary(estimates: Estimates) -> Figure | None:
    """Figure 6: T_NC against each swept factor present (depth, activation, weight decay) and fn* by grid pair;
    only the panels whose runs exist are drawn, so a lone panel gets a canvas of its own size."""
    families = [(param, family) for param in ("depth", "activation", "weight_decay")
                if not (family := estimates.family(param)).empty]
    grid = estimates.grid
    if not families and grid is None:
        return None
    axes = new_axes(1, len(families) + (grid is not None))
    for ax, (param, family), letter in zip(axes, families, "abcd"):
        plot_sweep(family.numbers, param, "T_NC", ax=ax, logx=param == "weight_decay")
        ax.set_title(f"({letter}) T_NC vs {LABELS[param]}")
        if param == "activation":  # activation moves both speed and fn*: fn* on a second axis
            twin = plot_sweep(family.numbers, param, "fn_star", ax=ax.twinx())
            for line in twin.get_lines():
                line.set_color("C1")
            twin.set_ylabel("fn* (orange)")
            ax.set_title(f"({letter}) T_NC and fn* vs {LABELS[param]}")
    if grid is not None:
        ax = axes[len(families)]
        plot_fn_star_points(grid.cells, ["cell_arch", "dataset"], ax=ax)
        ax.set_title(f"({'abcd'[len(families)]}) fn* by pair (ANOVA F = {grid.anova.f:.2f})")
    return axes[0].figure


def figure_width(estimates: Estimates) -> Figure | None:
    family, trend, lead_time = estimates.family("width"), estimates.width, estimates.lead_time
    if family.empty or trend is None:
        return None
    numbers = family.numbers
    axes = new_axes(1, 3)
    plot_sweep(numbers, "width", "fn_star", ax=axes[0], logx=True).set_title("(a) fn* vs width")
    plot_power_law(trend.fit, numbers["width"].min(), numbers["width"].max(), "width", ax=axes[0])
    plot_sweep(numbers, "width", "T_NC", ax=axes[1], logx=True).set_title("(b) T_NC vs width")
    frame = lead_time.frame if lead_time is not None else pd.DataFrame()
    plot_lead_time(frame, estimates.lead, "width", ax=axes[2]).set_title("(c) fn crossing precedes T_NC")
    return axes[0].figure


def figure_intervention(estimates: Estimates) -> Figure | None:
    family = estimates.family("rescale_alpha")
    if family.empty:
        return None
    axes = new_axes(1, 2)
    plot_trajectories(estimates.lookup, family.used, FN, ax=axes[0], hue="rescale_alpha",
                      bands=family.fn_star_by_value())
    axes[0].set_title("(a) fn after rescaling (fn* ± σ shaded)")
    plot_trajectories(estimates.lookup, family.used, NC1, ax=axes[1], hue="rescale_alpha", logy=True)
    axes[1].set_title("(b) NC1")
    return axes[0].figure


def figure_protocol(estimates: Estimates) -> Figure | None:
    family = estimates.family("protocol")
    if family.empty:
        return None
    first = first_seed(family.used, "protocol")
    axes = new_axes(1, 2)
    plot_trajectories(estimates.lookup, first, NC1, ax=axes[0], hue="protocol", logy=True).set_title("(a) NC1")
    plot_trajectories(estimates.lookup, first, FN, ax=axes[1], hue="protocol").set_title("(b) fn")
    eps = column(first, COLLAPSE_THRESHOLD).dropna()
    if len(eps):
        axes[0].axhline(float(eps.min()), color="k", linestyle=":", linewidth=1, label=f"ε = {eps.min():g}")
    two_phase = first[first["protocol"] == "two-phase"]
    switch = run_value(two_phase.iloc[0], "phase1_epochs") if len(two_phase) else math.nan
    for ax in axes:
        mark_vertical(ax, switch, "CE → MSE (two-phase)", "--", "0.5")
        add_legend(ax)
    return axes[0].figure


# ------------------------------------------------------------------------------------------ writing


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


def save_figure(figure: Figure, out_dir: Path, stem: str, formats: Sequence[str] = FORMATS) -> list[Path]:
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


def make_figures(estimates: Estimates) -> dict[str, Figure]:
    """Every figure whose runs exist, keyed by file stem."""
    candidates = {
        "fig1_dynamics": figure_dynamics,
        "fig3_depth": figure_depth,
        "fig4_activation": figure_activation,
        "fig5_weight_decay": figure_weight_decay,
        "fig6_summary": figure_summary,
        "fig8_width": figure_width,
        "fig9_protocol": figure_protocol,
        "fig_intervention": figure_intervention,
    }
    figures = {name: fig for name, make in candidates.items() if (fig := make(estimates)) is not None}
    figures.update(grid_figures(estimates))
    return dict(sorted(figures.items()))


def build_figures(estimates: Estimates, out_dir: Path, formats: Sequence[str] = FORMATS) -> list[Path]:
    """Write every figure whose runs exist to `out_dir` in each format; return the paths."""
    paths = []
    for stem, figure in make_figures(estimates).items():
        paths += save_figure(figure, out_dir, stem, formats)
    return paths
