"""Early warning: when a run's fn first crosses the reference fn* (T_cross), and how well T_cross + lead
predicts T_NC (the paper's §5.6 and Figure 8c); and, beyond the paper, the sustained crossing.

The reference is the condition's mean fn* over its collapsed runs, in-sample (including the run, as the paper)
and leave-one-seed-out (the other seeds only); the crossing is searched from the first Phase-2 epoch on. The MSE
switch makes fn dip for a few epochs before it rebounds and decays, so the paper's T_cross can be the first Phase-2
epoch whatever fn* is; the sustained crossing (T_sustained) is the first epoch after that switch transient from which
fn stays below the reference to the run's end (docs/metrics.md defines both).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import numpy as np
import pandas as pd

from analysis import stats
from analysis.selection import Histories, Selection, column, histories_by_run
from analysis.stats import LeadTimeStats
from ncshared.schema import FN, FN_STAR, PHASE, T_NC


def phase2_start(history: pd.DataFrame, phase1_epochs: float) -> float:
    """The first Phase-2 epoch of a wide history (index epoch): from the logged phase, else phase1_epochs + 1."""
    if PHASE in history.columns and (history[PHASE] == 2).any():
        return float(history.index[(history[PHASE] == 2).to_numpy()].min())
    return float(phase1_epochs) + 1 if not pd.isna(phase1_epochs) else -math.inf


def lead_time_frame(runs: pd.DataFrame, histories: Histories, by: str = "width") -> pd.DataFrame:
    """Per collapsed run: T_NC, and T_cross from its fn history against the condition's mean fn* (in-sample)
    and against the mean fn* of the condition's other seeds (leave-one-seed-out)."""
    collapsed = runs[column(runs, T_NC).notna()]
    if not isinstance(histories, Mapping):  # pivot only what is read
        histories = histories[histories["run_id"].isin(collapsed["run_id"].astype(str))
                              & histories["metric"].isin([FN, PHASE])]
    lookup = histories_by_run(histories)
    rows = []
    for value, group in collapsed.groupby(by, sort=True):
        fn_star = dict(zip(group["run_id"], group[FN_STAR]))
        in_sample = float(np.mean(list(fn_star.values())))
        loso = stats.loso_fn_ref(fn_star)
        for _, run in group.iterrows():
            history = lookup.get(str(run["run_id"]))
            if history is None or FN not in history.columns:
                continue
            start = phase2_start(history, run.get("phase1_epochs", math.nan))
            epochs, fn = history.index, history[FN]
            settled = stats.switch_transient_end(epochs, fn, start)
            rows.append({
                by: value, "run_id": run["run_id"], "run_name": run.get("run_name"), "seed": run.get("seed"),
                "T_NC": float(run[T_NC]), "fn_star": float(run[FN_STAR]),
                "fn_ref": in_sample, "T_cross": stats.crossing_epoch(epochs, fn, in_sample, start),
                "fn_ref_loso": loso[run["run_id"]],
                "T_cross_loso": stats.crossing_epoch(epochs, fn, loso[run["run_id"]], start),
                "transient_end": settled,
                "T_sustained": stats.sustained_crossing_epoch(epochs, fn, in_sample, settled),
                "T_sustained_loso": stats.sustained_crossing_epoch(epochs, fn, loso[run["run_id"]], settled),
            })
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class LeadTime:
    """Early warning over one family: per-run crossings (`frame`) and how well T_cross + lead predicts T_NC, and the
    same for the sustained crossing (beyond the paper)."""

    by: str
    selection: Selection
    frame: pd.DataFrame  # `lead_time_frame`
    stats: LeadTimeStats
    sustained: LeadTimeStats  # T_sustained + lead against T_NC


def lead_time_estimates(selection: Selection, by: str, histories: Histories, lead: float) -> LeadTime | None:
    """The early warning over the used runs of a family varying `by`; None when no run has an fn history."""
    frame = lead_time_frame(selection.used, histories, by) if len(selection.used) else pd.DataFrame()
    if frame.empty:
        return None
    result = stats.lead_time_stats(frame["T_NC"], frame["T_cross"], lead, frame["T_cross_loso"])
    sustained = stats.lead_time_stats(frame["T_NC"], frame["T_sustained"], lead, frame["T_sustained_loso"])
    return LeadTime(by, selection, frame, result, sustained)
