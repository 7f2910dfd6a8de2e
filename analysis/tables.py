"""The paper's Tables 1–8, the early-warning table and a table per other sweep, from `analysis.aggregate.Estimates`.

Which runs a table uses is `analysis.selection`'s (families found by what they vary; diverged runs excluded and
counted, failed and running runs ignored and counted, a repeated (condition, seed) kept once), and its numbers
are `analysis.aggregate`'s; here they are laid out as the paper prints them, with the run accounting under every
table. T_NC, fn* and their intervals aggregate the collapsed runs (the `Collapsed` column, k/N); a cell over a
different number says `(n=…)`. A condition with no collapsed run shows DNF with its mean final NC1.
"""

from __future__ import annotations

import math
import re
from typing import Sequence

import pandas as pd

from analysis import paper_values
from analysis.aggregate import Estimates, Family, Grid, numeric
from analysis.render import (
    LABELS,
    Table,
    arch_label,
    count,
    fmt_interval,
    fmt_num,
    fmt_p,
    fmt_pct,
    fmt_pm,
    fmt_threshold,
    fmt_value,
)
from analysis.selection import SWEEP_NAMES, Histories, column, select
from analysis.stats import GridEffects, LeadTimeStats, Summary
from ncshared.schema import EXTRA_THRESHOLDS

ACCOUNTING_NOTE = ("N counts finished runs; T_NC, fn*, CV and the intervals aggregate the collapsed runs "
                   "(k of Collapsed k/N). Std has ddof = 1; bootstrap: percentile, 10,000 resamples, seed 0.")
FAMILY_TABLES = {  # stem → (varied param, table number, name)
    "table2_depth": ("depth", 2, "Depth"),
    "table3_activation": ("activation", 3, "Activation"),
    "table4_weight_decay": ("weight_decay", 4, "Weight decay"),
}
POOLED_NAMES = {"depth": "Depth sweep", "weight_decay": "WD sweep", "width": "Width sweep"}


# ------------------------------------------------------------------------------------------ layout


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
        parts.append("MLP" if first["arch"] == "mlp" and not fixed("depth") else arch_label(first))
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


# -------------------------------------------------------------------------------- per-family tables


def sweep_table(family: Family, title: str | None = None) -> Table:
    """Per-condition table of a family (or sweep) grouped by the param(s) it varies."""
    by = list(family.by)
    fixed = describe_fixed(family.used, by)
    title = title or f"Sweep over {', '.join(by)}" + (f" ({fixed})" if fixed else "") + ". Mean ± std."
    frame = condition_frame(family.summary, by) if len(family.summary) else pd.DataFrame()
    data = family.numbers if len(family.summary) else None
    return Table(title, frame, [ACCOUNTING_NOTE, *family.selection.notes()], data)


def family_table(estimates: Estimates, param: str, number: int, name: str) -> Table | None:
    """Tables 2–4 (and 7's body): the family varying `param`, mean ± std over seeds."""
    family = estimates.family(param)
    if family.empty:
        return None
    title = f"Table {number}: {name} sweep ({describe_fixed(family.used, [param])}). Mean ± std over seeds."
    return sweep_table(family, title)


def threshold_table(estimates: Estimates) -> Table | None:
    """Table 1: fn* at NC1 < 0.01 vs < 0.02 for ReLU conditions with ε = 0.01; ratio of the means."""
    threshold = estimates.threshold
    if threshold is None:
        return None
    rows = [{"Condition": row.condition, "N": row.n, "fn* @ NC1<0.01": f"{row.fn_star_001:.3f}",
             "fn* @ NC1<0.02": f"{row.fn_star_002:.3f}", "Ratio": f"{row.ratio:.2f}"}
            for row in threshold.frame.itertuples(index=False)]
    ratios = threshold.ratio
    rows.append({"Condition": f"Mean ratio ({count(ratios.n, 'condition')})", "N": "", "fn* @ NC1<0.01": "",
                 "fn* @ NC1<0.02": "", "Ratio": fmt_pm(ratios, 2)})
    title = ("Table 1: Threshold robustness for ReLU conditions (ε = 0.01): fn* at NC1 < 0.01 vs NC1 < 0.02. "
             "Means over seeds; ratio = fn*(0.02) / fn*(0.01).")
    notes = [f"Mean ratio over {count(ratios.n, 'condition')}: {fmt_pm(ratios, 2)}." if ratios.n != 1 else
             f"Ratio of the one condition: {fmt_pm(ratios, 2)} (a mean ± std needs two or more)."]
    return Table(title, pd.DataFrame(rows), notes, threshold.frame)


