"""The numbers behind the four studies beyond the paper, computed once per runs frame and kept
(`ExtraStudies`; `analysis.aggregate.Estimates.extra_studies` holds one).

- Layer-wise collapse (`--layerwise`, `ncflow sweep layerwise`): per condition and hidden layer, N, the runs whose
  layer reached NC1 < ε (`schema.layer_t_nc`) and their T_NC, the final NC1 and NC2 (the latest `layers/<l>/*`),
  and the seeds' mean NC1 curve of every layer (from `layers.csv`, which `analysis.layer_store` appends to the
  histories).
- Class imbalance (`ncflow sweep imbalance`): per imbalance ratio ρ, the final NC1, NC2, minority collapse and
  minority mean collapse (logged only when ρ > 1), test accuracy and T_NC.
- Fixed simplex-ETF classifier (`ncflow sweep etf`): per head (learned, etf), T_NC, fn*, test accuracy, final NC1.
- Test-set collapse: train (`nc/nc1`) and test (`test/nc1`) NC1 over the epochs, mean over seeds, for up to four
  conditions (the depth family's, else the conditions with most runs).

Conventions as `analysis.aggregate`'s: N counts the used runs (`selection.select`), T_NC and fn* aggregate the
runs that reached them; a cell is a `stats.Summary`. `analysis.extra_study_tables` and
`analysis.extra_study_figures` read these and compute nothing themselves. The studies need only the runs frame,
the wide histories and the family selections (`analysis.selection`); `Estimates` hands them its own.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import cached_property
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from analysis import stats
from analysis.render import arch_label
from analysis.selection import Selection, column, is_intervention, is_layerwise, select
from ncshared import schema

IMBALANCE_METRICS = {  # summary column → the run's metric (its latest value)
    "nc1": schema.NC1, "nc2": schema.NC2, "minority_collapse": schema.MINORITY_COLLAPSE,
    "minority_mean_collapse": schema.MINORITY_MEAN_COLLAPSE, "test_acc": schema.TEST_ACC, "T_NC": schema.T_NC,
}
HEAD_METRICS = {"T_NC": schema.T_NC, "fn_star": schema.FN_STAR, "test_acc": schema.TEST_ACC,
                "nc1": schema.NC1}
HEAD_ORDER = ("learned", "etf")
MAX_PANELS = 4  # conditions in the train-vs-test figure (and the layer-wise figure)
_SEED_SUFFIX = re.compile(r"-s\d+$")


# ------------------------------------------------------------------------------------------ helpers


def condition_label(runs: pd.DataFrame) -> str:
    """`mlp7-relu-w512-wd1e-04-mnist`: the first run's name without its seed."""
    names = sorted(map(str, column(runs, "run_name").dropna()))
    return _SEED_SUFFIX.sub("", names[0]) if names else ""


def switch_epoch(runs: pd.DataFrame) -> float:
    """The CE → MSE switch (`phase1_epochs`) of the first two-phase run, NaN when none is two-phase."""
    two_phase = runs[column(runs, "protocol").isin(["two-phase"])]
    value = column(two_phase, "phase1_epochs").dropna()
    return float(value.iloc[0]) if len(value) else math.nan


def threshold_of(runs: pd.DataFrame) -> float:
    """The runs' ε (`collapse/threshold`) when they share one, else NaN."""
    values = column(runs, schema.COLLAPSE_THRESHOLD).dropna().unique()
    return float(values[0]) if len(values) == 1 else math.nan


def mean_curves(lookup: Mapping[str, pd.DataFrame], runs: pd.DataFrame, metrics: Mapping[object, str]) -> pd.DataFrame:
    """Per epoch (the index), the mean over `runs` of each metric (a column per key of `metrics`), over the runs that
    logged that epoch; a metric no run logged is left out, so no run gives an empty frame."""
    columns = {}
    for key, metric in metrics.items():
        series = [lookup[run_id][metric].dropna() for run_id in map(str, runs["run_id"])
                  if run_id in lookup and metric in lookup[run_id]]
        series = [s for s in series if len(s)]
        if series:
            columns[key] = pd.concat(series, axis=1).mean(axis=1)
    frame = pd.DataFrame(columns).sort_index()
    frame.index.name = schema.HISTORY_EPOCH
    return frame


