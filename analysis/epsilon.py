"""The reproduction read at every ε: each run's T_NC and fn* at one ε it logged, in place of its own rule's.

Every run logs T_NC and fn* at the paper's ε rule (`collapse/T_NC`, `collapse/fn_star`, with its ε in
`collapse/threshold`: 0.05 for GELU/Tanh or MLP depth ≤ 3, else 0.01) and at each ε of `schema.EXTRA_THRESHOLDS`
(0.01, 0.02, 0.05: `collapse/eps_0.01/T_NC`, …). `runs_at(runs, eps)` is the runs frame with the former replaced by
the latter — a run has collapsed when its NC1 fell below that ε, whatever its architecture — so every estimate,
table and claim built from it (`analysis.aggregate.Estimates.at`) reads the whole store at one ε. A reading is
`PAPER_RULE` (None) or one of those ε; `label` and `suffix` name it in titles and file stems. Nothing is re-trained:
the ε were logged by every run as it trained.
"""

from __future__ import annotations

import pandas as pd

from analysis.selection import USED, column
from ncshared import schema

PAPER_RULE = None  # the reading at each run's own ε (the paper's rule)
READINGS: tuple[float | None, ...] = (PAPER_RULE, *schema.EXTRA_THRESHOLDS)
RULE_TEXT = "the paper's ε rule (0.05 for GELU/Tanh or MLP depth ≤ 3, else 0.01)"


def label(eps: float | None) -> str:
    """`the paper's ε rule (…)` or `ε = 0.02 for every run`."""
    return RULE_TEXT if eps is PAPER_RULE else f"ε = {eps:g} for every run"


def suffix(eps: float | None) -> str:
    """A file stem's suffix: `` for the paper's rule, `_eps_0.02` for an ε."""
    return "" if eps is PAPER_RULE else f"_eps_{eps:g}"


def runs_at(runs: pd.DataFrame, eps: float | None) -> pd.DataFrame:
    """The runs frame read at `eps`: T_NC, fn* and ε from the run's `collapse/eps_<ε>/…` metrics (NaN: it did not
    get there), and the status tag of a finished run (collapsed / not_collapsed) following them. The paper's rule
    (None) gives the frame as it is."""
    if eps is PAPER_RULE or runs.empty:
        return runs
    t_nc = column(runs, schema.t_nc_at(eps))
    status = runs["status"].where(~runs["status"].isin(USED), t_nc.notna().map(
        {True: schema.STATUS_COLLAPSED, False: schema.STATUS_NOT_COLLAPSED}))
    return runs.assign(**{schema.T_NC: t_nc, schema.FN_STAR: column(runs, schema.fn_star_at(eps)),
                          schema.COLLAPSE_THRESHOLD: float(eps), "status": status})