def paper_table1_label(condition: str) -> str | None:
    """The paper's Table 1 row of a condition (`Depth = 7`, `Width = 128`, `λ = 1e-05`; MLP-5 / 512 / 1e-4 is
    `Depth = 5`), from its run name `mlp{depth}-relu-w{width}-wd{λ}-…`; None for other shapes."""
    match = re.match(r"mlp(\d+)-relu-w(\d+)-wd([0-9.e+-]+)-", condition)
    if match is None:
        return None
    depth, width, decay = int(match.group(1)), int(match.group(2)), float(match.group(3))
    if depth != 5:
        label = f"Depth = {depth}" if width == 512 and decay == 1e-4 else None
    elif width != 512:
        label = f"Width = {width}" if decay == 1e-4 else None
    else:
        label = f"λ = {decay:.0e}" if decay != 1e-4 else "Depth = 5"
    return label if label in paper_values.TABLE1 else None


def threshold_every_eps_table(estimates: Estimates) -> Table | None:
    """Table 1 at every logged ε: per ReLU condition, collapsed k/N and fn* at ε = 0.01, 0.02, 0.05, and the ratios
    to fn*(0.01) (the paper's is fn*(0.02) / fn*(0.01)), beside the paper's Table 1 where it has the condition."""
    across = estimates.threshold_across
    if across.empty:
        return None
    rows = []
    for row in across.to_dict("records"):
        cells: dict[str, object] = {"Condition": row["condition"], "ε (paper rule)": fmt_threshold(row["paper_eps"])}
        for eps in EXTRA_THRESHOLDS:
            fn_star = row[f"fn_star_{eps:g}"]
            cells[f"ε = {eps:g}: collapsed"] = f"{row[f'k_{eps:g}']}/{row['n']}"
            cells[f"ε = {eps:g}: fn*"] = "—" if not fn_star.n else fmt_pm(fn_star, 3, fn_star.n)
        for eps in EXTRA_THRESHOLDS[1:]:
            ratio = row[f"ratio_{eps:g}"]
            cells[f"fn*({eps:g}) / fn*(0.01)"] = "—" if math.isnan(ratio) else f"{ratio:.2f}"
        published = paper_values.TABLE1.get(paper_table1_label(row["condition"]) or "")
        cells["Paper: fn*(0.01), fn*(0.02), ratio"] = "—" if published is None else \
            f"{published[0]:.3f}, {published[1]:.3f}, {published[2]:.2f}"
        rows.append(cells)
    ratios = across["ratio_0.02"].dropna()
    notes = [
        "Every ReLU two-phase condition, whatever ε its own rule gives; collapsed k/N and fn* (mean ± std over the k "
        "runs) at each ε; a ratio is over the runs that collapsed at 0.01 (they reached 0.02 and 0.05 first).",
        f"Mean fn*(0.02) / fn*(0.01) over {count(len(ratios), 'condition')}: "
        + ("—" if ratios.empty else f"{ratios.mean():.2f}" + ("" if len(ratios) < 2 else f" ± {ratios.std():.2f}"))
        + f" (paper: {paper_values.TABLE1_MEAN_RATIO[0]:.2f} ± {paper_values.TABLE1_MEAN_RATIO[1]:.2f}).",
    ]
    title = "Table 1 at every logged ε: collapse and fn* at NC1 < 0.01, 0.02 and 0.05 per ReLU condition."
    return Table(title, pd.DataFrame(rows), notes, numeric(across))


def _pooled_row(label: str, varied: str, fn: Summary, t_low: float, t_high: float) -> dict[str, object]:
    t_range = "—" if math.isnan(t_low) else f"{t_low:.0f}–{t_high:.0f}"
    return {"Condition": label, "Values varied": varied, "N": fn.n, "T_NC range": t_range,
            "fn* (mean ± std)": fmt_pm(fn, 3), "CV": fmt_pct(fn.cv), "95% t-CI": fmt_interval(fn.t_ci),
            "95% bootstrap CI": fmt_interval(fn.bootstrap_ci)}


