"""The tables of the studies beyond the paper — layer-wise collapse, class imbalance, the fixed ETF head — from
`Estimates.extra_studies`.

Laid out as the paper's tables are (`analysis.tables`): N in every row, Collapsed k/N, T_NC over the runs that
reached it (`DNF` for none), mean ± std over seeds (ddof = 1), the run accounting under the table, and the
full-precision numbers (`aggregate.numeric`) as the CSV. `analysis.report` writes them beside the paper's tables.
"""

from __future__ import annotations

import math
from typing import Callable

import pandas as pd

from analysis.aggregate import Estimates, numeric
from analysis.extra_studies import LayerStudy, ValueStudy, threshold_of
from analysis.monitored_runs import monitored_table
from analysis.render import Table, fmt_pm, fmt_threshold, fmt_value
from analysis.stats import Summary
from analysis.tables import describe_fixed

LAYER_NOTE = ("N counts the condition's finished layer-wise runs; a layer's T_NC (the first epoch its NC1 < ε) "
              "aggregates the runs whose layer reached it (Collapsed k/N); final NC1 and NC2 are the last epoch's, "
              "over every run. Layer 1 is the first hidden layer; the last is the one the run's own NC1 and NC2 "
              "measure. Std has ddof = 1.")
IMBALANCE_NOTE = ("N counts finished runs; T_NC aggregates the collapsed runs (Collapsed k/N); every other column is "
                  "the last epoch's value over every run. Minority collapse: mean pairwise cosine of the minority "
                  "classes' classifier rows (→ 1 as they merge; −1/(K−1) for a simplex ETF); minority mean "
                  "collapse: the same for their centred class means; logged only when ρ > 1 (— for ρ = 1).")
HEAD_NOTE = ("N counts finished runs; T_NC and fn* aggregate the collapsed runs (Collapsed k/N); test accuracy and "
             "NC1 are the last epoch's, over every run. ETF: the classifier fixed to a simplex equiangular tight "
             "frame (not trained).")
HEAD_NAMES = {"learned": "Learned", "etf": "Fixed simplex ETF"}
SIGNIFICANT = 3  # significant digits of a mean that spans decades (NC1, NC2)


def fmt_pm_sig(summary: Summary, n_expected: int | None = None) -> str:
    """`0.00412 ± 0.00031`, `5.20 ± 0.31`: mean ± std with the mean to SIGNIFICANT digits (`—` for none)."""
    if summary.n == 0 or not math.isfinite(summary.mean):
        return "—"
    digits = SIGNIFICANT - 1 - math.floor(math.log10(abs(summary.mean))) if summary.mean else SIGNIFICANT
    return fmt_pm(summary, min(max(digits, 0), 8), n_expected)


def fmt_pct_pm(summary: Summary) -> str:
    """A fraction's mean ± std in percent, `97.85 ± 0.12` (`—` for none)."""
    if summary.n == 0:
        return "—"
    scaled = Summary(summary.n, 100 * summary.mean, 100 * summary.std, summary.cv, summary.t_ci,
                     summary.bootstrap_ci)
    return fmt_pm(scaled, 2)


def fmt_t_nc(summary: Summary, k: int) -> str:
    """T_NC over the k runs that reached it, `DNF` for none."""
    return "DNF" if k == 0 else fmt_pm(summary, 0, k)


# ------------------------------------------------------------------------------------------ tables


def layerwise_table(study: LayerStudy | None) -> Table | None:
    """Per condition and hidden layer: N, Collapsed k/N, T_NC, final NC1 and NC2 (condition column when several)."""
    if study is None or not any(len(condition.summary) for condition in study.conditions):
        return None
    several = len(study.conditions) > 1
    rows, data = [], []
    for condition in study.conditions:
        for row in condition.summary.itertuples(index=False):
            cells = {"Condition": condition.label} if several else {}
            cells.update({"Layer": row.layer, "N": row.n, "Collapsed": f"{row.n_collapsed}/{row.n}",
                          "NC1 thresh.": fmt_threshold(threshold_of(condition.used)),
                          "T_NC": fmt_t_nc(row.T_NC, row.n_collapsed),
                          "Final NC1": fmt_pm_sig(row.nc1, row.n), "Final NC2": fmt_pm_sig(row.nc2, row.n)})
            rows.append(cells)
        data.append(numeric(condition.summary).assign(condition=condition.label))
    fixed = describe_fixed(study.selection.used, [])
    what = f" ({fixed})" if fixed and not several else ""
    title = (f"Layer-wise collapse{what}: per hidden layer, the runs whose layer reached NC1 < ε, its T_NC, and the "
             "final NC1 and NC2. Mean ± std over seeds.")
    frame = pd.concat(data, ignore_index=True)
    frame = frame[["condition", *[name for name in frame.columns if name != "condition"]]]
    return Table(title, pd.DataFrame(rows), [LAYER_NOTE, *study.selection.notes()], frame)


