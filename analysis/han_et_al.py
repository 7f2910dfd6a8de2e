"""Han et al.'s program ("Flatness is necessary, neural collapse is not") read from the store: the grokking runs and
the NCC and flatness regularisers, grouped, and their claims tested (the figures: `analysis.han_figures`).

Which runs. Only FINISHED runs not tagged failed. A *grokking* run counts optimiser steps (param `step_unit = step`,
`ncflow grok`); an *engine* run counts epochs. Runs are grouped by what they trained, never by their sweep tag:
- the *task* is the `dataset` param (`add-mod97-f0.3` for x + y mod 97 with 30 % training data, `mnist-5k`);
- the *setting* is every param except the seed, the regulariser's (`reg`, `reg_lambda`, `unplug_step` /
  `unplug_epoch`, `unplug_weight_decay`, `unplug_lr_factor`, `unplug_schedule`) and those that do not change what is
  trained (`schema.NON_CONDITION_PARAMS`); only runs of one setting are compared;
- an *arm* of a setting is (reg, λ, unplug): λ = 0 or reg none is the unregularised arm, and a run logged before the
  regulariser params existed is unregularised. An arm counts one run per seed (the earliest): the NCC and the
  flatness sweeps' λ = 0 points train the same unregularised network, which is one seed, not two.

What a run's history gives (x = the optimiser step of a grokking run, the epoch of an engine run):
- *final* value of a metric: the mean over the last FINAL_SHARE = 10 % of its evaluations (at least one). Grokking
  runs keep spiking after they generalise (one evaluation at 40 % validation accuracy between two at 100 %), so one
  last evaluation is a draw of that noise, not the end state;
- validation accuracy is `test/acc` (a grokking run measures its validation set as the test set).

The claims, each a test on these readings (margins chosen for what they mean, before reading a verdict):
- C1, NCC falls during memorisation, before generalisation (grokking runs): per run, `grokking/step_ncc_drop` <
  `grokking/step_generalised` (docs/metrics.md, "Grokking markers"; strictly earlier on the evaluation grid, so at
  least one evaluation earlier). Judged on the unregularised runs of a grokking setting that generalised; holds when
  every such run passes, with at least MIN_SEEDS = 3 of them (the paper's three seeds).
- C2, flatness falls when validation accuracy rises, not before (grokking runs): per run, the *rise* is the first
  evaluation after `step_memorised` with validation accuracy ≥ its level at `step_memorised` + RISE = 10 points — ten
  times the 1-point chance level of p = 97 and far below the 99 % of generalisation, so it marks the start of the
  climb, not its end; the run passes when rise ≤ `step_flatness_drop` ≤ `step_generalised` + SLACK · delay, SLACK =
  25 % of the run's own grokking delay (`step_generalised − step_memorised`: a slack in the run's time scale, the same
  at 2·10⁴ and 10⁶ steps). Runs and verdict as C1.
- C3, NCC-regularised networks generalise as well as unregularised ones while their NCC stays higher: per arm with
  reg = ncc and λ > 0, against the unregularised arm of its setting: mean final validation accuracy ≥ the
  unregularised mean − ACC_MARGIN = 2 points (about the spread of final accuracy over seeds, well under the gap
  between a network that generalises and one that does not), and mean final NCC > the unregularised mean.
- C4, flatness-regularised networks generalise later, and validation accuracy jumps after the unplug: per arm with
  reg = flatness and λ > 0 — *later*: the target is the unregularised arm's mean final validation accuracy −
  ACC_MARGIN; each run's reach is its first evaluation at or above the target (never: after every run's end); the arm
  passes when the median reach of its runs is later than the unregularised arm's median reach. *Jump* (arms with an
  unplug U): each run's gain is its largest validation accuracy in (U, U + W] minus its validation accuracy at the last
  evaluation ≤ U, with W = WINDOW_SHARE = 10 % of the run's length; the arm passes when its mean gain ≥ JUMP = 10
  points and, where the setting has the same λ without an unplug, exceeds that arm's mean gain over the same window.
An arm whose every run diverged (`ncflow.status = diverged`: a non-finite loss) never generalises, so C4 *later*
does not hold for it, the divergence named; its *jump* cannot be seen in runs that stopped before the unplug ("not
enough runs"). C3 and C4 compare arms, each of at least MIN_ARM_RUNS = 1 run (the paper's λ ablation used one seed); the table
gives N per arm so a single-seed comparison reads as one. C1 and C2 are grokking's: an engine run on mnist-5k has no
memorisation phase to come before its generalisation, so they are judged on grokking tasks only. C3 and C4 are judged
on every task with regularised runs, and on the grokking task and on mnist-5k always: without their runs the row
reads "not enough runs" and names what is missing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import store
from analysis.render import Table
from analysis.selection import histories_by_run
from analysis.store import FIXED_COLUMNS
from ncshared import schema
from ncshared.dynamics_figure import finite_series
from ncshared.grokking_markers import grokking_markers
from ncshared.mlflow_env import resolve_tracking_uri

HOLDS, FAILS, TOO_FEW = "holds", "does not hold", "not enough runs"
MIN_SEEDS = 3  # C1, C2: grokking runs per setting (the paper's three seeds)
MIN_ARM_RUNS = 1  # C3, C4: runs per arm
FINAL_SHARE = 0.1  # a run's final value: the mean over this share of its last evaluations
RISE = 0.10  # C2: validation accuracy's rise above its level at memorisation (fraction)
SLACK = 0.25  # C2: the flatness drop may come this share of the grokking delay after generalisation
ACC_MARGIN = 0.02  # C3, C4: "as well" / the unregularised accuracy to reach, within 2 points
WINDOW_SHARE = 0.1  # C4: the window after the unplug, as a share of the run's length
JUMP = 0.10  # C4: the validation-accuracy gain within that window that counts as a jump
VAL_ACC, TRAIN_ACC, NCC, FLATNESS = schema.TEST_ACC, schema.TRAIN_ACC, schema.NCC, schema.FLATNESS
MARKERS = {"memorised": "grokking/step_memorised", "generalised": "grokking/step_generalised",
           "NCC drop": "grokking/step_ncc_drop", "flatness drop": "grokking/step_flatness_drop"}
REG_PARAMS = ("reg", "reg_lambda", "unplug_step", "unplug_epoch", "unplug_weight_decay", "unplug_lr_factor",
              "unplug_schedule")
NOT_SETTING = frozenset({*REG_PARAMS, *schema.NON_CONDITION_PARAMS, "monitor_passes"})
NOT_PARAMS = frozenset({schema.PHASE})  # a metric key without a `/` (`lr` is a param: its metric is `metrics.lr`)
GROKKING_TASK = "grokking tasks"  # the grokking tasks together (none yet, or several)
ENGINE_TASKS = ("mnist-5k",)  # engine tasks judged (C3, C4) even without runs
FINISHED = "FINISHED"


@dataclass(frozen=True, order=True)
class Arm:
    """One treatment of a setting: the regulariser, its weight and the step/epoch after which it is removed."""

    reg: str = "none"
    reg_lambda: float = 0.0
    unplug: int = 0  # 0: never
    switches: str = ""  # what else the unplug switches (`weight decay 0.0002, lr × 10, cosine`); "": nothing

    @property
    def regularised(self) -> bool:
        return self.reg != "none" and self.reg_lambda > 0

    def label(self, unit: str = "step") -> str:
        if not self.regularised:
            return "unregularised"
        unplug = f", unplug at {unit} {self.unplug}" if self.unplug else ""
        switches = f" ({self.switches})" if self.switches else ""
        return f"{self.reg} λ = {self.reg_lambda:g}{unplug}{switches}"


UNREGULARISED = Arm()


@dataclass
class Setting:
    """The runs of one task and one setting, by arm (run ids, ordered by seed)."""

    task: str
    unit: str  # "step" (grokking) or "epoch"
    params: dict[str, object]
    arms: dict[Arm, list[str]] = field(default_factory=dict)

    @property
    def grokking(self) -> bool:
        return self.unit == "step"

    def reg_arms(self, reg: str) -> list[Arm]:
        return sorted(arm for arm in self.arms if arm.regularised and arm.reg == reg)

    @property
    def label(self) -> str:
        if not self.grokking:
            model = self.params.get("arch", "")
            return f"{self.task} ({model})" if model else self.task
        steps = self.params.get("steps")
        return f"{self.task}, {int(float(steps)):,} steps" if steps is not None else self.task  # type: ignore[arg-type]


@dataclass
class HanRuns:
    """The runs Han et al.'s program uses: the used runs, their wide histories by run id, and their settings."""

    runs: pd.DataFrame  # one row per used run, indexed by run id
    lookup: dict[str, pd.DataFrame]
    settings: list[Setting]
    markers: dict[str, dict[str, float]] = field(default_factory=dict)  # run id → its grokking markers, once computed

    def history(self, run_id: str) -> pd.DataFrame:
        return self.lookup.get(run_id, pd.DataFrame())

    def marker(self, run_id: str, name: str) -> float:
        """A grokking marker recomputed from the run's history (`ncshared.grokking_markers`), so runs logged under an
        earlier definition read the same as new ones; NaN when it never happened."""
        if run_id not in self.markers:
            history = self.history(run_id)
            rows = [{schema.HISTORY_EPOCH: float(step), **values} for step, values in
                    zip(history.index, history.to_dict("records"))]
            self.markers[run_id] = grokking_markers(rows)
        return float(self.markers[run_id].get(MARKERS[name], math.nan))