def summary_table(estimates: Estimates) -> Table | None:
    """Table 5: fn* pooled within the depth, weight-decay and width sweeps (ReLU), and over all of them."""
    pooled = estimates.pooled
    if pooled.empty:
        return None
    rows, notes = [], []
    for row in pooled.itertuples(index=False):
        if not isinstance(row.param, str):  # the combined row
            label, varied = f"All ReLU runs (combined, N = {row.n_runs})", ""
        else:
            label = POOLED_NAMES[row.param]
            varied = f"{LABELS[row.param]} ∈ {{{', '.join(fmt_value(row.param, v) for v in row.values)}}}"
            notes += [f"{label}: {note}" for note in estimates.family(row.param).selection.notes()]
        rows.append(_pooled_row(label, varied, row.fn_star, row.t_nc_low, row.t_nc_high))
    frame = pd.DataFrame(rows)
    data = pd.DataFrame({"Condition": frame["Condition"], "fn_star": list(pooled["fn_star"])})
    title = "Table 5: Summary of fn* across conditions (ReLU): concentration within the pair despite varying T_NC."
    notes = ["Pooled over collapsed runs; a run in two sweeps counts once in the combined row. T_NC range spans "
             "the condition means.", *notes]
    return Table(title, frame, notes, numeric(data))


# ------------------------------------------------------------------------------ tests and effects


def architecture_effects_text(grid: Grid) -> list[str]:
    """Per data set with both architectures collapsed: `within D (MLP-5 → ResNet-20): Δ = …, 95% … CI […]`."""
    return [f"within {dataset} ({base} → {other}): Δ = {e.delta:+.3f} "
            f"({fmt_pct(e.relative, 0, True)}), 95% bootstrap CI of the relative effect "
            f"[{fmt_pct(ci[0], 0, True)}, {fmt_pct(ci[1], 0, True)}]"
            for dataset, (base, other, e, ci) in grid.architecture_effects.items()]


def grid_table(estimates: Estimates) -> Table | None:
    """Table 6: fn* by (model, dataset) pair, pooled over all ReLU conditions; ANOVA and conditional effects."""
    grid = estimates.grid
    if grid is None or grid.n_cells < 2:
        return None
    anova = grid.anova
    notes = [
        "N counts runs across all conditions within each pair (ReLU, two-phase, no intervention).",
        f"Between-pair differences: one-way ANOVA F({anova.df_between}, {anova.df_within}) = {anova.f:.2f}, "
        f"p = {fmt_p(anova.p)}.",
        *effect_notes(grid.effects),
        *[f"Architecture effect on fn* {text}" for text in architecture_effects_text(grid)],
    ]
    runs = estimates.runs
    notes += select(runs[runs.index.isin(grid.cells.index) | column(runs, "sweep").isin(SWEEP_NAMES["grid"])]).notes()
    title = "Table 6: Feature-norm threshold fn* by (model, dataset) pair (ReLU). 95% t-CIs with df = N − 1."
    frame = condition_frame(grid.summary, ["dataset", "architecture"])
    return Table(title, frame, [ACCOUNTING_NOTE, *notes], numeric(grid.summary))


def effect_notes(grid: GridEffects | None) -> list[str]:
    """The paper's four conditional effects and the multiplicative-model miss (none without a 2 × 2 grid)."""
    if grid is None:
        return []
    a0, a1 = grid.archs
    d0, d1 = grid.datasets
    lines = [f"Architecture effect on {d} ({a0} → {a1}): Δ = {e.delta:+.3f} ({fmt_pct(e.relative, 0, True)})"
             for d, e in grid.architecture_effect.items()]
    lines += [f"Dataset effect for {a} ({d0} → {d1}): Δ = {e.delta:+.3f} ({fmt_pct(e.relative, 0, True)})"
              for a, e in grid.dataset_effect.items()]
    observed = grid.architecture_effect[d0].value
    lines.append(f"Multiplicative model predicts fn*({a1}, {d0}) = {grid.multiplicative_prediction:.3f}; observed "
                 f"{observed:.3f} misses it by {fmt_pct(grid.multiplicative_miss, 0, True)}. Effects do not add.")
    return lines


