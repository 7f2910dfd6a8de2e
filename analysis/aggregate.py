"""The numbers behind every table and figure, computed once and shared by both.

`Estimates(runs, histories)` wraps the runs and histories frames of `analysis.store` and computes, each on
first use and then kept: every paper family's per-condition estimates (`Family`: N, collapsed count, ε, and
`Summary` cells of T_NC and fn* with their intervals), the architecture × dataset grid (ANOVA, conditional
effects), the width trend (log-log fit, Pearson r), the intervention t-tests, the threshold-robustness ratios,
Table 5's pooled fn*, the early-warning lead times, and the studies beyond the paper (`analysis.extra_studies`);
`Estimates.at(ε)` is the same runs read at one logged ε (`analysis.epsilon`).
`analysis.tables` and `analysis.figures` read these and never call `analysis.stats` themselves.

Conventions: N counts the used runs of a condition; T_NC, fn* and their intervals aggregate its collapsed runs
(T_NC logged); a condition with no collapsed run keeps the mean final NC1 of its runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Mapping, Sequence

import pandas as pd

from analysis import stats
from analysis.early_warning import LeadTime, lead_time_estimates
from analysis.epsilon import runs_at
from analysis.extra_studies import ExtraStudies
from analysis.selection import (
    Histories,
    Selection,
    column,
    family_selection,
    grid_cells,
    histories_by_run,
    is_intervention,
    other_sweeps,
    paper_data_set,
    select,
)
from analysis.stats import AnovaResult, Correlation, Effect, GridEffects, RegressionResult, Summary
from ncshared import schema
from ncshared.schema import FN_STAR, T_NC

POOLED_PARAMS = ("depth", "weight_decay", "width")  # the families Table 5 pools


# ------------------------------------------------------------------------------ per-condition frames


def summaries(used: pd.DataFrame, by: Sequence[str]) -> pd.DataFrame:
    """One row per value of `by`: N, collapsed count, ε, final NC1, and Summary objects of T_NC and fn*."""
    rows = []
    for value, group in used.groupby(list(by), sort=True, dropna=False):
        collapsed = group[column(group, T_NC).notna()]
        thresholds = column(group, schema.COLLAPSE_THRESHOLD).dropna().unique()
        rows.append({
            **dict(zip(by, value if isinstance(value, tuple) else (value,))),
            "n": len(group),
            "n_collapsed": len(collapsed),
            "threshold": float(thresholds[0]) if len(thresholds) == 1 else math.nan,
            "T_NC": stats.describe(column(collapsed, T_NC)),
            "fn_star": stats.describe(column(collapsed, FN_STAR)),
            "final_nc1": float(column(group[column(group, T_NC).isna()], schema.NC1).mean()),
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


@dataclass(frozen=True)
class Family:
    """The runs of one family (or sweep) and its per-condition estimates."""

    by: tuple[str, ...]  # the varied param(s)
    selection: Selection
    summary: pd.DataFrame  # `summaries(used, by)`: Summary cells (empty when no run is used)
    numbers: pd.DataFrame  # `numeric(summary)`: the same estimates, flat (a table's CSV)
    fn_star: Summary  # every collapsed run's fn* together

    @property
    def used(self) -> pd.DataFrame:
        return self.selection.used

    @property
    def empty(self) -> bool:
        return self.selection.used.empty

    def fn_star_by_value(self) -> dict[object, Summary]:
        """The fn* Summary of each value of the first varied param."""
        return dict(zip(self.summary[self.by[0]], self.summary["fn_star"])) if len(self.summary) else {}


def family_estimates(selection: Selection, by: Sequence[str]) -> Family:
    """The per-condition estimates of the used runs of `selection`, grouped by `by`."""
    summary = summaries(selection.used, by) if len(selection.used) else pd.DataFrame()
    return Family(tuple(by), selection, summary, numeric(summary), stats.describe(column(selection.used, FN_STAR)))


# ------------------------------------------------------------------------------------ tests and fits


@dataclass(frozen=True)
class Threshold:
    """Table 1's numbers: per ReLU condition with ε = 0.01, mean fn* at NC1 < 0.01 and < 0.02, and their ratio."""

    frame: pd.DataFrame  # condition, n, fn_star_001, fn_star_002, ratio
    ratio: Summary  # of the conditions' ratios