# ------------------------------------------------------------------------------------------- reading


def read_han(tracking_uri: str | None, experiment: str | None = None, sweep: str | None = None,
             cache_dir: Path | None = None, progress: bool = False) -> HanRuns:
    """The store's training runs (every experiment, or the named one) grouped, with their histories (through the
    history cache); a StoreError naming what was searched when there are none."""
    runs = store.load_runs(tracking_uri, experiment=experiment, sweep=sweep)
    if runs.empty:
        where = "every experiment" if experiment is None else f"experiment {experiment!r}"
        raise store.StoreError(f"no ncflow training runs found in {where} at {resolve_tracking_uri(tracking_uri)}")
    finished = runs[runs["mlflow_status"] == FINISHED]
    histories = store.load_histories(finished, tracking_uri, cache_dir=cache_dir, progress=progress)
    return han_runs(runs, histories)


# ------------------------------------------------------------------------------------------- grouping


def _value(row: Mapping[str, object], name: str, default: object) -> object:
    value = row.get(name)
    return default if value is None or (isinstance(value, float) and math.isnan(value)) else value


def arm_of(row: Mapping[str, object]) -> Arm:
    """A run's arm from its params (absent: unregularised)."""
    reg = str(_value(row, "reg", "none"))
    reg_lambda = float(_value(row, "reg_lambda", 0.0))  # type: ignore[arg-type]
    unplug = int(float(_value(row, "unplug_step", _value(row, "unplug_epoch", 0))))  # type: ignore[arg-type]
    if reg == "none" or reg_lambda == 0:
        return UNREGULARISED
    switches = []
    if unplug:
        decay = float(_value(row, "unplug_weight_decay", -1.0))  # type: ignore[arg-type]
        factor = float(_value(row, "unplug_lr_factor", 1.0))  # type: ignore[arg-type]
        schedule = str(_value(row, "unplug_schedule", "none"))
        switches += [f"weight decay {decay:g}"] if decay >= 0 else []
        switches += [f"lr × {factor:g}"] if factor != 1.0 else []
        switches += [schedule] if schedule not in ("none", "") else []
    return Arm(reg, reg_lambda, unplug, ", ".join(switches))


