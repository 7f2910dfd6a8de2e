"""The paper's Tables 1–8 (and a generic per-sweep table) from the runs and histories frames of `analysis.store`.

A table is found by what its runs vary, not by where they were logged: the runs tagged with the sweep
(`ncflow.sweep`) fix the other parameters, and every finished run with those parameters joins in — a sweep
that skipped a grid point because another sweep had already trained it (same condition and seed) still
gets its row. Without sweep tags, the largest family of runs that differ only in the parameter is used.

Run accounting, printed under every table: `collapsed` and `not_collapsed` runs are used (N);
`diverged` runs are excluded by the pre-registered criterion and counted; `failed` and `running` runs
are ignored and counted; a repeated (condition, seed) keeps its latest run. T_NC, fn* and their intervals
aggregate the collapsed runs (the `Collapsed` column, k/N); a cell over a different number says `(n=…)`.
A condition with no collapsed run shows DNF with its mean final NC1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from analysis import stats
from analysis.stats import Summary

# Params that define what was trained (docs/tracking.md), i.e. everything but seed, bookkeeping and the
# early-warning settings (fn_ref, lead, stop_after_collapse do not change the trajectory up to T_NC).
DESIGN_PARAMS = (
    "dataset", "arch", "depth", "width", "activation", "optimizer", "lr", "momentum", "nesterov", "weight_decay",
    "schedule", "milestones", "lr_gamma", "batch_size", "phase1_epochs", "phase2_epochs", "protocol",
    "nc1_threshold", "rescale_alpha", "synthetic_classes", "synthetic_shape", "synthetic_per_class",
)
USED = ("collapsed", "not_collapsed")
UNFINISHED = ("failed", "running")
DIVERGED = "diverged"
DIVERGENCE_RULE = "NC1 > 0.5 after epoch 300, or a non-finite loss"
T_NC, FN_STAR, FINAL_NC1 = "collapse/T_NC", "collapse/fn_star", "nc/nc1"
THRESHOLD, FN_AFTER = "collapse/threshold", "intervention/fn_after"
LEAD = 62

# Sweep names (the `ncflow.sweep` tag) that identify each paper table's family.
SWEEP_NAMES: dict[str, tuple[str, ...]] = {
    "depth": ("depth",),
    "activation": ("activation",),
    "weight_decay": ("weight_decay", "weight-decay", "wd", "lambda"),
    "width": ("width",),
    "grid": ("grid", "arch-dataset", "architecture"),
    "rescale_alpha": ("intervention", "alpha", "rescale"),
    "protocol": ("protocol", "ce-only"),
}
LABELS = {
    "depth": "Depth", "width": "Width", "activation": "Act.", "weight_decay": "λ", "rescale_alpha": "α",
    "dataset": "Dataset", "arch": "Architecture", "architecture": "Architecture", "protocol": "Protocol",
}
ACTIVATION_NAMES = {"relu": "ReLU", "gelu": "GELU", "tanh": "Tanh"}
LATEX_SYMBOLS = {
    "±": r"$\pm$", "λ": r"$\lambda$", "α": r"$\alpha$", "ε": r"$\varepsilon$", "∈": r"$\in$", "Δ": r"$\Delta$",
    "→": r"$\to$", "≥": r"$\geq$", "≤": r"$\leq$", "×": r"$\times$", "√": r"$\surd$",
    "—": "---", "–": "--", "∝": r"$\propto$", "σ": r"$\sigma$", "Σ": r"$\Sigma$",
    "−": "-", "²": r"$^2$", "≈": r"$\approx$", "*": r"$^*$",
}
LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                 "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\^{}"}


# ----------------------------------------------------------------------------------------------- Table


@dataclass
class Table:
    """A display frame in the paper's layout, its title, the notes printed under it, and the numbers behind it."""

    title: str
    frame: pd.DataFrame  # formatted cells, as printed
    notes: list[str] = field(default_factory=list)
    data: pd.DataFrame | None = None  # full-precision numbers (written as the CSV)

    def to_markdown(self) -> str:
        lines = [f"**{self.title}**", "", markdown_table(self.frame)]
        if self.notes:
            lines += [""] + [f"- {note}" for note in self.notes]
        return "\n".join(lines) + "\n"

    def to_latex(self, label: str = "") -> str:
        body = self.frame.map(lambda cell: latex_text(str(cell)))
        body.columns = [latex_text(str(column)) for column in body.columns]
        tex = body.to_latex(index=False, escape=False, caption=latex_text(self.title), label=label or None)
        if self.notes:
            notes = "\\\\\n".join(latex_text(note) for note in self.notes)
            tex += "\\begin{flushleft}\\footnotesize\n" + notes + "\n\\end{flushleft}\n"
        return tex

    def write(self, out_dir: Path, stem: str, formats: Sequence[str] = ("md", "csv", "tex")) -> list[Path]:
        """Write `stem.md` (title, table, notes), `stem.csv` (the numbers) and `stem.tex`; return the paths."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = []
        for fmt in formats:
            path = out_dir / f"{stem}.{fmt}"
            if fmt == "md":
                path.write_text(self.to_markdown(), encoding="utf-8")
            elif fmt == "csv":
                (self.data if self.data is not None else self.frame).to_csv(path, index=False)
            elif fmt == "tex":
                path.write_text(self.to_latex(label=f"tab:{stem}"), encoding="utf-8")
            else:
                raise ValueError(f"Table.write: unknown format {fmt!r}; allowed: md, csv, tex")
            paths.append(path)
        return paths


def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub pipe table (no `tabulate` needed)."""

    def cell(value: object) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    header = "| " + " | ".join(cell(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    rows = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *rows])