def threshold_ratios(runs: pd.DataFrame) -> Threshold | None:
    """Table 1's numbers (a condition is a run name without its seed); None when no run logged both ε."""
    at01, at02 = schema.fn_star_at(0.01), schema.fn_star_at(0.02)
    used = select(runs).used
    relu = column(used, "activation") == "relu"
    used = used[relu & (column(used, schema.COLLAPSE_THRESHOLD) == 0.01) & ~is_intervention(used)]
    used = used[column(used, at01).notna() & column(used, at02).notna()]
    if used.empty:
        return None
    used = used.assign(label=column(used, "run_name").astype(str).str.replace(r"-s\d+$", "", regex=True))
    rows = []
    for label, group in used.groupby("label", sort=True):
        low, high = stats.describe(group[at01]), stats.describe(group[at02])
        rows.append({"condition": label, "n": low.n, "fn_star_001": low.mean, "fn_star_002": high.mean,
                     "ratio": high.mean / low.mean})
    return Threshold(pd.DataFrame(rows), stats.describe([row["ratio"] for row in rows]))


def threshold_across(runs: pd.DataFrame) -> pd.DataFrame:
    """Table 1 at every logged ε: per ReLU two-phase condition (a run name without its seed; no intervention),
    whatever ε its own rule gives: N, that rule's ε, and per ε of `schema.EXTRA_THRESHOLDS` the runs collapsed there
    (`k_<ε>`) and their fn* (`fn_star_<ε>`, a Summary); `ratio_<ε>` = mean fn*(ε) / mean fn*(0.01) over the runs that
    collapsed at 0.01 (they collapsed at every larger ε too: NC1 below 0.01 is below 0.02 first). Empty without runs."""
    used = select(runs).used
    used = used[(column(used, "activation") == "relu") & ~is_intervention(used)
                & column(used, "protocol").isin(["two-phase"])]
    if used.empty:
        return pd.DataFrame()
    used = used.assign(label=column(used, "run_name").astype(str).str.replace(r"-s\d+$", "", regex=True))
    lowest = min(schema.EXTRA_THRESHOLDS)
    rows = []
    for label, group in used.groupby("label", sort=True):
        thresholds = column(group, schema.COLLAPSE_THRESHOLD).dropna().unique()
        row: dict[str, object] = {"condition": label, "n": len(group),
                                  "paper_eps": float(thresholds[0]) if len(thresholds) == 1 else math.nan}
        paired = group[column(group, schema.fn_star_at(lowest)).notna()]
        for eps in schema.EXTRA_THRESHOLDS:
            fn_star = column(group, schema.fn_star_at(eps))
            row[f"k_{eps:g}"] = int(column(group, schema.t_nc_at(eps)).notna().sum())
            row[f"fn_star_{eps:g}"] = stats.describe(fn_star[column(group, schema.t_nc_at(eps)).notna()])
            base = column(paired, schema.fn_star_at(lowest)).mean()
            row[f"ratio_{eps:g}"] = float(column(paired, schema.fn_star_at(eps)).mean() / base) if len(paired) else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class Grid:
    """fn* over the architecture × dataset grid (ReLU, two-phase, no intervention), pooled over conditions."""

    cells: pd.DataFrame  # `grid_cells`: the runs, each with its `cell_arch` label
    summary: pd.DataFrame  # per (dataset, architecture)
    anova: AnovaResult  # between the cells' collapsed fn*
    effects: GridEffects | None  # the conditional effects, when a 2 × 2 grid is complete
    reference_fn_star: float  # mean fn* of the MLP on MNIST or a part of it (dotted in Figures 2 and 7)
    # per data set with both architectures: the architecture effect on fn* (MLP → ResNet) and its 95 % bootstrap CI
    architecture_effects: dict[str, tuple[str, str, Effect, tuple[float, float]]] = field(default_factory=dict)
    reference_data: str = ""  # the data set(s) of `reference_fn_star`'s runs: `mnist`, `mnist-5k`

    @property
    def n_cells(self) -> int:
        return len(set(zip(self.cells["cell_arch"], self.cells["dataset"])))

    def fn_star(self, architecture: str, dataset: str) -> Summary:
        """The fn* Summary of one cell."""
        cell = self.summary[(self.summary["architecture"] == architecture) & (self.summary["dataset"] == dataset)]
        return cell["fn_star"].iloc[0]