def param_columns(runs: pd.DataFrame) -> list[str]:
    """The runs frame's param columns: after the fixed ones, every column that is not a metric key."""
    return [name for name in runs.columns if name not in FIXED_COLUMNS and "/" not in name
            and not name.startswith("metrics.") and name not in NOT_PARAMS]


def han_runs(runs: pd.DataFrame, histories: pd.DataFrame | Mapping[str, pd.DataFrame]) -> HanRuns:
    """Group the finished runs into settings and arms; `histories` is the long frame or `histories_by_run` of it."""
    status = runs["status"] if "status" in runs.columns else pd.Series(None, index=runs.index)
    used = runs[(runs["mlflow_status"] == FINISHED) & (status != schema.STATUS_FAILED)]
    used = used.sort_values([c for c in ("seed", "start_time") if c in used.columns]).set_index("run_id", drop=False)
    shared = [name for name in param_columns(used) if name not in NOT_SETTING]
    settings: dict[tuple, Setting] = {}
    seeds_taken: set[tuple] = set()
    for run_id, row in used.iterrows():
        params = {name: row[name] for name in shared if pd.notna(row[name])}
        unit = str(_value(row, "step_unit", "epoch"))
        task = str(_value(row, "dataset", "?"))
        key = (task, unit, tuple(sorted((name, repr(value)) for name, value in params.items())))
        arm, seed = arm_of(row), str(_value(row, "seed", run_id))
        if (key, arm, seed) in seeds_taken:  # one run per seed and arm: the NCC and the flatness sweep's λ = 0
            continue                         # points train the same unregularised network; the earlier one counts
        seeds_taken.add((key, arm, seed))
        setting = settings.setdefault(key, Setting(task, unit, params))
        setting.arms.setdefault(arm, []).append(str(run_id))
    ordered = sorted(settings.values(), key=lambda s: (not s.grokking, s.task, -sum(map(len, s.arms.values()))))
    return HanRuns(used, histories_by_run(histories), ordered)