def latex_text(text: str) -> str:
    """Escape LaTeX specials and spell the table's Unicode symbols as math, so pdflatex compiles it."""
    escaped = "".join(LATEX_SPECIAL.get(char, char) for char in text)
    return "".join(LATEX_SYMBOLS.get(char, char) for char in escaped)


# ----------------------------------------------------------------------------------- selecting runs


@dataclass(frozen=True)
class Selection:
    """Runs split by how a table treats them."""

    used: pd.DataFrame  # collapsed + not_collapsed, one per (condition, seed)
    diverged: pd.DataFrame
    unfinished: pd.DataFrame  # failed + running
    duplicates: int

    def notes(self) -> list[str]:
        notes = []
        if len(self.diverged):
            names = ", ".join(
                f"{name} ({reason})" if isinstance(reason, str) else str(name)
                for name, reason in zip(self.diverged["run_name"], column(self.diverged, "divergence_reason"))
            )
            notes.append(f"Excluded {_count(len(self.diverged), 'diverged run')} by the pre-registered criterion "
                         f"({DIVERGENCE_RULE}): {names}.")
        if len(self.unfinished):
            counts = self.unfinished["status"].value_counts()
            parts = ", ".join(f"{counts[s]} {s}" for s in UNFINISHED if s in counts)
            notes.append(f"Ignored {_count(len(self.unfinished), 'unfinished run')} ({parts}).")
        if self.duplicates:
            notes.append(f"Dropped {_count(self.duplicates, 'repeated run')} (same condition and seed; latest kept).")
        return notes


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def column(frame: pd.DataFrame, name: str) -> pd.Series:
    """A column, or NaNs when no run logged it."""
    return frame[name] if name in frame.columns else pd.Series(np.nan, index=frame.index, dtype=float)


def is_intervention(frame: pd.DataFrame) -> pd.Series:
    init = column(frame, "init_from")
    return init.notna() & ~init.astype(str).str.lower().isin(("none", "", "nan"))