def width_table(estimates: Estimates) -> Table | None:
    """Table 7: width sweep, with the log-log fit of fn* on width and Pearson r of T_NC on width (condition means)."""
    table = family_table(estimates, "width", 7, "Width")
    trend = estimates.width
    if table is None or trend is None:
        return None
    fit, corr = trend.fit, trend.correlation
    table.notes += [
        f"Log-log regression of mean fn* on width: fn* ∝ width^{fmt_num(fit.slope, 3)} "
        f"(R² = {fmt_num(fit.r_squared, 2)}, "
        f"p = {fmt_p(fit.p)}, N = {fit.n} widths).",
        f"Pearson r of mean T_NC on width: r = {fmt_num(corr.r, 2)} (p = {fmt_p(corr.p)}, N = {corr.n} widths).",
    ]
    if trend.span is not None:
        low, high = trend.span
        table.notes.append(
            f"Width {fmt_value('width', low)} → {fmt_value('width', high)}: fn* "
            f"{fmt_pct(trend.fn_star_change.relative, 1, True)}, T_NC {fmt_pct(trend.t_nc_change.relative, 1, True)}.")
    return table


def intervention_table(estimates: Estimates) -> Table | None:
    """Table 8: Phase 2 from one Phase-1 checkpoint with the final hidden layer scaled by α; t-tests vs α = 1."""
    intervention = estimates.intervention
    if intervention is None:
        return None
    family = intervention.family
    rows = []
    for row, test in zip(family.summary.itertuples(index=False), intervention.tests.itertuples(index=False)):
        alpha, k = row.rescale_alpha, row.n_collapsed
        rows.append({
            "Condition": "Control" if alpha == 1.0 else ("Scale-down" if alpha < 1.0 else "Scale-up"),
            "α": fmt_value("rescale_alpha", alpha), "N": row.n, "Collapsed": f"{k}/{row.n}",
            "fn after rescaling": "—" if math.isnan(test.fn_after) else f"{test.fn_after:.1f}",
            "T_NC": "DNF" if k == 0 else fmt_pm(row.T_NC, 0, k),
            "fn* at collapse": "—" if k == 0 else fmt_pm(row.fn_star, 3, k),
            "p vs control (Welch)": fmt_p(test.p_welch),
            "p vs control (Student)": fmt_p(test.p_student),
        })
    data = family.numbers.assign(p_welch=list(intervention.tests["p_welch"]),
                                 p_student=list(intervention.tests["p_student"]))
    fixed = describe_fixed(family.used, ["rescale_alpha"])
    title = f"Table 8: Intervention experiment ({fixed}): final hidden layer scaled by α at the end of Phase 1."
    notes = [ACCOUNTING_NOTE,
             "p: two-sided two-sample t-tests of T_NC against the α = 1.0 control; Welch's (unequal variances) "
             "and Student's (pooled variance — the test that reproduces the paper's p = 0.22 and 0.42).",
             *family.selection.notes()]
    return Table(title, pd.DataFrame(rows), notes, data)


def _epoch(value: float, missing: str) -> str:
    return missing if math.isnan(value) else f"{value:.0f}"