# ------------------------------------------------------------------------------------------- readings


curve = finite_series  # a metric's finite values by step/epoch


def final(history: pd.DataFrame, metric: str) -> float:
    """The mean over the last FINAL_SHARE of the metric's evaluations (at least one); NaN without any."""
    values = curve(history, metric)
    if values.empty:
        return math.nan
    return float(values.iloc[-max(1, math.ceil(FINAL_SHARE * len(values))):].mean())


def first_at_least(values: pd.Series, level: float, after: float = -math.inf) -> float:
    """The first step/epoch after `after` at which values ≥ level; NaN if never."""
    hits = values[(values.index > after) & (values >= level)]
    return float(hits.index[0]) if len(hits) else math.nan


def value_at(values: pd.Series, step: float) -> float:
    """The value at the last evaluation at or before `step`."""
    before = values[values.index <= step]
    return float(before.iloc[-1]) if len(before) else math.nan


def rise_step(history: pd.DataFrame, memorised: float) -> float:
    """C2's rise: the first evaluation after memorisation with validation accuracy ≥ its level then + RISE."""
    val = curve(history, VAL_ACC)
    return first_at_least(val, value_at(val, memorised) + RISE, after=memorised)


def reach_step(history: pd.DataFrame, target: float) -> float:
    """C4's reach: the first evaluation with validation accuracy ≥ target; +inf if never."""
    step = first_at_least(curve(history, VAL_ACC), target)
    return math.inf if math.isnan(step) else step


def unplug_gain(history: pd.DataFrame, unplug: float) -> float:
    """C4's jump: the largest validation accuracy in (U, U + W] minus the accuracy at U (W: WINDOW_SHARE of the run)."""
    val = curve(history, VAL_ACC)
    if val.empty:
        return math.nan
    window = val[(val.index > unplug) & (val.index <= unplug + WINDOW_SHARE * float(val.index[-1]))]
    return float(window.max() - value_at(val, unplug)) if len(window) else math.nan


# ------------------------------------------------------------------------------------------- claims


@dataclass(frozen=True)
class HanClaim:
    name: str  # C1 … C4
    claim: str
    task: str
    n: str  # the runs judged
    numbers: str
    verdict: str