def grid_estimates(runs: pd.DataFrame) -> Grid | None:
    """The grid's estimates (`selection.grid_cells`), or None when it has no run."""
    cells = grid_cells(runs)
    if cells.empty:
        return None
    summary = summaries(cells.rename(columns={"cell_arch": "architecture"}), ["dataset", "architecture"])
    collapsed = cells[column(cells, T_NC).notna()]
    anova = stats.one_way_anova([column(g, FN_STAR).to_numpy() for _, g in collapsed.groupby(["cell_arch", "dataset"])])
    means = {(r.architecture, r.dataset): r.fn_star.mean for r in summary.itertuples() if r.fn_star.n}
    mlp = cells[(column(cells, "arch") == "mlp") & (column(cells, "dataset").map(paper_data_set) == "mnist")]
    reference = float(column(mlp, FN_STAR).mean()) if len(mlp) else math.nan
    reference_data = ", ".join(sorted(set(mlp["dataset"].astype(str)))) if len(mlp) else ""
    return Grid(cells, summary, anova, grid_effects(means), reference, architecture_effects(collapsed), reference_data)


def architecture_effects(collapsed: pd.DataFrame) -> dict[str, tuple[str, str, Effect, tuple[float, float]]]:
    """Per data set with an MLP and another architecture collapsed: (MLP label, other label, the effect of the
    architecture on mean fn*, the 95 % bootstrap CI of its relative size) — the paper's +458 % on MNIST."""
    found = {}
    for dataset, group in collapsed.groupby("dataset", sort=True):
        by_arch = {label: column(cells, FN_STAR).to_numpy() for label, cells in group.groupby("cell_arch")}
        mlps = sorted(label for label in by_arch if label.startswith("MLP"))
        others = sorted(label for label in by_arch if not label.startswith("MLP"))
        if mlps and others:
            base, other = by_arch[mlps[0]], by_arch[others[0]]
            found[str(dataset)] = (mlps[0], others[0], stats.effect(float(base.mean()), float(other.mean())),
                                   stats.relative_effect_interval(base, other))
    return found


def grid_effects(means: Mapping[tuple[str, str], float]) -> GridEffects | None:
    """The paper's conditional effects (MLP and mnist as references), or None without a complete 2 × 2 grid."""
    archs = sorted({a for a, _ in means}, key=lambda a: (not a.startswith("MLP"), a))
    datasets = sorted({d for _, d in means}, key=lambda d: (paper_data_set(d) != "mnist", d))
    if len(archs) < 2 or len(datasets) < 2:
        return None
    try:
        return stats.architecture_dataset_effects(means, (archs[0], archs[1]), (datasets[0], datasets[1]))
    except ValueError:
        return None


@dataclass(frozen=True)
class Trend:
    """How a family's condition means move with a numeric param (Table 7 and Figure 8 for width)."""

    param: str
    fit: RegressionResult  # log mean fn* on log param
    correlation: Correlation  # mean T_NC on param
    span: tuple[object, object] | None  # the smallest and largest value with an fn* (None: fewer than two)
    fn_star_change: Effect | None  # mean fn* from the smallest to the largest of `span`
    t_nc_change: Effect | None  # mean T_NC likewise


def trend(family: Family) -> Trend:
    """The trend of a family's condition means (`Family.numbers`) with its first varied param."""
    param, data = family.by[0], family.numbers
    fit = stats.loglog_regression(data[param], data["fn_star_mean"])
    correlation = stats.pearson(data[param], data["T_NC_mean"])
    ordered = data.dropna(subset=["fn_star_mean"]).sort_values(param)
    if len(ordered) < 2:
        return Trend(param, fit, correlation, None, None, None)
    first, last = ordered.iloc[0], ordered.iloc[-1]
    return Trend(param, fit, correlation, (first[param], last[param]),
                 stats.effect(first["fn_star_mean"], last["fn_star_mean"]),
                 stats.effect(first["T_NC_mean"], last["T_NC_mean"]))


@dataclass(frozen=True)
class Intervention:
    """Table 8's numbers: the α family, and per α (the summary's rows) the mean fn after rescaling and the
    two-sided t-tests of T_NC against the α = 1 control (NaN for the control itself)."""

    family: Family
    tests: pd.DataFrame  # rescale_alpha, fn_after, p_welch, p_student


def intervention_estimates(family: Family) -> Intervention:
    """Welch's and Student's t-tests of each α's collapsed T_NC against α = 1, and the mean fn after rescaling."""
    used = family.used
    collapsed = used[column(used, T_NC).notna()]
    control = collapsed.loc[collapsed["rescale_alpha"] == 1.0, T_NC]
    rows = []
    for alpha in family.summary["rescale_alpha"]:
        treated = collapsed.loc[collapsed["rescale_alpha"] == alpha, T_NC]
        after = column(used[used["rescale_alpha"] == alpha], schema.INTERVENTION_FN_AFTER).dropna()
        rows.append({
            "rescale_alpha": alpha, "fn_after": float(after.mean()) if len(after) else math.nan,
            "p_welch": stats.t_test(treated, control).p if alpha != 1.0 else math.nan,
            "p_student": stats.t_test(treated, control, equal_var=True).p if alpha != 1.0 else math.nan,
        })
    return Intervention(family, pd.DataFrame(rows))


