"""The table of runs measured through ncflow's library (`CollapseMonitor` and its Lightning and Trainer callbacks):
researchers' own models, next to the paper's tables in the report.

Such runs carry the tag `ncflow.source = monitor` (the runs frame's `source` column) and the params the user named,
`arch` and `dataset`; a condition here is one (arch, dataset, ε, step unit). Laid out as the other tables: N,
Collapsed k/N, T_NC and fn* over the runs that collapsed (`DNF` for none), and the last measurement's NC1 and test
accuracy over every run, mean ± std over the runs (ddof = 1).
"""

from __future__ import annotations

import math

import pandas as pd

from analysis.render import Table, fmt_pm, fmt_threshold
from analysis.stats import describe
from ncshared import schema

NOTE = ("Runs measured through ncflow's library (CollapseMonitor, the Lightning or Trainer callback) on the user's "
        "own models, grouped by the arch and dataset they named. N counts finished runs; T_NC and fn* aggregate the "
        "collapsed ones (Collapsed k/N); final NC1 and test accuracy are the last measurement's, over every run. "
        "Step: what T_NC counts, epochs or optimiser steps. Std has ddof = 1.")
FINISHED = (schema.STATUS_COLLAPSED, schema.STATUS_NOT_COLLAPSED, schema.STATUS_DIVERGED)
GROUP = ("arch", "dataset", "nc1_threshold", "step_unit")


def monitored_table(runs: pd.DataFrame) -> Table | None:
    """One row per (arch, dataset, ε, step unit) of the finished monitor runs; None when there are none."""
    if "source" not in runs.columns:
        return None
    mine = runs[(runs["source"] == schema.SOURCE_MONITOR) & runs["status"].isin(FINISHED)]
    if mine.empty:
        return None
    rows, data = [], []
    for key, group in mine.groupby([column if column in mine else pd.Series("—", index=mine.index)
                                    for column in GROUP], dropna=False, sort=True):
        arch, dataset, eps, unit = key
        collapsed = group[group["status"] == schema.STATUS_COLLAPSED]
        t_nc = describe(_values(collapsed, schema.T_NC))
        fn_star = describe(_values(collapsed, schema.FN_STAR))
        nc1 = describe(_values(group, schema.NC1))
        test_acc = describe(100 * _values(group, schema.TEST_ACC))
        k, n = len(collapsed), len(group)
        rows.append({"Model": arch, "Data set": dataset, "Step": unit, "N": n, "Collapsed": f"{k}/{n}",
                     "NC1 thresh.": fmt_threshold(float(eps)), "T_NC": "DNF" if k == 0 else fmt_pm(t_nc, 0, k),
                     "fn*": "—" if k == 0 else fmt_pm(fn_star, 3, k), "Final NC1": fmt_pm(nc1, 4, n),
                     "Test acc. (%)": fmt_pm(test_acc, 2, n)})
        data.append({"arch": arch, "dataset": dataset, "step_unit": unit, "nc1_threshold": eps, "n": n,
                     "n_collapsed": k, "T_NC_mean": t_nc.mean, "T_NC_std": t_nc.std, "fn_star_mean": fn_star.mean,
                     "fn_star_std": fn_star.std, "nc1_mean": nc1.mean, "test_acc_mean": test_acc.mean / 100})
    title = "Own models measured through ncflow's library: collapse per model and data set. Mean ± std over runs."
    return Table(title, pd.DataFrame(rows), [NOTE], pd.DataFrame(data))


def _values(frame: pd.DataFrame, column: str) -> pd.Series:
    if column not in frame.columns:
        return pd.Series(dtype=float)
    values = pd.to_numeric(frame[column], errors="coerce")
    return values[values.map(math.isfinite)]