CLAIM_TEXT = {
    "C1": "NCC falls during memorisation, before generalisation",
    "C2": "flatness falls when validation accuracy rises, not before",
    "C3": "NCC-regularised networks generalise as well, with higher NCC",
    "C4 later": "flatness-regularised networks generalise later",
    "C4 jump": "validation accuracy jumps after the unplug",
}
TESTS = {
    "C1": "per unregularised grokking run that generalised: step_ncc_drop < step_generalised; holds when every run "
          f"passes, ≥ {MIN_SEEDS} runs.",
    "C2": f"per such run: rise ≤ step_flatness_drop ≤ step_generalised + {SLACK:.0%} of its delay, the rise being the "
          f"first evaluation after step_memorised with validation accuracy ≥ its level there + {RISE * 100:.0f} points; "
          f"holds when every run passes, ≥ {MIN_SEEDS} runs.",
    "C3": f"per NCC arm (λ > 0) against the unregularised runs of its setting: mean final validation accuracy ≥ theirs "
          f"− {ACC_MARGIN * 100:.0f} points and mean final NCC > theirs (final: mean over the last "
          f"{FINAL_SHARE:.0%} of the evaluations).",
    "C4 later": f"per flatness arm (λ > 0): median step/epoch of first reaching the unregularised mean final validation "
                f"accuracy − {ACC_MARGIN * 100:.0f} points later than the unregularised runs' median (never: later "
                "than any).",
    "C4 jump": f"per flatness arm with an unplug U: mean over runs of (max validation accuracy in (U, U + "
               f"{WINDOW_SHARE:.0%} of the run]) − (accuracy at U) ≥ {JUMP * 100:.0f} points, and larger than the "
               "same λ's arm without unplug over the same window where it exists.",
}


def _steps(values: list[float]) -> str:
    return ", ".join("—" if math.isnan(v) else ("never" if math.isinf(v) else f"{v:.0f}") for v in values)


def _pct(value: float) -> str:
    return "—" if math.isnan(value) else f"{100 * value:.1f} %"


def _marker_claim(name: str, han: HanRuns, setting: Setting, passes: Callable[[str], tuple[bool, str]]) -> HanClaim:
    """C1/C2 on one grokking setting's unregularised runs: every judged run must pass, ≥ MIN_SEEDS of them."""
    runs = setting.arms.get(UNREGULARISED, [])
    judged = [run for run in runs if not math.isnan(han.marker(run, "generalised"))]
    results = [passes(run) for run in judged]
    counted = [(ok, text) for ok, text in results if text]
    n = f"{len(counted)} of {len(runs)} runs"
    if len(counted) < MIN_SEEDS:
        missing = f"{len(runs)} finished unregularised run(s), {len(judged)} generalised, {len(counted)} with every " \
                  f"marker; {MIN_SEEDS} needed"
        seen = "; ".join(text for _, text in counted)
        return HanClaim(name, CLAIM_TEXT[name], setting.label, n, missing + (f" ({seen})" if seen else ""), TOO_FEW)
    k = sum(ok for ok, _ in counted)
    numbers = f"{k}/{len(counted)} pass; " + "; ".join(text for _, text in counted)
    return HanClaim(name, CLAIM_TEXT[name], setting.label, n, numbers, HOLDS if k == len(counted) else FAILS)


def claim_ncc_before(han: HanRuns, setting: Setting) -> HanClaim:
    def passes(run: str) -> tuple[bool, str]:
        drop, generalised = han.marker(run, "NCC drop"), han.marker(run, "generalised")
        if math.isnan(han.marker(run, "memorised")):  # no memorisation phase to fall in: not judged
            return False, ""
        if math.isnan(drop):  # a counterexample, not a missing run
            return False, f"NCC never fell to half its level at memorisation (generalised {generalised:.0f})"
        return drop < generalised, f"NCC drop {drop:.0f} vs generalised {generalised:.0f}"

    return _marker_claim("C1", han, setting, passes)


def claim_flatness_with_rise(han: HanRuns, setting: Setting) -> HanClaim:
    def passes(run: str) -> tuple[bool, str]:
        memorised, generalised = han.marker(run, "memorised"), han.marker(run, "generalised")
        drop = han.marker(run, "flatness drop")
        rise = rise_step(han.history(run), memorised) if not math.isnan(memorised) else math.nan
        if math.isnan(rise):  # memorised at an accuracy that leaves no 10-point rise to see: not judged
            return False, ""
        if math.isnan(drop):  # a counterexample, not a missing run
            return False, f"flatness never fell to half its level at memorisation (rise {rise:.0f})"
        latest = generalised + SLACK * (generalised - memorised)
        return rise <= drop <= latest, f"drop {drop:.0f}, window [{rise:.0f}, {latest:.0f}]"

    return _marker_claim("C2", han, setting, passes)