def _pooled(collapsed: pd.DataFrame, t_means: pd.Series) -> dict[str, object]:
    return {"n_runs": len(collapsed), "fn_star": stats.describe(column(collapsed, FN_STAR)),
            "t_nc_low": float(t_means.min()), "t_nc_high": float(t_means.max())}


def pooled_fn_star(families: Mapping[str, Family]) -> pd.DataFrame:
    """Table 5's numbers: fn* pooled over the collapsed ReLU runs of each family (`param`, its `values`), then
    over all of them (`param` missing; a run in two families counts once); T_NC range over the condition means."""
    rows, pooled = [], []
    for param, fam in families.items():
        collapsed = fam.used[(column(fam.used, "activation") == "relu") & column(fam.used, T_NC).notna()]
        if collapsed.empty:
            continue
        rows.append({"param": param, "values": tuple(sorted(collapsed[param].unique())),
                     **_pooled(collapsed, collapsed.groupby(param)[T_NC].mean())})
        pooled.append(collapsed)
    if not rows:
        return pd.DataFrame()
    everything = pd.concat(pooled)
    key = [c for c in ("condition", "seed") if c in everything.columns]
    everything = everything.drop_duplicates(key) if len(key) == 2 else everything
    t_means = everything.groupby("condition")[T_NC].mean() if "condition" in everything else everything[T_NC]
    rows.append({"param": None, "values": (), **_pooled(everything, t_means)})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------ Estimates


class Estimates:
    """The estimates of one runs frame (and its histories, long or split by run), each computed on first use."""

    def __init__(self, runs: pd.DataFrame, histories: Histories | None = None,
                 lead: float = schema.DEFAULT_LEAD) -> None:
        self.runs = runs
        self.histories = histories
        self.lead = lead  # the fixed lead of the early-warning rule T_cross + lead
        self._families: dict[str, Family] = {}
        self._readings: dict[float, Estimates] = {}

    def at(self, eps: float | None) -> Estimates:
        """These runs read at `eps` (`analysis.epsilon.runs_at`; None: as they are), with the same histories."""
        if eps is None:
            return self
        if eps not in self._readings:
            self._readings[eps] = Estimates(runs_at(self.runs, eps), self.lookup, self.lead)
        return self._readings[eps]

    def family(self, param: str) -> Family:
        """The paper family varying `param` (see `analysis.selection.family`)."""
        if param not in self._families:
            self._families[param] = family_estimates(family_selection(self.runs, param), [param])
        return self._families[param]

    @cached_property
    def lookup(self) -> dict[str, pd.DataFrame]:
        """Each run's wide history (`histories_by_run`), shared by the lead times and the figures."""
        return histories_by_run(self.histories) if self.histories is not None else {}

    @cached_property
    def threshold(self) -> Threshold | None:
        return threshold_ratios(self.runs)

    @cached_property
    def threshold_across(self) -> pd.DataFrame:
        """Table 1 at every logged ε (`threshold_across`)."""
        return threshold_across(self.runs)

    @cached_property
    def grid(self) -> Grid | None:
        return grid_estimates(self.runs)

    @cached_property
    def width(self) -> Trend | None:
        family = self.family("width")
        return None if family.empty else trend(family)

    @cached_property
    def intervention(self) -> Intervention | None:
        family = self.family("rescale_alpha")
        return None if family.empty else intervention_estimates(family)

    @cached_property
    def pooled(self) -> pd.DataFrame:
        return pooled_fn_star({param: self.family(param) for param in POOLED_PARAMS})

    @cached_property
    def lead_time(self) -> LeadTime | None:
        """Early warning over the width family (the paper's §5.6)."""
        family = self.family("width")
        return lead_time_estimates(family.selection, "width", self.lookup, self.lead)

    @cached_property
    def sweeps(self) -> dict[str, Family]:
        """Every other sweep with a used run, by name, grouped by the params it varies."""
        found = {}
        for name, (members, varied) in other_sweeps(self.runs).items():
            chosen = select(members)
            if varied and not chosen.used.empty:
                found[name] = family_estimates(chosen, varied)
        return found

    @cached_property
    def extra_studies(self) -> ExtraStudies:
        """The studies beyond the paper (layer-wise, imbalance, ETF head, test-set collapse; `analysis.extra_studies`),
        drawing on the families kept here."""
        return ExtraStudies(self.runs, self.lookup, lambda param: self.family(param).selection)