def lead_time_table(estimates: Estimates) -> Table | None:
    """Early warning (paper §5.6, Fig. 8c): lead T_NC − T_cross and the MAE of T̂_NC = T_cross + lead."""
    lead_time = estimates.lead_time
    if lead_time is None:
        return None
    by, frame, result, lead = lead_time.by, lead_time.frame, lead_time.stats, estimates.lead
    display = pd.DataFrame({
        LABELS.get(by, by): [fmt_value(by, v) for v in frame[by]],
        "Run": frame["run_name"],
        "T_NC": frame["T_NC"].map("{:.0f}".format),
        "fn_ref": frame["fn_ref"].map("{:.3f}".format),
        "T_cross": frame["T_cross"].map(lambda v: _epoch(v, "never")),
        "Lead": (frame["T_NC"] - frame["T_cross"]).map(lambda v: _epoch(v, "—")),
        "fn_ref (LOSO)": frame["fn_ref_loso"].map(lambda v: "—" if math.isnan(v) else f"{v:.3f}"),
        "T_cross (LOSO)": frame["T_cross_loso"].map(lambda v: _epoch(v, "never")),
        "Transient ends †": frame["transient_end"].map(lambda v: _epoch(v, "—")),
        "T_sustained †": frame["T_sustained"].map(lambda v: _epoch(v, "never")),
        "Lead (sustained) †": (frame["T_NC"] - frame["T_sustained"]).map(lambda v: _epoch(v, "—")),
    })
    before = int((frame["T_cross"] < frame["T_NC"]).sum())
    notes = [
        f"In-sample (as the paper; fn_ref = the condition's mean fn*, including the run): lead T_NC − T_cross = "
        f"{result.lead_mean:.1f} ± {result.lead_std:.1f} epochs over {result.n} runs; T_cross < T_NC in "
        f"{before} of {len(frame)}; MAE of T_cross + {lead:g} = {result.mae:.1f} epochs.",
        f"Leave-one-seed-out (fn_ref = mean fn* of the condition's other seeds; lead = mean of the other runs): "
        f"mean lead {result.loso_lead_mean:.1f} epochs, MAE = {result.loso_mae:.1f} epochs over {result.loso_n} runs.",
        *sustained_notes(lead_time.sustained, frame, lead),
        *lead_time.selection.notes(),
    ]
    if result.n_no_cross:
        notes.append(f"{count(result.n_no_cross, 'run')} never crossed fn_ref in Phase 2 (left out of the MAE).")
    title = (f"Early warning: fn crossing fn* precedes collapse ({LABELS.get(by, by).lower()} sweep, "
             f"predicted T_NC = T_cross + {lead:g}).")
    return Table(title, display, notes, frame)


def sustained_notes(sustained: LeadTimeStats, frame: pd.DataFrame, lead: float) -> list[str]:
    """† Beyond the paper: the sustained crossing's lead and MAE, beside the paper's T_cross (docs/metrics.md)."""
    before = int((frame["T_sustained"] < frame["T_NC"]).sum())
    return [
        "† Beyond the paper: the sustained crossing T_sustained, the first epoch after the MSE switch's transient "
        "(which ends at the top of fn's rebound after the switch's dip) from which fn stays below fn_ref to the run's "
        "end.",
        f"† Sustained crossing, in-sample: lead T_NC − T_sustained = {sustained.lead_mean:.1f} ± "
        f"{sustained.lead_std:.1f} epochs over {sustained.n} runs; T_sustained < T_NC in {before} of {len(frame)}; "
        f"MAE of T_sustained + {lead:g} = {sustained.mae:.1f} epochs; leave-one-seed-out: mean lead {sustained.loso_lead_mean:.1f}, MAE = "
        f"{sustained.loso_mae:.1f} epochs over {sustained.loso_n} runs"
        + (f"; {count(sustained.n_no_cross, 'run')} never stays below fn_ref." if sustained.n_no_cross else "."),
    ]


# ------------------------------------------------------------------------------------------ build


def build_tables(estimates: Estimates | pd.DataFrame, histories: Histories | None = None) -> dict[str, Table]:
    """Every table whose runs exist, keyed `table1_threshold` … `table8_intervention`, `lead_time`, `sweep_<name>`.

    `build_tables(runs, histories)` is short for `build_tables(Estimates(runs, histories))`.
    """
    if not isinstance(estimates, Estimates):
        estimates = Estimates(estimates, histories)
    builders = {
        "table1_threshold": lambda: threshold_table(estimates),
        "table1_every_eps": lambda: threshold_every_eps_table(estimates),
        **{stem: (lambda spec=spec: family_table(estimates, *spec)) for stem, spec in FAMILY_TABLES.items()},
        "table5_summary": lambda: summary_table(estimates),
        "table6_grid": lambda: grid_table(estimates),
        "table7_width": lambda: width_table(estimates),
        "table8_intervention": lambda: intervention_table(estimates),
        "lead_time": lambda: lead_time_table(estimates),
    }
    tables = {name: table for name, build in builders.items() if (table := build()) is not None}
    for name, family in estimates.sweeps.items():
        tables[f"sweep_{name}"] = sweep_table(family, title=f"Sweep {name}: by {', '.join(family.by)}.")
    return tables