def training_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Training runs only (sweep parents and analysis runs have no ncflow.status)."""
    keep = column(runs, "status").notna()
    if "kind" in runs.columns:
        keep &= runs["kind"].isna() | (runs["kind"] == "train")
    return runs[keep]


def select(runs: pd.DataFrame) -> Selection:
    """Split runs into used / diverged / unfinished; keep the latest run of a repeated (condition, seed)."""
    runs = training_runs(runs)
    status = runs["status"]
    used = runs[status.isin(USED)]
    key = [c for c in ("condition", "seed") if c in used.columns]
    deduped = used
    if len(key) == 2:
        order = column(used, "start_time").rank(method="first", na_option="bottom")
        deduped = used.assign(_order=order).sort_values("_order").drop_duplicates(key, keep="last")
        deduped = deduped.drop(columns="_order")
    return Selection(deduped, runs[status == DIVERGED], runs[status.isin(UNFINISHED)], len(used) - len(deduped))


def design_key(runs: pd.DataFrame, exclude: Iterable[str]) -> pd.DataFrame:
    names = [p for p in DESIGN_PARAMS if p in runs.columns and p not in set(exclude)]
    return runs[names].astype(str)


def family(runs: pd.DataFrame, vary: Sequence[str], sweep_names: Sequence[str] = ()) -> pd.DataFrame:
    """All training runs (every status) of the family that varies `vary` and holds the other design params fixed.

    The runs tagged with one of `sweep_names` define the fixed values; runs of other sweeps with the same
    values join. With no tagged run, the largest family with at least two values of `vary` is used.
    Intervention runs (init_from set) form their own families: only a family varying rescale_alpha uses them.
    """
    runs = training_runs(runs)
    runs = runs[is_intervention(runs) == ("rescale_alpha" in vary)]
    if runs.empty or not set(vary) <= set(runs.columns):
        return runs.iloc[0:0]
    keys = design_key(runs, vary).apply(tuple, axis=1)
    tagged = column(runs, "sweep").isin(sweep_names)
    if tagged.any():
        wanted = set(keys[tagged])
        return runs[keys.isin(wanted)] if len(wanted) == 1 else runs[tagged]
    values = runs[list(vary)].astype(str).apply(tuple, axis=1)
    sizes = {key: len(group) for key, group in runs.groupby(keys) if values[group.index].nunique() >= 2}
    if not sizes:
        return runs.iloc[0:0]
    best = max(sizes, key=lambda key: (sizes[key], str(key)))
    return runs[keys == best]


# ------------------------------------------------------------------------------------- aggregation


def summaries(used: pd.DataFrame, by: Sequence[str]) -> pd.DataFrame:
    """One row per value of `by`: N, collapsed count, ε, final NC1, and Summary objects of T_NC and fn*."""
    rows = []
    for value, group in used.groupby(list(by), sort=True, dropna=False):
        collapsed = group[column(group, T_NC).notna()]
        thresholds = column(group, THRESHOLD).dropna().unique()
        rows.append({
            **dict(zip(by, value if isinstance(value, tuple) else (value,))),
            "n": len(group),
            "n_collapsed": len(collapsed),
            "threshold": float(thresholds[0]) if len(thresholds) == 1 else math.nan,
            "T_NC": stats.describe(column(collapsed, T_NC)),
            "fn_star": stats.describe(column(collapsed, FN_STAR)),
            "final_nc1": float(column(group[column(group, T_NC).isna()], FINAL_NC1).mean()),
            "runs": ", ".join(sorted(map(str, column(group, "run_name")))),
        })
    return pd.DataFrame(rows)


def numeric(frame: pd.DataFrame) -> pd.DataFrame:
    """Flatten Summary cells into `<col>_n, _mean, _std, _cv, _t_low, _t_high, _boot_low, _boot_high` columns."""
    out = {}
    for name in frame.columns:
        cells = frame[name]
        if len(cells) and all(isinstance(cell, Summary) for cell in cells):
            out[f"{name}_n"] = [c.n for c in cells]
            out[f"{name}_mean"] = [c.mean for c in cells]
            out[f"{name}_std"] = [c.std for c in cells]
            out[f"{name}_cv"] = [c.cv for c in cells]
            out[f"{name}_t_low"] = [c.t_ci[0] for c in cells]
            out[f"{name}_t_high"] = [c.t_ci[1] for c in cells]
            out[f"{name}_boot_low"] = [c.bootstrap_ci[0] for c in cells]
            out[f"{name}_boot_high"] = [c.bootstrap_ci[1] for c in cells]
        else:
            out[name] = list(cells)
    return pd.DataFrame(out)


# ------------------------------------------------------------------------------------- formatting


def fmt_pm(summary: Summary, digits: int, n_expected: int | None = None) -> str:
    """`297 ± 9`, `1.077 ± 0.020`; a single value alone; `—` for none; `(n=…)` when n differs from the row's."""
    if summary.n == 0:
        return "—"
    text = f"{summary.mean:.{digits}f}" if summary.n == 1 else f"{summary.mean:.{digits}f} ± {summary.std:.{digits}f}"
    return text if n_expected is None or summary.n == n_expected else f"{text} (n={summary.n})"


def fmt_interval(interval: tuple[float, float], digits: int = 3) -> str:
    low, high = interval
    return "—" if math.isnan(low) else f"[{low:.{digits}f}, {high:.{digits}f}]"


def fmt_pct(fraction: float, digits: int = 1, sign: bool = False) -> str:
    return "—" if math.isnan(fraction) else f"{100 * fraction:{'+' if sign else ''}.{digits}f}%"


def fmt_p(p: float) -> str:
    """`0.22`; small p in scientific notation (`3.1e-05`)."""
    return "—" if math.isnan(p) else (f"{p:.2f}" if p >= 0.01 else f"{p:.1e}")


def fmt_value(param: str, value: object) -> str:
    """A swept value as the paper prints it: λ = 1e-05, ReLU, α = 0.3."""
    if param == "activation":
        return ACTIVATION_NAMES.get(str(value), str(value))
    if isinstance(value, float) and param in ("weight_decay", "lr"):
        return f"{value:.0e}" if value else "0"
    if isinstance(value, float) and value.is_integer() and param != "rescale_alpha":
        return str(int(value))
    return f"{value:g}" if isinstance(value, float) else str(value)


def fmt_threshold(eps: float) -> str:
    return "—" if math.isnan(eps) else f"< {eps:g}"