def _values(series: pd.Series) -> pd.Series:
    """A param's values for grouping: numbers when every value is one (`1.0` and 1.0 alike), else strings."""
    numbers = pd.to_numeric(series, errors="coerce")
    return numbers if numbers.notna().all() else series.astype(str)


def value_summaries(used: pd.DataFrame, param: str, metrics: Mapping[str, str],
                    order: Sequence[object] = ()) -> pd.DataFrame:
    """One row per value of `param`: the value, n, n_collapsed (T_NC logged) and a Summary per key of `metrics`
    (over the runs that logged the metric). Values in `order` first, then the rest sorted."""
    values = _values(used[param])
    rows = []
    for value in sorted(values.unique(), key=lambda v: (v not in order, order.index(v) if v in order else 0, v)):
        group = used[values == value]
        rows.append({param: value, "n": len(group), "n_collapsed": int(column(group, schema.T_NC).notna().sum()),
                     **{key: stats.describe(column(group, metric)) for key, metric in metrics.items()}})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------- layer-wise collapse


def layers_of(runs: pd.DataFrame) -> list[int]:
    """The hidden layers (1-based) any of `runs` logged a final `layers/<l>/*` or a layer T_NC for."""
    found = set()
    for name in runs.columns:
        layer = schema.layer_of(name.removeprefix("collapse/"))
        if layer is not None and runs[name].notna().any():
            found.add(layer)
    return sorted(found)


def layer_summaries(used: pd.DataFrame) -> pd.DataFrame:
    """One row per hidden layer of one condition's runs: layer, n, n_collapsed (that layer's T_NC logged), and
    Summary cells of the layer's T_NC (over the runs that reached it) and its final NC1 and NC2."""
    rows = []
    for layer in layers_of(used):
        t_nc = column(used, schema.layer_t_nc(layer))
        rows.append({"layer": layer, "n": len(used), "n_collapsed": int(t_nc.notna().sum()),
                     "T_NC": stats.describe(t_nc),
                     "nc1": stats.describe(column(used, schema.layer_metric(layer, "nc1"))),
                     "nc2": stats.describe(column(used, schema.layer_metric(layer, "nc2")))})
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class CurvePanel:
    """One condition's mean curves over the epochs (one panel of a figure)."""

    label: str  # `condition_label`, or the family's value (`MLP-5`)
    runs: pd.DataFrame  # the used runs averaged
    curves: pd.DataFrame  # epoch index; one column per curve (a layer number, or a metric key)
    switch: float  # the CE → MSE epoch (NaN: none)
    threshold: float  # ε (NaN: none shared)


@dataclass(frozen=True)
class LayerCondition:
    """One layer-wise condition: its per-layer estimates and its layers' mean NC1 curves."""

    label: str
    used: pd.DataFrame
    summary: pd.DataFrame  # `layer_summaries`
    curves: CurvePanel  # columns: the layer numbers (empty: no layers.csv was read)


@dataclass(frozen=True)
class LayerStudy:
    """Every layer-wise run (`selection.is_layerwise`), accounted, by condition (sorted by label)."""

    selection: Selection
    conditions: tuple[LayerCondition, ...]


def layer_study(runs: pd.DataFrame, lookup: Mapping[str, pd.DataFrame]) -> LayerStudy | None:
    """The layer-wise study of the runs, or None when no layer-wise run is used."""
    chosen = select(runs[is_layerwise(runs)])
    used = chosen.used
    if used.empty:
        return None
    key = used["condition"].fillna("") if "condition" in used.columns else pd.Series("", index=used.index)
    conditions = []
    for _, group in used.groupby(key, sort=False):
        label = condition_label(group)
        layers = {layer: schema.layer_metric(layer, "nc1") for layer in layers_of(group)}
        panel = CurvePanel(label, group, mean_curves(lookup, group, layers), switch_epoch(group), threshold_of(group))
        conditions.append(LayerCondition(label, group, layer_summaries(group), panel))
    return LayerStudy(chosen, tuple(sorted(conditions, key=lambda c: c.label)))


