"""Which runs a table or figure uses, and each run's history as one row per epoch.

A family is found by what its runs vary, not by where they were logged: the runs tagged with one of the
family's sweep names (`schema.TAG_SWEEP`) fix the other design params, and every training run with those
params joins in — a sweep that skipped a grid point because another sweep had already trained it (same
condition and seed) still gets its row. Without sweep tags, the largest family of runs that differ only in
the varied param is used.

Run accounting (`select`): `collapsed` and `not_collapsed` runs are used; `diverged` runs are excluded by the
pre-registered criterion and counted; `failed` and `running` runs are ignored and counted; a repeated
(condition, seed) keeps its latest run.

`histories_by_run` is the one long → wide pivot of the histories frame (`run_id, epoch, metric, value`, as
`analysis.store.load_histories` returns it); the lead-time statistics and every figure read its output.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from analysis.render import arch_label, count
from ncshared import run_config, schema

# Params that define what was trained (marked DESIGN): every param but the seed, the bookkeeping and the
# early-warning settings (`schema.NON_CONDITION_PARAMS`), and `init_from` (an intervention run is told apart by
# `is_intervention`).
DESIGN_PARAMS = run_config.params_marked(run_config.DESIGN)
USED = (schema.STATUS_COLLAPSED, schema.STATUS_NOT_COLLAPSED)
UNFINISHED = (schema.STATUS_FAILED, schema.STATUS_RUNNING)
DIVERGENCE_RULE = "NC1 > 0.5 after epoch 300, or a non-finite loss or training-set metric"
EPOCH = schema.HISTORY_EPOCH

# Sweep names (the sweep tag) that identify each family, keyed by the param the family varies (`"grid"` for the
# arch × dataset grid): `schema.SWEEP_FAMILIES`, the table the sweeps write by.
SWEEP_NAMES: dict[str, tuple[str, ...]] = {
    family: tuple(name for name, of in schema.SWEEP_FAMILIES.items() if of == family)
    for family in dict.fromkeys(schema.SWEEP_FAMILIES.values())
}

Histories = pd.DataFrame | Mapping[str, pd.DataFrame]  # the long frame, or `histories_by_run` of it


# ----------------------------------------------------------------------------------- selecting runs


@dataclass(frozen=True)
class Selection:
    """Runs split by how a table treats them."""

    used: pd.DataFrame  # collapsed + not_collapsed, one per (condition, seed)
    diverged: pd.DataFrame
    unfinished: pd.DataFrame  # failed + running
    duplicates: int

    def notes(self) -> list[str]:
        """The accounting lines printed under a table: what was excluded, ignored or dropped, and why."""
        notes = []
        if len(self.diverged):
            names = ", ".join(
                f"{name} ({reason})" if isinstance(reason, str) else str(name)
                for name, reason in zip(self.diverged["run_name"], column(self.diverged, "divergence_reason"))
            )
            notes.append(f"Excluded {count(len(self.diverged), 'diverged run')} by the pre-registered criterion "
                         f"({DIVERGENCE_RULE}): {names}.")
        if len(self.unfinished):
            counts = self.unfinished["status"].value_counts()
            parts = ", ".join(f"{counts[s]} {s}" for s in UNFINISHED if s in counts)
            notes.append(f"Ignored {count(len(self.unfinished), 'unfinished run')} ({parts}).")
        if self.duplicates:
            notes.append(f"Dropped {count(self.duplicates, 'repeated run')} (same condition and seed; latest kept).")
        return notes + mixed_provenance(self.used)


# What the runs of one condition must share to be aggregated as one: the runs-frame column → its name in a note.
SHARED_PROVENANCE = {"git_commit": "commit", "env_torch": "torch", "env_device": "device", "env_threads": "threads"}
MAX_LISTED = 4  # conditions named in one note


def mixed_provenance(used: pd.DataFrame) -> list[str]:
    """A warning when the runs aggregated for one condition ran different code or numerics (`SHARED_PROVENANCE`): each
    such condition (a run name without its seed) and its differing values; runs that recorded none are not compared."""
    if used.empty or "condition" not in used.columns:
        return []
    found = []
    for _, group in used.groupby("condition", sort=True):
        parts = []
        for name, word in SHARED_PROVENANCE.items():
            values = sorted(column(group, name).dropna().astype(str).unique())
            if len(values) > 1:
                shown = [value[:7] if name == "git_commit" else value for value in values]
                parts.append(f"{word} {' / '.join(shown)}")
        if parts:
            label = str(column(group, "run_name").astype(str).str.replace(r"-s\d+$", "", regex=True).iloc[0])
            found.append(f"`{label}` ({', '.join(parts)})")
    if not found:
        return []
    more = len(found) - MAX_LISTED
    listed = "; ".join(found[:MAX_LISTED]) + (f"; and {more} more" if more > 0 else "")
    return [f"Warning: the runs aggregated for {count(len(found), 'condition')} differ in code or numerics, so their "
            f"spread mixes seeds with software (docs/metrics.md, \"What changes a run's numbers\"): {listed}."]


def column(frame: pd.DataFrame, name: str) -> pd.Series:
    """A column, or NaNs when no run logged it."""
    return frame[name] if name in frame.columns else pd.Series(np.nan, index=frame.index, dtype=float)


PAPER_DATA_SETS = {"mnist-5k": "mnist"}  # a data set drawn from one of the paper's: mnist-5k is 5,000 MNIST images


def paper_data_set(dataset: object) -> str:
    """The paper's data set a run's data set is (`mnist`, `cifar10`) or is drawn from (mnist-5k → `mnist`), so its
    runs fill that data set's cell, row and figure; any other name is returned as it is."""
    return PAPER_DATA_SETS.get(str(dataset), str(dataset))