def condition_frame(summary: pd.DataFrame, by: Sequence[str]) -> pd.DataFrame:
    """The per-condition display: value(s), N, Collapsed, ε, T_NC, fn*, CV, 95 % t-CI, 95 % bootstrap CI."""
    rows = []
    for row in summary.itertuples(index=False):
        cells = {LABELS.get(p, p): fmt_value(p, getattr(row, p)) for p in by}
        k = row.n_collapsed
        dnf = k == 0
        cells.update({
            "N": row.n,
            "Collapsed": f"{k}/{row.n}",
            "NC1 thresh.": fmt_threshold(row.threshold),
            "T_NC": f"DNF (final NC1 {row.final_nc1:.3f})" if dnf else fmt_pm(row.T_NC, 0, k),
            "fn* (mean ± std)": "—" if dnf else fmt_pm(row.fn_star, 3, k),
            "CV": fmt_pct(row.fn_star.cv),
            "95% t-CI": fmt_interval(row.fn_star.t_ci),
            "95% bootstrap CI": fmt_interval(row.fn_star.bootstrap_ci),
        })
        rows.append(cells)
    return pd.DataFrame(rows)


def describe_fixed(runs: pd.DataFrame, vary: Sequence[str]) -> str:
    """`MLP-5, ReLU, width 512, λ = 1e-04, mnist, two-phase`: the params a family holds fixed."""
    if runs.empty:
        return ""
    first = runs.iloc[0]

    def fixed(param: str) -> bool:
        return param in runs.columns and param not in vary and runs[param].astype(str).nunique() == 1

    parts = []
    if fixed("arch"):
        if first["arch"] == "mlp":
            parts.append(f"MLP-{fmt_value('depth', first['depth'])}" if fixed("depth") else "MLP")
        else:
            parts.append("ResNet-20" if first["arch"] == "resnet20" else str(first["arch"]))
    if fixed("activation"):
        parts.append(fmt_value("activation", first["activation"]))
    if fixed("width") and first.get("arch") == "mlp":
        parts.append(f"width {fmt_value('width', first['width'])}")
    if fixed("weight_decay"):
        parts.append(f"λ = {fmt_value('weight_decay', first['weight_decay'])}")
    if fixed("dataset"):
        parts.append(str(first["dataset"]))
    if fixed("protocol"):
        parts.append(str(first["protocol"]))
    return ", ".join(parts)


ACCOUNTING_NOTE = ("N counts finished runs; T_NC, fn*, CV and the intervals aggregate the collapsed runs "
                   "(k of Collapsed k/N). Std has ddof = 1; bootstrap: percentile, 10,000 resamples, seed 0.")


# ------------------------------------------------------------------------------------- the tables


def sweep_table(runs: pd.DataFrame | Selection, by: str | Sequence[str], title: str | None = None) -> Table:
    """Per-condition table of `runs` grouped by the swept parameter(s) `by` (all runs given are one family)."""
    by = [by] if isinstance(by, str) else list(by)
    chosen = runs if isinstance(runs, Selection) else select(runs)
    summary = summaries(chosen.used, by)
    fixed = describe_fixed(chosen.used, by)
    title = title or f"Sweep over {', '.join(by)}" + (f" ({fixed})" if fixed else "") + ". Mean ± std."
    frame = condition_frame(summary, by) if len(summary) else pd.DataFrame()
    return Table(title, frame, [ACCOUNTING_NOTE, *chosen.notes()], numeric(summary) if len(summary) else None)


def _family_table(runs: pd.DataFrame, param: str, number: int, name: str) -> Table | None:
    chosen = select(family(runs, [param], SWEEP_NAMES[param]))
    if chosen.used.empty:
        return None
    title = f"Table {number}: {name} sweep ({describe_fixed(chosen.used, [param])}). Mean ± std over seeds."
    return sweep_table(chosen, param, title)


def threshold_table(runs: pd.DataFrame) -> Table | None:
    """Table 1: fn* at NC1 < 0.01 vs < 0.02 for ReLU conditions with ε = 0.01; ratio of the means."""
    used = select(runs).used
    used = used[(column(used, "activation") == "relu") & (column(used, THRESHOLD) == 0.01) & ~is_intervention(used)]
    used = used[column(used, "collapse/eps_0.01/fn_star").notna() & column(used, "collapse/eps_0.02/fn_star").notna()]
    if used.empty:
        return None
    used = used.assign(label=column(used, "run_name").astype(str).str.replace(r"-s\d+$", "", regex=True))
    rows, data = [], []
    for label, group in used.groupby("label", sort=True):
        at01 = stats.describe(group["collapse/eps_0.01/fn_star"])
        at02 = stats.describe(group["collapse/eps_0.02/fn_star"])
        ratio = at02.mean / at01.mean
        rows.append({"Condition": label, "N": at01.n, "fn* @ NC1<0.01": f"{at01.mean:.3f}",
                     "fn* @ NC1<0.02": f"{at02.mean:.3f}", "Ratio": f"{ratio:.2f}"})
        data.append({"condition": label, "n": at01.n, "fn_star_001": at01.mean, "fn_star_002": at02.mean,
                     "ratio": ratio})
    ratios = stats.describe([d["ratio"] for d in data])
    rows.append({"Condition": f"Mean ratio ({_count(ratios.n, 'condition')})", "N": "", "fn* @ NC1<0.01": "",
                 "fn* @ NC1<0.02": "",
                 "Ratio": fmt_pm(ratios, 2)})
    title = ("Table 1: Threshold robustness for ReLU conditions (ε = 0.01): fn* at NC1 < 0.01 vs NC1 < 0.02. "
             "Means over seeds; ratio = fn*(0.02) / fn*(0.01).")
    notes = [f"Mean ratio over {ratios.n} conditions: {fmt_pm(ratios, 2)}."]
    return Table(title, pd.DataFrame(rows), notes, pd.DataFrame(data))


