"""Han et al.'s figures as ncflow draws them, from the grouped runs of `analysis.han_et_al`.

- G1 (their Fig. 1), one per grokking setting with unregularised runs: (a) train and validation accuracy, (b) NCC and
  (c) flatness on log axes, against the optimiser step (log axis: memorisation comes ten times sooner than
  generalisation); the mean over seeds bold, each seed thin; the mean step of each grokking marker (memorised,
  generalised, NCC drop, flatness drop) as a vertical line on every panel.
- R1 (their Fig. 2), one per setting with NCC-regularised runs: (a) validation accuracy and (b) NCC (log) against the
  step or epoch, one line per λ (mean over seeds; λ = 0 is the unregularised arm).
- R2 (their Fig. 4), one per setting with flatness-regularised runs: (a) validation accuracy and (b) flatness (log),
  one line per arm (λ, with and without unplug), the unplug a dotted vertical line in its arm's colour.
Titles name the task and the seeds per line. Figures are `Figure` objects (no pyplot state), written by
`analysis.figures.save_figure`; `write_han_report` writes them with `claims.md` (`ncflow-analysis han`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from analysis.figures import save_figure
from analysis.han_et_al import (
    FLATNESS,
    NCC,
    TRAIN_ACC,
    UNREGULARISED,
    VAL_ACC,
    Arm,
    HanRuns,
    Setting,
    claims_table,
    curve,
    diverged,
)
from analysis.render import count
from ncshared.dynamics_figure import add_legend, mark_vertical, new_axes

MARKER_STYLES = {"memorised": ("C2", ":"), "generalised": ("C3", "--"), "NCC drop": ("C4", "-."),
                 "flatness drop": ("C5", (0, (5, 1, 1, 1)))}
CLAIMS_FILE = "claims.md"
AXIS_LABEL = {"step": "optimiser step", "epoch": "epoch"}


def slug(text: str) -> str:
    """A file-name part: `add-mod97-f0.3`, `mnist-5k`."""
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-").lower()


def mean_curve(han: HanRuns, runs: Sequence[str], metric: str) -> tuple[pd.DataFrame, pd.Series]:
    """The runs' curves side by side (one column per run, aligned on step/epoch) and their mean."""
    columns = {run: curve(han.history(run), metric) for run in runs}
    frame = pd.DataFrame({run: values for run, values in columns.items() if len(values)})
    return frame, frame.mean(axis=1) if len(frame.columns) else pd.Series(dtype=float)


def draw_mean(ax: Axes, han: HanRuns, runs: Sequence[str], metric: str, color: str, label: str,
              seeds: bool = True) -> None:
    """The mean over runs (bold) and, with `seeds`, each run (thin, same colour)."""
    frame, mean = mean_curve(han, runs, metric)
    if mean.empty:
        return
    if seeds and len(frame.columns) > 1:
        for run in frame.columns:
            values = frame[run].dropna()
            ax.plot(values.index, values.to_numpy(), color=color, linewidth=0.6, alpha=0.35)
    ax.plot(mean.index, mean.to_numpy(), color=color, linewidth=1.6, label=label)


def seeds_text(counts: Sequence[int]) -> str:
    low, high = min(counts), max(counts)
    return count(low, "seed") if low == high else f"{low}–{high} seeds"


