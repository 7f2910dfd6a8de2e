"""ncflow's numbers beside the paper's: per table, each condition's published value, ours, and the difference.

`comparison_tables` builds one table per reproduced paper table (2, 3, 4, 6, 7, 8) from the same `Estimates` the
report's tables use, and the claims table (`analysis.claims`). A condition the store lacks shows `—` for ncflow.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable

import numpy as np
import pandas as pd

from analysis import claims, paper_values
from analysis.aggregate import Estimates
from analysis.render import LABELS, Table, fmt_value
from analysis.stats import Summary


def _pm(pair: tuple[float, float] | None, digits: int) -> str:
    return "DNF" if pair is None else f"{pair[0]:.{digits}f} ± {pair[1]:.{digits}f}"


def _ours(summary: Summary | None, digits: int, n_collapsed: int | None = None) -> str:
    if summary is None:
        return "—"
    if not summary.n:
        return "DNF"
    spread = "" if math.isnan(summary.std) else f" ± {summary.std:.{digits}f}"
    return f"{summary.mean:.{digits}f}{spread} (n={summary.n})"


def _difference(published: tuple[float, float] | None, summary: Summary | None, digits: int) -> str:
    if published is None or summary is None or not summary.n:
        return "—"
    delta = summary.mean - published[0]
    return f"{delta:+.{digits}f} ({delta / published[0]:+.0%})"


def _match(values: Iterable[object], wanted: object) -> int | None:
    for index, value in enumerate(values):
        if isinstance(wanted, str) and value == wanted:
            return index
        if not isinstance(wanted, str) and not isinstance(value, str) and np.isclose(float(value), float(wanted)):
            return index
    return None


def sweep_comparison(estimates: Estimates, stem: str) -> Table:
    """Tables 2, 3, 4 and 7: T_NC and fn* per swept value, paper | ncflow | difference."""
    param, published = paper_values.SWEEP_TABLES[stem]
    summary = estimates.family(param).summary
    rows = []
    for value, condition in published.items():
        index = _match(summary[param], value) if len(summary) else None
        ours = summary.iloc[index] if index is not None else None
        t_nc, fn_star = (ours["T_NC"], ours["fn_star"]) if ours is not None else (None, None)
        rows.append({
            LABELS.get(param, param): fmt_value(param, value),
            "N paper / ncflow": f"{condition.n} / {'—' if ours is None else ours['n']}",
            "T_NC paper": _pm(condition.t_nc, 0), "T_NC ncflow": _ours(t_nc, 0),
            "T_NC Δ": _difference(condition.t_nc, t_nc, 0),
            "fn* paper": _pm(condition.fn_star, 3), "fn* ncflow": _ours(fn_star, 3),
            "fn* Δ": _difference(condition.fn_star, fn_star, 3),
        })
    title = f"{paper_values.WHERE[stem]} beside ncflow: mean ± std over seeds (n = collapsed runs)."
    return Table(title, pd.DataFrame(rows), [], pd.DataFrame(rows))


def grid_comparison(estimates: Estimates) -> Table:
    """Table 6: fn* by (model, data set) pair."""
    grid = estimates.grid
    rows = []
    for (arch, dataset), cell in paper_values.TABLE6.items():
        ours = None
        if grid is not None:
            match = grid.summary[grid.summary["dataset"].astype(str).str.startswith(dataset)
                                 & grid.summary["architecture"].str.lower().str.startswith(arch[:3])]
            ours = match["fn_star"].iloc[0] if len(match) else None
        rows.append({"Pair": f"{arch} / {dataset}", "fn* paper": _pm(cell.fn_star, 3), "fn* ncflow": _ours(ours, 3),
                     "fn* Δ": _difference(cell.fn_star, ours, 3), "CV paper": f"{cell.cv:.1%}",
                     "CV ncflow": "—" if ours is None or not ours.n or math.isnan(ours.cv) else f"{ours.cv:.1%}"})
    notes = [f"Paper: ANOVA F = {paper_values.TABLE6_ANOVA_F}; ncflow: "
             + ("—" if grid is None else f"F = {grid.anova.f:.2f} over {grid.n_cells} pair(s)") + "."]
    return Table("Table 6 beside ncflow: fn* by (model, data set) pair.", pd.DataFrame(rows), notes, pd.DataFrame(rows))


def intervention_comparison(estimates: Estimates) -> Table:
    """Table 8: T_NC and fn* per α."""
    summary = estimates.family("rescale_alpha").summary
    rows = []
    for alpha, row in paper_values.TABLE8.items():
        index = _match(summary["rescale_alpha"], alpha) if len(summary) else None
        ours = summary.iloc[index] if index is not None else None
        t_nc, fn_star = (ours["T_NC"], ours["fn_star"]) if ours is not None else (None, None)
        rows.append({"α": f"{alpha:g}", "T_NC paper": _pm(row.t_nc, 0), "T_NC ncflow": _ours(t_nc, 0),
                     "T_NC Δ": _difference(row.t_nc, t_nc, 0), "fn* paper": _pm(row.fn_star, 3),
                     "fn* ncflow": _ours(fn_star, 3), "fn* Δ": _difference(row.fn_star, fn_star, 3)})
    return Table("Table 8 beside ncflow: Phase 2 from one Phase-1 checkpoint, final hidden layer × α.",
                 pd.DataFrame(rows), [], pd.DataFrame(rows))


BUILDERS: dict[str, Callable[[Estimates], Table]] = {
    "paper_claims": claims.claims_table,
    **{f"paper_{stem}": (lambda e, stem=stem: sweep_comparison(e, stem)) for stem in paper_values.SWEEP_TABLES},
    "paper_table6_grid": grid_comparison,
    "paper_table8_intervention": intervention_comparison,
}


def comparison_tables(estimates: Estimates) -> dict[str, Table]:
    """Every side-by-side table and the claims table, keyed by file stem (`paper_table2_depth`, `paper_claims`)."""
    return {stem: build(estimates) for stem, build in BUILDERS.items()}