def _pooled_row(label: str, varied: str, used: pd.DataFrame, t_means: pd.Series) -> dict[str, object]:
    fn = stats.describe(column(used, FN_STAR).dropna())
    t_range = "—" if t_means.dropna().empty else f"{t_means.min():.0f}–{t_means.max():.0f}"
    return {"Condition": label, "Values varied": varied, "N": fn.n, "T_NC range": t_range,
            "fn* (mean ± std)": fmt_pm(fn, 3), "CV": fmt_pct(fn.cv), "95% t-CI": fmt_interval(fn.t_ci),
            "95% bootstrap CI": fmt_interval(fn.bootstrap_ci), "_summary": fn}


def summary_table(runs: pd.DataFrame) -> Table | None:
    """Table 5: fn* pooled within the depth, weight-decay and width sweeps (ReLU), and over all of them."""
    rows, pooled, notes = [], [], []
    for param, name in (("depth", "Depth sweep"), ("weight_decay", "WD sweep"), ("width", "Width sweep")):
        chosen = select(family(runs, [param], SWEEP_NAMES[param]))
        used = chosen.used[column(chosen.used, "activation") == "relu"]
        collapsed = used[column(used, T_NC).notna()]
        if collapsed.empty:
            continue
        values = sorted(collapsed[param].unique())
        varied = f"{LABELS[param]} ∈ {{{', '.join(fmt_value(param, v) for v in values)}}}"
        t_means = collapsed.groupby(param)[T_NC].mean()
        rows.append(_pooled_row(name, varied, collapsed, t_means))
        pooled.append(collapsed)
        notes += [f"{name}: {note}" for note in chosen.notes()]
    if not rows:
        return None
    everything = pd.concat(pooled)
    key = [c for c in ("condition", "seed") if c in everything.columns]
    everything = everything.drop_duplicates(key) if len(key) == 2 else everything
    t_means = everything.groupby("condition")[T_NC].mean() if "condition" in everything else everything[T_NC]
    rows.append(_pooled_row(f"All ReLU runs (combined, N = {len(everything)})", "", everything, t_means))
    frame = pd.DataFrame(rows)
    data = numeric(frame[["Condition", "_summary"]].rename(columns={"_summary": "fn_star"}))
    title = "Table 5: Summary of fn* across conditions (ReLU): concentration within the pair despite varying T_NC."
    notes = ["Pooled over collapsed runs; a run in two sweeps counts once in the combined row. T_NC range spans "
             "the condition means.", *notes]
    return Table(title, frame.drop(columns="_summary"), notes, data)


def arch_label(row: pd.Series) -> str:
    """`MLP-5` / `ResNet-20`."""
    if row.get("arch") == "mlp":
        return f"MLP-{fmt_value('depth', row.get('depth'))}"
    return "ResNet-20" if row.get("arch") == "resnet20" else str(row.get("arch"))


def grid_cells(runs: pd.DataFrame) -> pd.DataFrame:
    """Collapsed-or-not ReLU two-phase runs labelled with their (arch label, dataset) cell of the grid."""
    chosen = select(runs)
    used = chosen.used[(column(chosen.used, "activation") == "relu") & ~is_intervention(chosen.used)]
    used = used[column(used, "protocol").isin(["two-phase"]) | column(used, "protocol").isna()]
    if used.empty:
        return used
    used = used.assign(cell_arch=used.apply(arch_label, axis=1))
    grid = training_runs(runs)
    grid = grid[column(grid, "sweep").isin(SWEEP_NAMES["grid"])]
    if len(grid):  # the grid's product: a point another sweep had already trained was skipped, not untrained
        cells = {(a, d) for a in set(grid.apply(arch_label, axis=1)) for d in set(grid["dataset"])}
    else:  # no grid sweep: one cell per (arch, dataset), the MLP at its most-run depth
        if used["arch"].nunique() < 2 and used["dataset"].nunique() < 2:
            return used.iloc[0:0]
        modal = used.groupby(["arch", "dataset"])["cell_arch"].agg(lambda s: s.value_counts().index[0])
        cells = {(label, dataset) for (_, dataset), label in modal.items()}
    return used[[cell in cells for cell in zip(used["cell_arch"], used["dataset"])]]


