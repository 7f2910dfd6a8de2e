"""ncflow's numbers beside the paper's: per table, each condition's published value, ours, and the difference.

`comparison_tables` builds one table per reproduced paper table (2, 3, 4, 6, 7, 8) from the same `Estimates` the
report's tables use, and the claims table (`analysis.claims`), at each reading of `analysis.epsilon`: the paper's ε
rule (stems `paper_claims`, `paper_table2_depth`, …) and every logged ε (`paper_claims_eps_0.01`, …), each titled
with its reading; plus `paper_claims_every_eps`, every claim's verdict at every reading side by side. The paper's
columns are always as printed (its ε rule); N and the collapsed count k/N stand in every row. A condition the store
lacks shows `—` for ncflow.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable

import numpy as np
import pandas as pd

from analysis import claims, epsilon, paper_values, tables
from analysis.aggregate import Estimates
from analysis.render import LABELS, Table, fmt_value
from analysis.selection import paper_data_set
from analysis.stats import LeadTimeStats, Summary

INTERVENTION_SEEDS = 3  # Table 8: every α's three seeds collapsed


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


def _collapsed(ours: pd.Series | None) -> str:
    return "—" if ours is None else f"{ours['n_collapsed']}/{ours['n']}"


def _paper_collapsed(condition: paper_values.Condition) -> str:
    collapsed = condition.collapsed if condition.collapsed is not None else (condition.n if condition.t_nc else 0)
    return f"{collapsed}/{condition.n}"


def sweep_comparison(estimates: Estimates, stem: str) -> Table:
    """Tables 2, 3, 4 and 7: T_NC and fn* per swept value, paper | ncflow | difference, with N and k/N collapsed."""
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
            "Collapsed paper / ncflow": f"{_paper_collapsed(condition)} / {_collapsed(ours)}",
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
        row, ours = None, None
        if grid is not None:
            match = grid.summary[grid.summary["dataset"].map(paper_data_set).eq(dataset)
                                 & grid.summary["architecture"].str.lower().str.startswith(arch[:3])]
            row, ours = (match.iloc[0], match["fn_star"].iloc[0]) if len(match) else (None, None)
        rows.append({"Pair": f"{arch} / {dataset}", "N paper / ncflow": f"{cell.n} / {'—' if row is None else row['n']}",
                     "Collapsed ncflow": _collapsed(row), "fn* paper": _pm(cell.fn_star, 3), "fn* ncflow": _ours(ours, 3),
                     "fn* Δ": _difference(cell.fn_star, ours, 3), "CV paper": f"{cell.cv:.1%}",
                     "CV ncflow": "—" if ours is None or not ours.n or math.isnan(ours.cv) else f"{ours.cv:.1%}"})
    notes = [f"Paper: ANOVA F = {paper_values.TABLE6_ANOVA_F}; ncflow: "
             + ("—" if grid is None else f"F = {grid.anova.f:.2f} over {grid.n_cells} pair(s)") + "."]
    paper_effects = "; ".join(f"{relative:+.0%} on {key.split(' | ')[1]}" for key, (_, relative)
                              in paper_values.TABLE6_EFFECTS.items() if key.startswith("architecture"))
    ours_effects = "; ".join(tables.architecture_effects_text(grid)) if grid is not None else ""
    notes.append(f"Paper: architecture effect on fn* (MLP → ResNet-20) {paper_effects}; ncflow: "
                 f"{ours_effects or '— (no data set with both architectures collapsed)'}.")
    return Table("Table 6 beside ncflow: fn* by (model, data set) pair.", pd.DataFrame(rows), notes, pd.DataFrame(rows))


def intervention_comparison(estimates: Estimates) -> Table:
    """Table 8: T_NC and fn* per α."""
    summary = estimates.family("rescale_alpha").summary
    rows = []
    for alpha, row in paper_values.TABLE8.items():
        index = _match(summary["rescale_alpha"], alpha) if len(summary) else None
        ours = summary.iloc[index] if index is not None else None
        t_nc, fn_star = (ours["T_NC"], ours["fn_star"]) if ours is not None else (None, None)
        rows.append({"α": f"{alpha:g}",
                     "Collapsed paper / ncflow": f"{INTERVENTION_SEEDS}/{INTERVENTION_SEEDS} / {_collapsed(ours)}",
                     "T_NC paper": _pm(row.t_nc, 0), "T_NC ncflow": _ours(t_nc, 0),
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


def read_at(table: Table, eps: float | None) -> Table:
    """The table with its reading in the title."""
    return Table(f"{table.title.rstrip('.')} — read at {epsilon.label(eps)}.", table.frame, table.notes, table.data)


def claims_every_eps(estimates: Estimates) -> Table:
    """Every claim's verdict and numbers at every reading (the paper's ε rule, then each logged ε), side by side."""
    found = {eps: claims.evaluate(estimates.at(eps)) for eps in epsilon.READINGS}
    first = found[epsilon.PAPER_RULE]
    heads = {eps: "paper's ε rule" if eps is None else f"ε = {eps:g}" for eps in epsilon.READINGS}
    frame = pd.DataFrame([{"Claim": claim.claim, "Paper": claim.paper,
                           **{heads[eps]: f"**{found[eps][i].verdict}**: {found[eps][i].ncflow}" for eps in found}}
                          for i, claim in enumerate(first)])
    notes = [f"{heads[eps]}: " + ", ".join(f"{n} {verdict}" for verdict, n in
                                           pd.Series([c.verdict for c in verdicts]).value_counts().items())
             for eps, verdicts in found.items()]
    notes.append("Each column reads every run at that ε (a run has collapsed when its NC1 fell below ε; "
                 f"`analysis.epsilon`); the paper's numbers are at {epsilon.RULE_TEXT}. The tests are `paper_claims`'s.")
    data = pd.DataFrame([{"claim": c.claim, "reading": heads[eps], "verdict": c.verdict, "ncflow": c.ncflow}
                         for eps, verdicts in found.items() for c in verdicts])
    return Table("Claims at every ε: the paper's findings tested on these runs at its ε rule and at each logged ε.",
                 frame, notes, data)


def _lead_cells(result: LeadTimeStats, before: int, total: int) -> dict[str, str]:
    if not result.n:
        return {"precede": f"0/{total}", "lead": "—", "MAE": "—", "MAE (LOSO)": "—"}
    spread = "" if math.isnan(result.lead_std) else f" ± {result.lead_std:.0f}"
    return {"precede": f"{before}/{total}", "lead": f"{result.lead_mean:.0f}{spread}", "MAE": f"{result.mae:.0f}",
            "MAE (LOSO)": "—" if math.isnan(result.loso_mae) else f"{result.loso_mae:.0f}"}


def early_warning_every_eps(estimates: Estimates) -> Table:
    """The paper's T_cross and, beyond the paper, the sustained crossing, at every reading: how many collapsed width
    runs cross before T_NC, the lead T_NC − crossing, and the MAE of crossing + lead (in-sample and leave-one-out)."""
    rows, lead = [], estimates.lead
    for eps in epsilon.READINGS:
        found = estimates.at(eps).lead_time
        row = {"Reading": "paper's ε rule" if eps is None else f"ε = {eps:g}"}
        if found is None:
            rows.append({**row, "Collapsed width runs": "0"})
            continue
        frame = found.frame
        row["Collapsed width runs"] = str(len(frame))
        for name, result, crossing in (("T_cross", found.stats, "T_cross"),
                                       ("T_sustained †", found.sustained, "T_sustained")):
            before = int((frame[crossing] < frame["T_NC"]).sum())
            row.update({f"{name}: {key}": value for key, value in _lead_cells(result, before, len(frame)).items()})
        rows.append(row)
    published = paper_values.LEAD_TIME
    notes = [
        f"Paper (its ε rule, width sweep): {published['n']}/{published['n']} precede, lead {published['mean']} ± "
        f"{published['std']}, MAE of T_cross + {lead:g} = {published['mae']}.",
        "T_cross: the paper's, the first Phase-2 epoch with fn below fn_ref (the width's mean fn* at that reading). "
        "† Beyond the paper: T_sustained, the first epoch after the MSE switch's transient from which fn stays below "
        "fn_ref to the run's end (docs/metrics.md). MAE: of crossing + the paper's lead against T_NC; LOSO: fn_ref "
        "from the other seeds and the other runs' mean lead.",
    ]
    return Table("Early warning at every ε: the paper's T_cross and the sustained crossing (beyond the paper).",
                 pd.DataFrame(rows), notes, pd.DataFrame(rows))


def comparison_tables(estimates: Estimates) -> dict[str, Table]:
    """Every side-by-side table and the claims table at every reading, keyed by file stem (`paper_claims_every_eps`,
    then `paper_claims`, `paper_table2_depth`, … at the paper's rule, then `…_eps_0.01` and so on)."""
    tables = {"paper_claims_every_eps": claims_every_eps(estimates),
              "early_warning_every_eps": early_warning_every_eps(estimates)}
    for eps in epsilon.READINGS:
        reading = estimates.at(eps)
        tables.update({stem + epsilon.suffix(eps): read_at(build(reading), eps) for stem, build in BUILDERS.items()})
    return tables