# ------------------------------------------------------------------------------ imbalance and the ETF head


@dataclass(frozen=True)
class ValueStudy:
    """A family varying one param (ρ, or the classifier), summarised per value (`value_summaries`)."""

    param: str
    selection: Selection
    summary: pd.DataFrame

    @property
    def used(self) -> pd.DataFrame:
        return self.selection.used


def value_study(selection: Selection, param: str, metrics: Mapping[str, str],
                order: Sequence[object] = ()) -> ValueStudy | None:
    """The per-value estimates of a family's used runs, or None when it has none."""
    if selection.used.empty:
        return None
    return ValueStudy(param, selection, value_summaries(selection.used, param, metrics, order))


# ----------------------------------------------------------------------------------- test-set collapse


def train_test_panels(runs: pd.DataFrame, lookup: Mapping[str, pd.DataFrame],
                      depth_family: Selection) -> tuple[CurvePanel, ...]:
    """Train and test NC1 (columns `train`, `test`), mean over seeds, for up to MAX_PANELS conditions with a
    test-set NC1 history: the depth family's (evenly spread over its depths), else the conditions with most runs."""
    has_test = [run_id for run_id, wide in lookup.items()
                if schema.TEST_NC1 in wide and wide[schema.TEST_NC1].notna().any()]
    if not has_test:
        return ()
    groups: list[tuple[str, pd.DataFrame]] = []
    depth = depth_family.used
    depth = depth[depth["run_id"].astype(str).isin(has_test)] if len(depth) else depth
    if len(depth):
        values = sorted(depth["depth"].unique())
        picks = sorted({values[int(round(i))] for i in np.linspace(0, len(values) - 1, min(MAX_PANELS, len(values)))})
        groups = [(arch_label(depth[depth["depth"] == v].iloc[0]), depth[depth["depth"] == v]) for v in picks]
    else:
        used = select(runs).used
        used = used[used["run_id"].astype(str).isin(has_test) & ~is_intervention(used)]
        if used.empty:
            return ()
        key = used["condition"].fillna(used["run_id"]) if "condition" in used.columns else used["run_id"]
        ranked = sorted(((condition_label(g), g) for _, g in used.groupby(key)), key=lambda lg: (-len(lg[1]), lg[0]))
        groups = ranked[:MAX_PANELS]
    metrics = {"train": schema.NC1, "test": schema.TEST_NC1}
    return tuple(CurvePanel(label, group, mean_curves(lookup, group, metrics), switch_epoch(group),
                            threshold_of(group)) for label, group in groups)


# ---------------------------------------------------------------------------------------- the studies


class ExtraStudies:
    """The four studies of one runs frame, each computed on first use, from its wide histories
    (`selection.histories_by_run`) and `family`: the selection of the family varying a param
    (`selection.family_selection`; `Estimates` passes the ones it keeps, so a family is selected once)."""

    def __init__(self, runs: pd.DataFrame, lookup: Mapping[str, pd.DataFrame],
                 family: Callable[[str], Selection]) -> None:
        self.runs = runs
        self.lookup = lookup
        self.family = family

    @cached_property
    def layerwise(self) -> LayerStudy | None:
        return layer_study(self.runs, self.lookup)

    @cached_property
    def imbalance(self) -> ValueStudy | None:
        """The family varying `imbalance_ratio` (sweep `imbalance`), per ρ."""
        return value_study(self.family("imbalance_ratio"), "imbalance_ratio", IMBALANCE_METRICS)

    @cached_property
    def etf(self) -> ValueStudy | None:
        """The family varying `classifier` (sweep `etf`), per head (learned first)."""
        return value_study(self.family("classifier"), "classifier", HEAD_METRICS, HEAD_ORDER)

    @cached_property
    def train_test(self) -> tuple[CurvePanel, ...]:
        return train_test_panels(self.runs, self.lookup, self.family("depth"))