def _counts(row: tuple) -> dict[str, object]:
    """The `N` and `Collapsed k/N` cells of one value's summary row."""
    return {"N": row.n, "Collapsed": f"{row.n_collapsed}/{row.n}"}


def imbalance_table(study: ValueStudy | None) -> Table | None:
    """Per imbalance ratio ρ: N, Collapsed, final NC1, NC2, minority (mean) collapse, test accuracy, T_NC."""
    if study is None:
        return None
    rows = []
    for row in study.summary.itertuples(index=False):
        rows.append({
            "ρ": fmt_value("imbalance_ratio", row.imbalance_ratio), **_counts(row),
            "Final NC1": fmt_pm_sig(row.nc1, row.n), "Final NC2": fmt_pm_sig(row.nc2, row.n),
            "Minority collapse": fmt_pm(row.minority_collapse, 3, row.n),
            "Minority mean collapse": fmt_pm(row.minority_mean_collapse, 3, row.n),
            "Test acc. (%)": fmt_pct_pm(row.test_acc), "T_NC": fmt_t_nc(row.T_NC, row.n_collapsed),
        })
    used = study.used
    profiles = sorted(set(map(str, used.loc[pd.to_numeric(used["imbalance_ratio"], errors="coerce") > 1,
                                            "imbalance_profile"]))) if "imbalance_profile" in used else []
    profile = f", {'/'.join(profiles)} profile" if profiles else ""
    title = (f"Class imbalance ({describe_fixed(used, ['imbalance_ratio', 'imbalance_profile'])}{profile}): collapse "
             "and minority collapse against the imbalance ratio ρ = n_max / n_min. Mean ± std over seeds.")
    return Table(title, pd.DataFrame(rows), [IMBALANCE_NOTE, *study.selection.notes()], numeric(study.summary))


def etf_table(study: ValueStudy | None) -> Table | None:
    """Per classifier head (learned, fixed ETF): N, Collapsed, T_NC, fn*, final test accuracy and NC1."""
    if study is None:
        return None
    rows = []
    for row in study.summary.itertuples(index=False):
        k = row.n_collapsed
        rows.append({
            "Classifier": HEAD_NAMES.get(str(row.classifier), str(row.classifier)), **_counts(row),
            "T_NC": fmt_t_nc(row.T_NC, k),
            "fn* (mean ± std)": "—" if k == 0 else fmt_pm(row.fn_star, 3, k),
            "Test acc. (%)": fmt_pct_pm(row.test_acc), "Final NC1": fmt_pm_sig(row.nc1, row.n),
        })
    title = (f"Fixed simplex-ETF classifier ({describe_fixed(study.used, ['classifier'])}): a learned head against "
             "one fixed to a simplex ETF. Mean ± std over seeds.")
    return Table(title, pd.DataFrame(rows), [HEAD_NOTE, *study.selection.notes()], numeric(study.summary))


def build_extra_study_tables(estimates: Estimates) -> dict[str, Table]:
    """Every table beyond the paper whose runs exist: `table_layerwise`, `table_imbalance`, `table_etf`, and
    `table_monitored` (the user's own models, measured through the library)."""
    studies = estimates.extra_studies
    builders: dict[str, Callable[[], Table | None]] = {
        "table_layerwise": lambda: layerwise_table(studies.layerwise),
        "table_imbalance": lambda: imbalance_table(studies.imbalance),
        "table_etf": lambda: etf_table(studies.etf),
        "table_monitored": lambda: monitored_table(estimates.runs),
    }
    return {stem: table for stem, build in builders.items() if (table := build()) is not None}