def is_intervention(frame: pd.DataFrame) -> pd.Series:
    """Runs that started from another run's checkpoint (`init_from` set)."""
    init = column(frame, "init_from")
    return init.notna() & ~init.astype(str).str.lower().isin(("none", "", "nan"))


def is_layerwise(frame: pd.DataFrame) -> pd.Series:
    """Runs trained with `--layerwise` (param `layerwise` true): they log `layers/<l>/*` and `layers.csv`."""
    return column(frame, "layerwise").astype(str).str.lower().isin(("true", "1"))


def training_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Training runs only (sweep parents and analysis runs have no status tag)."""
    keep = column(runs, "status").notna()
    if "kind" in runs.columns:
        keep &= runs["kind"].isna() | (runs["kind"] == schema.KIND_TRAIN)
    return runs[keep]


def select(runs: pd.DataFrame) -> Selection:
    """Split runs into used / diverged / unfinished; keep the latest run of a repeated (condition, seed)."""
    runs = training_runs(runs)
    status = runs["status"]
    used = runs[status.isin(USED)]
    key = [c for c in ("condition", "seed") if c in used.columns]
    deduped = used
    if len(key) == 2:
        order = column(used, "start_time").rank(method="first", na_option="bottom")
        deduped = used.assign(_order=order).sort_values("_order").drop_duplicates(key, keep="last")
        deduped = deduped.drop(columns="_order")
    diverged = runs[status == schema.STATUS_DIVERGED]
    return Selection(deduped, diverged, runs[status.isin(UNFINISHED)], len(used) - len(deduped))


def design_key(runs: pd.DataFrame, exclude: Iterable[str]) -> pd.DataFrame:
    """The design params of each run (but `exclude`), as strings."""
    names = [p for p in DESIGN_PARAMS if p in runs.columns and p not in set(exclude)]
    return runs[names].astype(str)


def family(runs: pd.DataFrame, vary: Sequence[str], sweep_names: Sequence[str] = ()) -> pd.DataFrame:
    """All training runs (every status) of the family that varies `vary` and holds the other design params fixed.

    The runs tagged with one of `sweep_names` define the fixed values; runs of other sweeps with the same
    values join. With no tagged run, the largest family with at least two values of `vary` is used.
    Intervention runs (init_from set) form their own families: only a family varying rescale_alpha uses them.
    """
    runs = training_runs(runs)
    runs = runs[is_intervention(runs) == ("rescale_alpha" in vary)]
    if runs.empty or not set(vary) <= set(runs.columns):
        return runs.iloc[0:0]
    keys = design_key(runs, vary).apply(tuple, axis=1)
    tagged = column(runs, "sweep").isin(sweep_names)
    if tagged.any():
        wanted = set(keys[tagged])
        return runs[keys.isin(wanted)] if len(wanted) == 1 else runs[tagged]
    values = runs[list(vary)].astype(str).apply(tuple, axis=1)
    sizes = {key: len(group) for key, group in runs.groupby(keys) if values[group.index].nunique() >= 2}
    if not sizes:
        return runs.iloc[0:0]
    best = max(sizes, key=lambda key: (sizes[key], str(key)))
    return runs[keys == best]


def family_selection(runs: pd.DataFrame, param: str) -> Selection:
    """`select` of the paper family varying `param` (found through `SWEEP_NAMES`)."""
    return select(family(runs, [param], SWEEP_NAMES.get(param, (param,))))


def other_sweeps(runs: pd.DataFrame) -> dict[str, tuple[pd.DataFrame, list[str]]]:
    """Sweeps that are no paper family, by name: (their training runs, the design params they vary)."""
    known = {name for names in SWEEP_NAMES.values() for name in names}
    train = training_runs(runs)
    found = {}
    for sweep in sorted(set(column(train, "sweep").dropna()) - known):
        members = train[train["sweep"] == sweep]
        varied = [p for p in DESIGN_PARAMS if p in members.columns and members[p].astype(str).nunique() > 1]
        found[sweep] = members, varied
    return found


def grid_cells(runs: pd.DataFrame) -> pd.DataFrame:
    """Collapsed-or-not ReLU two-phase runs labelled with their (arch label, dataset) cell of the grid."""
    chosen = select(runs)
    used = chosen.used[(column(chosen.used, "activation") == "relu") & ~is_intervention(chosen.used)]
    used = used[column(used, "protocol").isin(["two-phase"]) | column(used, "protocol").isna()]
    if used.empty:
        return used
    used = used.assign(cell_arch=used.apply(arch_label, axis=1))
    grid = training_runs(runs)
    grid = grid[column(grid, "sweep").isin(SWEEP_NAMES["grid"])]
    if len(grid):  # the grid's product: a point another sweep had already trained was skipped, not untrained
        labels = set(grid.apply(arch_label, axis=1))
        on_grid_data = used[used["dataset"].isin(set(grid["dataset"])) & (column(used, "arch") == "mlp")]
        if len(on_grid_data) and not any(label.startswith("MLP") for label in labels):
            # every MLP point of the grid was trained by another sweep (mnist-5k: MLP-5 by the depth sweep): the MLP
            # at its most-run depth on the grid's data sets, as without a grid sweep
            labels.add(str(on_grid_data["cell_arch"].value_counts().index[0]))
        cells = {(a, d) for a in labels for d in set(grid["dataset"])}
    else:  # no grid sweep: one cell per (arch, dataset), the MLP at its most-run depth
        if used["arch"].nunique() < 2 and used["dataset"].nunique() < 2:
            return used.iloc[0:0]
        modal = used.groupby(["arch", "dataset"])["cell_arch"].agg(lambda s: s.value_counts().index[0])
        cells = {(label, dataset) for (_, dataset), label in modal.items()}
    return used[[cell in cells for cell in zip(used["cell_arch"], used["dataset"])]]


def first_seed(runs: pd.DataFrame, by: str) -> pd.DataFrame:
    """The lowest-seed run of each value of `by` (the paper's "seed 0" panels)."""
    return runs.sort_values("seed").groupby(by, sort=True).head(1)


def baseline_run(runs: pd.DataFrame) -> pd.Series | None:
    """Figure 1's run: the lowest seed of the collapsed two-phase MLP condition that the sweeps share —
    the one taking the most common value of the most design params (MLP-5, ReLU, width 512, λ = 1e-4)."""
    used = select(runs).used
    collapsed = column(used, schema.T_NC).notna()
    used = used[collapsed & ~is_intervention(used) & (column(used, "arch") == "mlp")]
    used = used[column(used, "protocol").isin(["two-phase"])]
    if used.empty:
        return None
    keys = design_key(used, ())
    typical = (keys == keys.mode().iloc[0]).sum(axis=1)
    best = used[typical == typical.max()]
    return best.sort_values(["seed", "run_id"]).iloc[0]


# -------------------------------------------------------------------------------- the history pivot


def _pivot(epochs: np.ndarray, metric_codes: np.ndarray, values: np.ndarray, names: np.ndarray) -> pd.DataFrame:
    """Long rows (epoch, metric code into sorted `names`, value) → wide frame: epochs ascending, the metrics
    present in name order; a repeated (epoch, metric) keeps its last row, as `pivot_table(aggfunc="last")`."""
    present, columns = np.unique(metric_codes, return_inverse=True)
    steps, rows = np.unique(epochs, return_inverse=True)
    cells = rows.ravel() * len(present) + columns.ravel()
    _, last_reversed = np.unique(cells[::-1], return_index=True)
    keep = len(cells) - 1 - last_reversed
    grid = np.full(len(steps) * len(present), np.nan)
    grid[cells[keep]] = values[keep]
    return pd.DataFrame(grid.reshape(len(steps), len(present)), index=pd.Index(steps, name=EPOCH),
                        columns=pd.Index([str(name) for name in names[present]], name="metric"))


def histories_by_run(histories: Histories) -> dict[str, pd.DataFrame]:
    """Wide history per run id: one row per epoch (index `epoch`, ascending), one column per metric key (sorted).

    Split from the long frame with one sort and integer codes; a mapping (already split) is returned as is.
    """
    if isinstance(histories, Mapping):
        return dict(histories)
    if histories.empty:
        return {}
    run_codes, run_ids = pd.factorize(histories["run_id"], sort=False)
    metric_codes, names = pd.factorize(histories["metric"], sort=True)
    order = np.argsort(run_codes, kind="stable")  # keeps each run's rows in their logged order
    bounds = np.searchsorted(run_codes[order], np.arange(len(run_ids) + 1))
    epochs, metric_codes = histories[EPOCH].to_numpy()[order], metric_codes[order]
    values, names = histories["value"].to_numpy(dtype=float)[order], np.asarray(names, dtype=object)
    return {str(run_id): _pivot(epochs[lo:hi], metric_codes[lo:hi], values[lo:hi], names)
            for run_id, lo, hi in zip(run_ids, bounds[:-1], bounds[1:])}


def wide_history(history: pd.DataFrame, run_id: str | None = None) -> pd.DataFrame:
    """One run's history from the long frame, as `histories_by_run` (`run_id` picks the run when the frame
    holds several; without it, or without a `run_id` column, all rows are one run)."""
    if run_id is not None and "run_id" in history.columns:
        history = history[history["run_id"] == run_id]
    if history.empty:
        empty = np.empty(0, "int64")
        return _pivot(empty, empty, np.empty(0), np.empty(0, object))
    return histories_by_run(history.assign(run_id=""))[""]