def grid_table(runs: pd.DataFrame) -> Table | None:
    """Table 6: fn* by (model, dataset) pair, pooled over all ReLU conditions; ANOVA and conditional effects."""
    used = grid_cells(runs)
    if used.empty or len(set(zip(used["cell_arch"], used["dataset"]))) < 2:
        return None
    summary = summaries(used.rename(columns={"cell_arch": "architecture"}), ["dataset", "architecture"])
    frame = condition_frame(summary, ["dataset", "architecture"])
    collapsed = used[column(used, T_NC).notna()]
    groups = [g[FN_STAR].to_numpy() for _, g in collapsed.groupby(["cell_arch", "dataset"])]
    anova = stats.one_way_anova(groups)
    notes = [
        "N counts runs across all conditions within each pair (ReLU, two-phase, no intervention).",
        f"Between-pair differences: one-way ANOVA F({anova.df_between}, {anova.df_within}) = {anova.f:.2f}, "
        f"p = {fmt_p(anova.p)}.",
    ]
    means = {(r.architecture, r.dataset): r.fn_star.mean for r in summary.itertuples() if r.fn_star.n}
    notes += effect_notes(means)
    notes += select(runs[runs.index.isin(used.index) | column(runs, "sweep").isin(SWEEP_NAMES["grid"])]).notes()
    title = "Table 6: Feature-norm threshold fn* by (model, dataset) pair (ReLU). 95% t-CIs with df = N − 1."
    return Table(title, frame, [ACCOUNTING_NOTE, *notes], numeric(summary))


def effect_notes(means: dict[tuple[str, str], float]) -> list[str]:
    """The paper's four conditional effects and the multiplicative-model miss, when a 2 × 2 grid is complete."""
    archs = sorted({a for a, _ in means}, key=lambda a: (not a.startswith("MLP"), a))
    datasets = sorted({d for _, d in means}, key=lambda d: (d != "mnist", d))
    if len(archs) < 2 or len(datasets) < 2:
        return []
    try:
        grid = stats.architecture_dataset_effects(means, (archs[0], archs[1]), (datasets[0], datasets[1]))
    except ValueError:
        return []
    a0, a1 = grid.archs
    d0, d1 = grid.datasets
    lines = [f"Architecture effect on {d} ({a0} → {a1}): Δ = {e.delta:+.3f} ({fmt_pct(e.relative, 0, True)})"
             for d, e in grid.architecture_effect.items()]
    lines += [f"Dataset effect for {a} ({d0} → {d1}): Δ = {e.delta:+.3f} ({fmt_pct(e.relative, 0, True)})"
              for a, e in grid.dataset_effect.items()]
    lines.append(f"Multiplicative model predicts fn*({a1}, {d0}) = {grid.multiplicative_prediction:.3f}; observed "
                 f"{means[a1, d0]:.3f} misses it by {fmt_pct(grid.multiplicative_miss, 0, True)}. Effects do not add.")
    return lines


def width_table(runs: pd.DataFrame) -> Table | None:
    """Table 7: width sweep, with the log-log fit of fn* on width and Pearson r of T_NC on width (condition means)."""
    table = _family_table(runs, "width", 7, "Width")
    if table is None:
        return None
    data = table.data
    fit = stats.loglog_regression(data["width"], data["fn_star_mean"])
    corr = stats.pearson(data["width"], data["T_NC_mean"])
    table.notes += [
        f"Log-log regression of mean fn* on width: fn* ∝ width^{fit.slope:.3f} (R² = {fit.r_squared:.2f}, "
        f"p = {fmt_p(fit.p)}, N = {fit.n} widths).",
        f"Pearson r of mean T_NC on width: r = {corr.r:.2f} (p = {fmt_p(corr.p)}, N = {corr.n} widths).",
    ]
    ordered = data.dropna(subset=["fn_star_mean"]).sort_values("width")
    if len(ordered) >= 2:
        first, last = ordered.iloc[0], ordered.iloc[-1]
        table.notes.append(
            f"Width {fmt_value('width', first['width'])} → {fmt_value('width', last['width'])}: fn* "
            f"{fmt_pct(stats.effect(first['fn_star_mean'], last['fn_star_mean']).relative, 1, True)}, T_NC "
            f"{fmt_pct(stats.effect(first['T_NC_mean'], last['T_NC_mean']).relative, 1, True)}.")
    return table