def _finals(han: HanRuns, runs: list[str], metric: str) -> list[float]:
    return [final(han.history(run), metric) for run in runs]


def _too_few_arm(name: str, setting: Setting, arm: Arm, what: str) -> HanClaim:
    return HanClaim(name, CLAIM_TEXT[name], f"{setting.label}, {arm.label(setting.unit)}",
                    str(len(setting.arms.get(arm, []))), what, TOO_FEW)


def claim_ncc_regulariser(han: HanRuns, setting: Setting, arm: Arm) -> HanClaim:
    name, base = "C3", setting.arms.get(UNREGULARISED, [])
    runs = setting.arms[arm]
    if len(base) < MIN_ARM_RUNS:
        return _too_few_arm(name, setting, arm, "no unregularised (λ = 0) run in this setting")
    acc, base_acc = np.mean(_finals(han, runs, VAL_ACC)), np.mean(_finals(han, base, VAL_ACC))
    ncc, base_ncc = np.mean(_finals(han, runs, NCC)), np.mean(_finals(han, base, NCC))
    numbers = (f"val. acc. {_pct(acc)} vs {_pct(base_acc)} ({100 * (acc - base_acc):+.1f} points); "
               f"NCC {ncc:.4g} vs {base_ncc:.4g}")
    holds = acc >= base_acc - ACC_MARGIN and ncc > base_ncc
    return HanClaim(name, CLAIM_TEXT[name], f"{setting.label}, {arm.label(setting.unit)}", f"{len(runs)} vs {len(base)}",
                    numbers, HOLDS if holds else FAILS)


def diverged(han: HanRuns, runs: list[str]) -> str:
    """'' when none of `runs` diverged; else how many did and their reasons (`ncflow.divergence_reason`)."""
    statuses = [str(han.runs.at[run, "status"]) if "status" in han.runs.columns else "" for run in runs]
    gone = [run for run, status in zip(runs, statuses) if status == schema.STATUS_DIVERGED]
    if not gone:
        return ""
    reasons = sorted({str(han.runs.at[run, "divergence_reason"]) for run in gone
                      if "divergence_reason" in han.runs.columns and pd.notna(han.runs.at[run, "divergence_reason"])})
    return f"{len(gone)} of {len(runs)} runs diverged ({'; '.join(reasons) or 'no reason logged'})"


def claim_flatness_later(han: HanRuns, setting: Setting, arm: Arm) -> HanClaim:
    name, base = "C4 later", setting.arms.get(UNREGULARISED, [])
    runs = setting.arms[arm]
    if len(base) < MIN_ARM_RUNS:
        return _too_few_arm(name, setting, arm, "no unregularised (λ = 0) run in this setting")
    lost = diverged(han, runs)
    if lost.startswith(f"{len(runs)} of"):  # a network that diverged never generalises: not "later"
        return HanClaim(name, CLAIM_TEXT[name], f"{setting.label}, {arm.label(setting.unit)}",
                        f"{len(runs)} vs {len(base)}", f"{lost}: the regularised networks never generalised", FAILS)
    target = float(np.mean(_finals(han, base, VAL_ACC))) - ACC_MARGIN
    reach = [reach_step(han.history(run), target) for run in runs]
    base_reach = [reach_step(han.history(run), target) for run in base]
    mine, theirs = float(np.median(reach)), float(np.median(base_reach))
    numbers = f"reach {_pct(target)} at {setting.unit} {_steps(reach)} vs unregularised {_steps(base_reach)}"
    return HanClaim(name, CLAIM_TEXT[name], f"{setting.label}, {arm.label(setting.unit)}", f"{len(runs)} vs {len(base)}",
                    numbers, HOLDS if mine > theirs else FAILS)