def figure_grokking(han: HanRuns, setting: Setting) -> Figure:
    """G1: accuracies, NCC and flatness of the setting's unregularised runs against the optimiser step."""
    runs = setting.arms[UNREGULARISED]
    acc, ncc, flat = new_axes(1, 3)
    draw_mean(acc, han, runs, TRAIN_ACC, "C0", "train")
    draw_mean(acc, han, runs, VAL_ACC, "C1", "validation")
    draw_mean(ncc, han, runs, NCC, "C0", "NCC")
    draw_mean(flat, han, runs, FLATNESS, "C0", "flatness κ")
    for name, (color, style) in MARKER_STYLES.items():
        steps = [han.marker(run, name) for run in runs]
        found = [step for step in steps if not math.isnan(step)]
        mean = float(np.mean(found)) if found else math.nan
        label = f"{name} ({len(found)}/{len(runs)})" if len(found) < len(runs) else name
        for ax in (acc, ncc, flat):
            mark_vertical(ax, mean, label if ax is acc else None, style, color)
    for ax, title, ylabel in ((acc, "(a) Accuracy", "accuracy"), (ncc, "(b) NCC", "NCC (log)"),
                              (flat, "(c) Relative flatness", "flatness κ (log)")):
        ax.set(title=title, xlabel=AXIS_LABEL[setting.unit], ylabel=ylabel, xscale="log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # a short log range would label every minor tick, overlapping
        if ax is not acc:
            ax.set_yscale("log")
    acc.legend(fontsize="small", loc="center right")
    acc.figure.suptitle(f"Grokking on {setting.label}: mean over {count(len(runs), 'seed')} (thin: each seed); "
                        "markers at their mean step")
    return acc.figure


def _arm_lines(han: HanRuns, setting: Setting, arms: Sequence[Arm], panels: Sequence[tuple[Axes, str]]) -> None:
    for index, arm in enumerate(arms):
        runs = setting.arms[arm]
        color = f"C{index % 10}"
        label = f"{arm.label(setting.unit)} ({len(runs)}{', diverged' if diverged(han, runs) else ''})"
        for ax, metric in panels:
            draw_mean(ax, han, runs, metric, color, label, seeds=False)
            if arm.unplug:
                ax.axvline(arm.unplug, color=color, linestyle=":", linewidth=1.2)


def _regulariser_figure(han: HanRuns, setting: Setting, reg: str, metric: str, name: str, title: str) -> Figure | None:
    arms = setting.reg_arms(reg)
    if not arms:
        return None
    arms = ([UNREGULARISED] if UNREGULARISED in setting.arms else []) + arms
    acc, measure = new_axes(1, 2, size=(5.0, 3.4))
    _arm_lines(han, setting, arms, ((acc, VAL_ACC), (measure, metric)))
    acc.set(title="(a) Validation accuracy", xlabel=AXIS_LABEL[setting.unit], ylabel="validation accuracy")
    measure.set(title=f"(b) {name}", xlabel=AXIS_LABEL[setting.unit], ylabel=f"{name} (log)", yscale="log")
    add_legend(acc)
    seeds = seeds_text([len(setting.arms[arm]) for arm in arms])
    unplug = "; dotted: the unplug" if any(arm.unplug for arm in arms) else ""
    acc.figure.suptitle(f"{title} on {setting.label}: mean over {seeds} per line (in brackets){unplug}")
    return acc.figure


def figure_ncc_regulariser(han: HanRuns, setting: Setting) -> Figure | None:
    """R1: validation accuracy and NCC per λ of the NCC regulariser (None without such runs)."""
    return _regulariser_figure(han, setting, "ncc", NCC, "NCC", "NCC regulariser")


def figure_flatness_regulariser(han: HanRuns, setting: Setting) -> Figure | None:
    """R2: validation accuracy and flatness per flatness-regulariser arm, with and without unplug."""
    return _regulariser_figure(han, setting, "flatness", FLATNESS, "Relative flatness κ", "Flatness regulariser")


def make_figures(han: HanRuns) -> dict[str, Figure]:
    """Every figure whose runs exist, keyed by file stem (`han_g1_add-mod97-f0.3`, `han_r1_mnist-5k`, …)."""
    figures: dict[str, Figure] = {}
    for setting in han.settings:
        made = {"r1": figure_ncc_regulariser(han, setting), "r2": figure_flatness_regulariser(han, setting)}
        if setting.grokking and setting.arms.get(UNREGULARISED):
            made["g1"] = figure_grokking(han, setting)
        for key, figure in sorted(made.items()):
            if figure is None:
                continue
            stem, n = f"han_{key}_{slug(setting.task)}", 2
            while stem in figures:  # a second setting of the same task
                stem, n = f"han_{key}_{slug(setting.task)}-{n}", n + 1
            figures[stem] = figure
    return figures


def write_figures(han: HanRuns, out_dir: Path, formats: Sequence[str] = ("png",)) -> list[Path]:
    paths: list[Path] = []
    for stem, figure in make_figures(han).items():
        paths += save_figure(figure, out_dir, stem, formats)
    return paths


def write_han_report(han: HanRuns, out_dir: Path, formats: Sequence[str] = ("png",)) -> list[Path]:
    """`ncflow-analysis han`: every figure whose runs exist and `claims.md` (the claims table, its tests as notes,
    the figures linked) into out_dir; the paths written."""
    out_dir = Path(out_dir)
    figures = write_figures(han, out_dir, formats)
    lines = ["# Han et al.'s claims", "", claims_table(han).to_markdown(), "## Figures", ""]
    lines += [f"![{path.stem}]({path.name})" for path in figures if path.suffix == ".png"] or ["(no runs to draw)"]
    claims = out_dir / CLAIMS_FILE
    claims.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return [*figures, claims]