def intervention_table(runs: pd.DataFrame) -> Table | None:
    """Table 8: Phase 2 from one Phase-1 checkpoint with the final hidden layer scaled by α; t-tests vs α = 1."""
    chosen = select(family(runs, ["rescale_alpha"], SWEEP_NAMES["rescale_alpha"]))
    if chosen.used.empty:
        return None
    summary = summaries(chosen.used, ["rescale_alpha"])
    collapsed = chosen.used[column(chosen.used, T_NC).notna()]
    control = collapsed.loc[collapsed["rescale_alpha"] == 1.0, T_NC]
    rows, tests = [], []
    for row in summary.itertuples(index=False):
        alpha, k = row.rescale_alpha, row.n_collapsed
        name = "Control" if alpha == 1.0 else ("Scale-down" if alpha < 1.0 else "Scale-up")
        after = column(chosen.used[chosen.used["rescale_alpha"] == alpha], FN_AFTER).dropna()
        treated = collapsed.loc[collapsed["rescale_alpha"] == alpha, T_NC]
        welch = stats.t_test(treated, control) if alpha != 1.0 else None
        student = stats.t_test(treated, control, equal_var=True) if alpha != 1.0 else None
        tests.append((welch, student))
        rows.append({
            "Condition": name, "α": fmt_value("rescale_alpha", alpha), "N": row.n, "Collapsed": f"{k}/{row.n}",
            "fn after rescaling": "—" if after.empty else f"{after.mean():.1f}",
            "T_NC": "DNF" if k == 0 else fmt_pm(row.T_NC, 0, k),
            "fn* at collapse": "—" if k == 0 else fmt_pm(row.fn_star, 3, k),
            "p vs control (Welch)": "—" if welch is None else fmt_p(welch.p),
            "p vs control (Student)": "—" if student is None else fmt_p(student.p),
        })
    data = numeric(summary)
    data["p_welch"] = [math.nan if w is None else w.p for w, _ in tests]
    data["p_student"] = [math.nan if s is None else s.p for _, s in tests]
    fixed = describe_fixed(chosen.used, ["rescale_alpha"])
    title = f"Table 8: Intervention experiment ({fixed}): final hidden layer scaled by α at the end of Phase 1."
    notes = [ACCOUNTING_NOTE,
             "p: two-sided two-sample t-tests of T_NC against the α = 1.0 control; Welch's (unequal variances) "
             "and Student's (pooled variance — the test that reproduces the paper's p = 0.22 and 0.42).",
             *chosen.notes()]
    return Table(title, pd.DataFrame(rows), notes, data)


# ----------------------------------------------------------------------------------- early warning


def fn_histories(histories: pd.DataFrame, run_ids: Iterable[str]) -> dict[str, pd.DataFrame]:
    """`epoch`, `fn` and `phase` of each run (wide, sorted by epoch), split from the long frame in one pass."""
    rows = histories[histories["run_id"].isin(list(run_ids)) & histories["metric"].isin(["nc/fn", "phase"])]
    out = {}
    for run_id, group in rows.groupby("run_id", sort=False):
        wide = group.pivot_table(index="epoch", columns="metric", values="value", aggfunc="last").sort_index()
        out[str(run_id)] = wide.rename(columns={"nc/fn": "fn"}).reset_index()
    return out


def phase2_start(history: pd.DataFrame, phase1_epochs: float) -> float:
    """The first Phase-2 epoch: from the logged `phase`, else phase1_epochs + 1."""
    if "phase" in history.columns and (history["phase"] == 2).any():
        return float(history.loc[history["phase"] == 2, "epoch"].min())
    return float(phase1_epochs) + 1 if not pd.isna(phase1_epochs) else -math.inf


def lead_time_frame(runs: pd.DataFrame, histories: pd.DataFrame, by: str = "width") -> pd.DataFrame:
    """Per collapsed run: T_NC, and T_cross from its fn history against the condition's mean fn* (in-sample)
    and against the mean fn* of the condition's other seeds (leave-one-seed-out)."""
    collapsed = runs[column(runs, T_NC).notna()]
    wide = fn_histories(histories, collapsed["run_id"].astype(str))
    rows = []
    for value, group in collapsed.groupby(by, sort=True):
        fn_star = dict(zip(group["run_id"], group[FN_STAR]))
        in_sample = float(np.mean(list(fn_star.values())))
        loso = stats.loso_fn_ref(fn_star)
        for _, run in group.iterrows():
            history = wide.get(str(run["run_id"]), pd.DataFrame())
            if "fn" not in history.columns:
                continue
            start = phase2_start(history, run.get("phase1_epochs", math.nan))
            ref_loso = loso[run["run_id"]]
            rows.append({
                by: value, "run_id": run["run_id"], "run_name": run.get("run_name"), "seed": run.get("seed"),
                "T_NC": float(run[T_NC]), "fn_star": float(run[FN_STAR]),
                "fn_ref": in_sample, "T_cross": stats.crossing_epoch(history["epoch"], history["fn"], in_sample, start),
                "fn_ref_loso": ref_loso,
                "T_cross_loso": stats.crossing_epoch(history["epoch"], history["fn"], ref_loso, start),
            })
    return pd.DataFrame(rows)


