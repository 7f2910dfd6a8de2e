"""The plan of a sweep: each grid point's state, read from MLflow and the sweep's Optuna studies.

A point is done when MLflow holds a FINISHED run of it (`ncflow.sweeps.runs.finished_result`), whatever made it;
else running when a live worker holds one of its trials; else failed when its last attempt failed; else todo.
`ncflow sweep --dry-run` prints the plan (`render_plan`); the parent logs the counts while workers run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from mlflow.tracking import MlflowClient
from optuna.trial import FrozenTrial, TrialState

from ncflow.sweeps.grids import MAIN, PHASE1, GridPoint, Sweep, stages, study_name
from ncflow.sweeps.runs import finished_result
from ncflow.sweeps.storage import existing_trials
from ncflow.sweeps.trial_liveness import is_stale
from ncflow.sweeps.trials import ATTR_FAIL_REASON, ATTR_POINT, ATTR_RUN_ID

DONE, RUNNING, FAILED, TODO = "done", "running", "failed", "todo"
POINT_STATUSES = (DONE, RUNNING, FAILED, TODO)
TRIAL_STATUS = {TrialState.COMPLETE: DONE, TrialState.RUNNING: RUNNING, TrialState.FAIL: FAILED, TrialState.WAITING: TODO}


@dataclass
class PointState:
    point: GridPoint
    status: str  # one of POINT_STATUSES
    result: dict[str, Any] = field(default_factory=dict)  # trial user attributes of the finished run
    trial: int | None = None
    init_from: str | None = None  # an intervention point's Phase-1 run


def point_trials(trials: list[FrozenTrial], point: GridPoint) -> list[FrozenTrial]:
    """The point's trials, oldest first."""
    return sorted((t for t in trials if t.user_attrs.get(ATTR_POINT) == point.key), key=lambda t: t.number)


def point_state(point: GridPoint, trials: list[FrozenTrial], client: MlflowClient, experiment_id: str | None) -> PointState:
    """Done (FINISHED run in MLflow) › running (a live RUNNING trial) › failed (last attempt failed) › todo."""
    done = finished_result(client, experiment_id, point.condition, point.seed) if experiment_id else None
    mine = point_trials(trials, point)
    last = mine[-1].number if mine else None
    if done is not None:
        return PointState(point, DONE, done, last)
    if any(t.state == TrialState.RUNNING and not is_stale(t) for t in mine):
        return PointState(point, RUNNING, trial=last)
    finished = [t for t in mine if t.state != TrialState.WAITING]
    if finished and finished[-1].state in (TrialState.FAIL, TrialState.RUNNING):
        return PointState(point, FAILED, {ATTR_FAIL_REASON: finished[-1].user_attrs.get(ATTR_FAIL_REASON, "")}, last)
    return PointState(point, TODO, trial=last)


def plan(sweep: Sweep, points: list[GridPoint], storage_url: str, client: MlflowClient, experiment_id: str | None) -> list[PointState]:
    """Each point's state; an intervention point also gets its seed's Phase-1 run, once that is done."""
    trials = {stage: existing_trials(storage_url, study_name(sweep, stage)) for stage in {p.stage for p in points}}
    states = [point_state(p, trials[p.stage], client, experiment_id) for p in points]
    phase1_runs = {s.point.seed: s.result[ATTR_RUN_ID] for s in states if s.point.stage == PHASE1 and s.status == DONE}
    for state in states:
        if sweep.chain_phase1 and state.point.stage == MAIN:
            state.init_from = phase1_runs.get(state.point.seed)
    return states


def latest_states(states: list[PointState], latest: Mapping[str, TrialState]) -> list[PointState]:
    """A cheap refresh of a plan while workers run: a point not done takes the state of its latest trial
    (`latest`: point key → state), so a point whose latest trial completed counts as done."""
    return [
        PointState(s.point, s.status if s.status == DONE else TRIAL_STATUS.get(latest.get(s.point.key), s.status))
        for s in states
    ]


def render_plan(sweep: Sweep, states: list[PointState], storage_url: str, tracking_uri: str, experiment: str) -> str:
    """The dry-run table: every point, its varying params and seed, and its state."""
    lines = [
        f"sweep {sweep.name}: {len(states)} points; study {', '.join(study_name(sweep, s) for s in stages(sweep))} in {storage_url}; "
        f"MLflow {tracking_uri}, experiment {experiment}",
        f"{'stage':<7} {'params':<38} {'seed':>4}  {'status':<8} run",
    ]
    for state in states:
        run = state.result.get(ATTR_RUN_ID, "")
        note = ""
        if state.point.stage == MAIN and sweep.chain_phase1:
            note = f"(init_from {state.init_from or 'the Phase-1 run of seed ' + str(state.point.seed)})"
        lines.append(f"{state.point.stage:<7} {state.point.label():<38} {state.point.seed:>4}  {state.status:<8} {run} {note}".rstrip())
    lines.append(counts_line(states))
    return "\n".join(lines)


def counts(states: list[PointState]) -> dict[str, int]:
    """How many points are in each status, in POINT_STATUSES order."""
    tally = dict.fromkeys(POINT_STATUSES, 0)
    for state in states:
        tally[state.status] += 1
    return tally


def counts_line(states: list[PointState]) -> str:
    """`12 points: 3 done, 0 running, 0 failed, 9 todo`."""
    return f"{len(states)} points: " + ", ".join(f"{n} {status}" for status, n in counts(states).items())
