"""The paper's findings, each stated as a test on the store: holds, does not hold, or not enough runs.

Each `claim_*` reads the shared `Estimates` (the numbers the tables print) and returns a `Claim` with the numbers
behind its verdict. `claims_table` lays them out as the report's claims table, the paper's number beside ours.
Thresholds are the paper's own (CV < 8 %, p > 0.2, NC1 < 0.076); nothing is tuned to make a claim hold.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis import paper_values, stats
from analysis.aggregate import Estimates
from analysis.render import Table, arch_label
from analysis.selection import column, is_intervention, select
from ncshared import schema

HOLDS, FAILS, TOO_FEW = "holds", "does not hold", "not enough runs"
MIN_SEEDS = 3  # runs a per-condition statement needs (the paper's N)


@dataclass(frozen=True)
class Claim:
    claim: str  # the paper's finding, in its words
    test: str  # what is checked on the store
    paper: str  # the paper's numbers
    ncflow: str  # ours
    verdict: str  # HOLDS, FAILS or TOO_FEW


def pair_fn_stars(runs: pd.DataFrame) -> dict[tuple[str, str], stats.Summary]:
    """fn* of the collapsed ReLU two-phase runs (no intervention) pooled per (model, data set) pair over every
    condition of the pair, as the paper's Table 6 pools them; an MLP pair is the MLP at its most-run depth (MLP-5 in
    the paper's program; its depth sweep's shallow nets use ε = 0.05 and are not Table 6's pair)."""
    used = select(runs).used
    used = used[(column(used, "activation") == "relu") & ~is_intervention(used)
                & column(used, "protocol").isin(["two-phase"])]
    if used.empty:
        return {}
    used = used.assign(cell_arch=used.apply(arch_label, axis=1))
    modal = used.groupby(["arch", "dataset"])["cell_arch"].agg(lambda labels: labels.value_counts().index[0])
    pairs = set(zip(modal, modal.index.get_level_values("dataset")))  # the most-run depth, collapsed or not
    used = used[[(label, data) in pairs for label, data in zip(used["cell_arch"], used["dataset"])]]
    used = used[column(used, schema.T_NC).notna()]
    return {(str(label), str(data)): stats.describe(group[schema.FN_STAR])
            for (label, data), group in used.groupby(["cell_arch", "dataset"], sort=True)}


def claim_pair_concentration(estimates: Estimates) -> Claim:
    claim = "fn* concentrates within a (model, data) pair"
    test = f"CV of fn* < 8 % in every (model, data) pair with ≥ {MIN_SEEDS} collapsed ReLU runs, pooled over its conditions"
    published = ", ".join(f"{arch}/{data} {cell.cv:.1%}" for (arch, data), cell in paper_values.TABLE6.items())
    cells = [(pair, summary) for pair, summary in pair_fn_stars(estimates.runs).items() if summary.n >= MIN_SEEDS]
    if not cells:
        return Claim(claim, test, published, "no pair has enough collapsed runs", TOO_FEW)
    ours = ", ".join(f"{a}/{d} {s.cv:.1%} (n={s.n})" for (a, d), s in cells)
    return Claim(claim, test, published, ours, HOLDS if all(s.cv < 0.08 for _, s in cells) else FAILS)


def claim_weight_decay_frozen(estimates: Estimates) -> Claim:
    claim, test = "λ = 5e-4 never collapses", "no run of the weight-decay family at λ = 5e-4 reaches NC1 < ε"
    published = f"0/3 collapsed, NC1 stalls ≈ {paper_values.TABLE4_DNF_NC1}"
    numbers = estimates.family("weight_decay").numbers
    row = numbers[np.isclose(numbers["weight_decay"].astype(float), 5e-4)] if len(numbers) else numbers
    if row.empty:
        return Claim(claim, test, published, "no run at λ = 5e-4", TOO_FEW)
    r = row.iloc[0]
    ours = f"{int(r['n_collapsed'])}/{int(r['n'])} collapsed"
    ours += "" if np.isnan(r["final_nc1"]) else f", final NC1 {r['final_nc1']:.3f}"  # of those that did not
    return Claim(claim, test, published, ours, HOLDS if r["n_collapsed"] == 0 else FAILS)


def _t_nc_steps(estimates: Estimates, param: str, joiner: str) -> tuple[str, np.ndarray] | None:
    """Mean T_NC per value of `param` (conditions with a collapse, in order) as text, and its successive changes;
    None with fewer than 3 such values."""
    numbers = estimates.family(param).numbers
    means = numbers[numbers["T_NC_n"] >= 1].sort_values(param) if len(numbers) else numbers
    if len(means) < 3:
        return None
    text = joiner.join(f"{value:g}: {t:.0f}" for value, t in zip(means[param], means["T_NC_mean"]))
    return text, np.diff(means["T_NC_mean"].to_numpy())


def claim_width_monotone(estimates: Estimates) -> Claim:
    claim, test = "width shortens T_NC monotonically", "mean T_NC strictly decreases with width (≥ 3 widths)"
    published = " → ".join(f"{w}: {c.t_nc[0]:.0f}" for w, c in paper_values.TABLE7.items())
    found = _t_nc_steps(estimates, "width", " → ")
    if found is None:
        return Claim(claim, test, published, "fewer than 3 widths with a collapse", TOO_FEW)
    return Claim(claim, test, published, found[0], HOLDS if np.all(found[1] < 0) else FAILS)