def lead_time_table(runs: pd.DataFrame, histories: pd.DataFrame, by: str = "width", lead: float = LEAD) -> Table | None:
    """Early warning (paper §5.6, Fig. 8c): lead T_NC − T_cross and the MAE of T̂_NC = T_cross + lead."""
    chosen = select(family(runs, [by], SWEEP_NAMES.get(by, (by,))))
    frame = lead_time_frame(chosen.used, histories, by) if len(chosen.used) else pd.DataFrame()
    if frame.empty:
        return None
    result = stats.lead_time_stats(frame["T_NC"], frame["T_cross"], lead, frame["T_cross_loso"])
    display = pd.DataFrame({
        LABELS.get(by, by): [fmt_value(by, v) for v in frame[by]],
        "Run": frame["run_name"],
        "T_NC": frame["T_NC"].map("{:.0f}".format),
        "fn_ref": frame["fn_ref"].map("{:.3f}".format),
        "T_cross": frame["T_cross"].map(lambda v: "never" if math.isnan(v) else f"{v:.0f}"),
        "Lead": (frame["T_NC"] - frame["T_cross"]).map(lambda v: "—" if math.isnan(v) else f"{v:.0f}"),
        "fn_ref (LOSO)": frame["fn_ref_loso"].map(lambda v: "—" if math.isnan(v) else f"{v:.3f}"),
        "T_cross (LOSO)": frame["T_cross_loso"].map(lambda v: "never" if math.isnan(v) else f"{v:.0f}"),
    })
    before = int(((frame["T_cross"] < frame["T_NC"])).sum())
    notes = [
        f"In-sample (as the paper; fn_ref = the condition's mean fn*, including the run): lead T_NC − T_cross = "
        f"{result.lead_mean:.1f} ± {result.lead_std:.1f} epochs over {result.n} runs; T_cross < T_NC in "
        f"{before} of {len(frame)}; MAE of T_cross + {lead:g} = {result.mae:.1f} epochs.",
        f"Leave-one-seed-out (fn_ref = mean fn* of the condition's other seeds; lead = mean of the other runs): "
        f"mean lead {result.loso_lead_mean:.1f} epochs, MAE = {result.loso_mae:.1f} epochs over {result.loso_n} runs.",
        *chosen.notes(),
    ]
    if result.n_no_cross:
        notes.append(f"{_count(result.n_no_cross, 'run')} never crossed fn_ref in Phase 2 (left out of the MAE).")
    title = (f"Early warning: fn crossing fn* precedes collapse ({LABELS.get(by, by).lower()} sweep, "
             f"predicted T_NC = T_cross + {lead:g}).")
    return Table(title, display, notes, frame)


# ------------------------------------------------------------------------------------------ build


def build_tables(runs: pd.DataFrame, histories: pd.DataFrame) -> dict[str, Table]:
    """Every table whose runs exist, keyed `table1_threshold` … `table8_intervention`, `lead_time`, `sweep_<name>`."""
    builders = {
        "table1_threshold": lambda: threshold_table(runs),
        "table2_depth": lambda: _family_table(runs, "depth", 2, "Depth"),
        "table3_activation": lambda: _family_table(runs, "activation", 3, "Activation"),
        "table4_weight_decay": lambda: _family_table(runs, "weight_decay", 4, "Weight decay"),
        "table5_summary": lambda: summary_table(runs),
        "table6_grid": lambda: grid_table(runs),
        "table7_width": lambda: width_table(runs),
        "table8_intervention": lambda: intervention_table(runs),
        "lead_time": lambda: lead_time_table(runs, histories),
    }
    tables = {name: table for name, build in builders.items() if (table := build()) is not None}
    known = {name for names in SWEEP_NAMES.values() for name in names}
    train = training_runs(runs)
    for sweep in sorted(set(column(train, "sweep").dropna()) - known):
        members = train[train["sweep"] == sweep]
        varied = [p for p in DESIGN_PARAMS if p in members.columns and members[p].astype(str).nunique() > 1]
        if varied and not select(members).used.empty:
            tables[f"sweep_{sweep}"] = sweep_table(members, varied, title=f"Sweep {sweep}: by {', '.join(varied)}.")
    return tables