def claim_unplug_jump(han: HanRuns, setting: Setting, arm: Arm) -> HanClaim:
    name, runs = "C4 jump", setting.arms[arm]
    lost = diverged(han, runs)
    if lost:  # runs that stopped before the unplug show no jump either way
        reached = [run for run in runs if curve(han.history(run), VAL_ACC).index.max() > arm.unplug]
        if not reached:
            return HanClaim(name, CLAIM_TEXT[name], f"{setting.label}, {arm.label(setting.unit)}", str(len(runs)),
                            f"{lost}, before the unplug at {setting.unit} {arm.unplug}", TOO_FEW)
        runs = reached
    gain = float(np.nanmean([unplug_gain(han.history(run), arm.unplug) for run in runs]))
    numbers = f"gain {100 * gain:+.1f} points after the unplug"
    holds = gain >= JUMP
    kept = setting.arms.get(Arm(arm.reg, arm.reg_lambda, 0), [])
    if kept:
        other = float(np.nanmean([unplug_gain(han.history(run), arm.unplug) for run in kept]))
        numbers += f" vs {100 * other:+.1f} without unplug ({len(kept)} run(s))"
        holds = holds and gain > other
    return HanClaim(name, CLAIM_TEXT[name], f"{setting.label}, {arm.label(setting.unit)}", str(len(runs)), numbers,
                    HOLDS if holds else FAILS)


def evaluate(han: HanRuns) -> list[HanClaim]:
    """Every claim on every task it applies to; "not enough runs" rows name what is missing."""
    found: list[HanClaim] = []
    grokking = [s for s in han.settings if s.grokking and s.arms.get(UNREGULARISED)]
    for setting in grokking:
        found += [claim_ncc_before(han, setting), claim_flatness_with_rise(han, setting)]
    if not grokking:
        found += [HanClaim(c, CLAIM_TEXT[c], GROKKING_TASK, "0", "no finished unregularised grokking run", TOO_FEW)
                  for c in ("C1", "C2")]
    grokking_tasks = sorted({s.task for s in han.settings if s.grokking})
    grokking_label = grokking_tasks[0] if len(grokking_tasks) == 1 else GROKKING_TASK
    kinds = [(grokking_label, lambda s: s.grokking)] + [(task, lambda s, t=task: s.task == t) for task in ENGINE_TASKS]
    kinds += [(s.task, lambda s, t=s.task: s.task == t) for s in han.settings
              if not s.grokking and s.task not in ENGINE_TASKS and (s.reg_arms("ncc") or s.reg_arms("flatness"))]
    for task, belongs in dict(kinds).items():
        settings = [s for s in han.settings if belongs(s)]
        found += _regulariser_claims(han, task, settings)
    return found


def _regulariser_claims(han: HanRuns, task: str, settings: list[Setting]) -> list[HanClaim]:
    """C3 and C4 on one task's settings; a row saying what is missing where it has no such runs."""
    found: list[HanClaim] = []
    ncc = [(s, arm) for s in settings for arm in s.reg_arms("ncc")]
    flat = [(s, arm) for s in settings for arm in s.reg_arms("flatness")]
    found += [claim_ncc_regulariser(han, s, arm) for s, arm in ncc] or \
        [HanClaim("C3", CLAIM_TEXT["C3"], task, "0", "no finished run with reg = ncc, λ > 0", TOO_FEW)]
    found += [claim_flatness_later(han, s, arm) for s, arm in flat] or \
        [HanClaim("C4 later", CLAIM_TEXT["C4 later"], task, "0", "no finished run with reg = flatness, λ > 0", TOO_FEW)]
    found += [claim_unplug_jump(han, s, arm) for s, arm in flat if arm.unplug] or \
        [HanClaim("C4 jump", CLAIM_TEXT["C4 jump"], task, "0", "no finished flatness run with an unplug", TOO_FEW)]
    return found


def claims_table(han: HanRuns) -> Table:
    """The claims table: each claim per task (and arm), its numbers, the runs judged and the verdict."""
    found = evaluate(han)
    frame = pd.DataFrame([{"": c.name, "Claim": c.claim, "Task": c.task, "Runs": c.n, "Numbers": c.numbers,
                           "Verdict": c.verdict} for c in found])
    counts = pd.Series([c.verdict for c in found]).value_counts()
    notes = [", ".join(f"{n} {verdict}" for verdict, n in counts.items()) + f" of {len(found)} rows."]
    notes += [f"{name}: {test}" for name, test in TESTS.items()]
    return Table("Han et al.'s claims tested on these runs.", frame, notes, frame)