def claim_depth_non_monotone(estimates: Estimates) -> Claim:
    claim, test = "depth's effect on T_NC is non-monotonic", "mean T_NC neither rises nor falls monotonically with depth (≥ 3 depths)"
    published = ", ".join(f"{d}: {c.t_nc[0]:.0f}" for d, c in paper_values.TABLE2.items())
    found = _t_nc_steps(estimates, "depth", ", ")
    if found is None:
        return Claim(claim, test, published, "fewer than 3 depths with a collapse", TOO_FEW)
    monotone = np.all(found[1] >= 0) or np.all(found[1] <= 0)
    return Claim(claim, test, published, found[0], FAILS if monotone else HOLDS)


def claim_intervention_same_fn_star(estimates: Estimates) -> Claim:
    claim = "the intervention's three α reach the same fn*"
    test = "Welch t-test of fn* at α = 0.3 and α = 3 against α = 1: p > 0.2 for both"
    published = ", ".join(f"α={a:g}: {row.fn_star[0]:.3f}" for a, row in paper_values.TABLE8.items())
    family = estimates.family("rescale_alpha")
    used = family.used[column(family.used, schema.T_NC).notna()] if not family.empty else family.used
    groups = {a: column(used[used["rescale_alpha"] == a], schema.FN_STAR).to_numpy() for a in (1.0, 0.3, 3.0)}
    if family.empty or any(len(v) < 2 for v in groups.values()):
        return Claim(claim, test, published, f"collapsed runs per α: {({a: len(v) for a, v in groups.items()})}", TOO_FEW)
    p = {a: stats.t_test(groups[a], groups[1.0]).p for a in (0.3, 3.0)}
    ours = ", ".join(f"α={a:g}: {np.mean(v):.3f}" for a, v in groups.items()) + \
        f"; p = {p[0.3]:.2f}, {p[3.0]:.2f}"
    return Claim(claim, test, published, ours, HOLDS if all(value > 0.2 for value in p.values()) else FAILS)


def claim_ce_only(estimates: Estimates) -> Claim:
    claim = "cross-entropy alone does not collapse in 600 epochs"
    test = f"every CE-only run's minimum NC1 ≥ {paper_values.CE_ONLY['nc1_min']}"
    published = f"min NC1 {paper_values.CE_ONLY['nc1_min']}, final {paper_values.CE_ONLY['nc1_final']}"
    family = estimates.family("protocol")
    runs = family.used[column(family.used, "protocol") == "ce-only"] if not family.empty else family.used
    minima = [float(h[schema.NC1].min()) for run_id in runs.get("run_id", [])
              if (h := estimates.lookup.get(str(run_id))) is not None and schema.NC1 in h]
    if not minima:
        return Claim(claim, test, published, "no CE-only run with a history", TOO_FEW)
    ours = f"min NC1 {min(minima):.3f} over {len(minima)} run(s)"
    return Claim(claim, test, published, ours, HOLDS if min(minima) >= paper_values.CE_ONLY["nc1_min"] else FAILS)


def claim_early_warning(estimates: Estimates) -> Claim:
    claim = "fn crosses fn* before collapse; T_cross + 62 predicts T_NC"
    test = "T_cross < T_NC in every collapsed width-sweep run (fn* the width's mean); MAE of T_cross + 62"
    lead = paper_values.LEAD_TIME
    published = f"{lead['n']}/{lead['n']} precede, lead {lead['mean']} ± {lead['std']}, MAE {lead['mae']}"
    found = estimates.lead_time
    frame = found.frame.dropna(subset=["T_cross"]) if found is not None else pd.DataFrame()
    if frame.empty or len(frame) < MIN_SEEDS:
        return Claim(claim, test, published, "fewer than 3 collapsed width-sweep runs with a crossing", TOO_FEW)
    precede = int((frame["T_cross"] < frame["T_NC"]).sum())
    result = found.stats
    ours = f"{precede}/{len(frame)} precede, lead {result.lead_mean:.0f} ± {result.lead_std:.0f}, MAE {result.mae:.0f}"
    return Claim(claim, test, published, ours, HOLDS if precede == len(frame) else FAILS)


CLAIMS = (claim_pair_concentration, claim_weight_decay_frozen, claim_width_monotone, claim_depth_non_monotone,
          claim_intervention_same_fn_star, claim_ce_only, claim_early_warning)


def evaluate(estimates: Estimates) -> list[Claim]:
    return [check(estimates) for check in CLAIMS]


def claims_table(estimates: Estimates) -> Table:
    """The report's claims table: each finding, its test, the paper's numbers, ours, and the verdict."""
    found = evaluate(estimates)
    frame = pd.DataFrame([{"Claim": c.claim, "Test": c.test, "Paper": c.paper, "ncflow": c.ncflow,
                           "Verdict": c.verdict} for c in found])
    counts = pd.Series([c.verdict for c in found]).value_counts()
    notes = [", ".join(f"{n} {verdict}" for verdict, n in counts.items()) + f" of {len(found)} claims."]
    return Table("Claims: the paper's findings tested on these runs.", frame, notes, frame)
