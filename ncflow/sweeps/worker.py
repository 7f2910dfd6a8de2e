"""One sweep worker process: claim a WAITING trial under the sweep lock, train its point, tell the trial its T_NC.

A claim moves the oldest WAITING trial whose point no RUNNING trial holds (and whose prerequisite, for an
intervention point, completed) to RUNNING and records its owner, all under the sweep lock, so two workers never
hold the same point. Before training, the worker looks in MLflow once more: a done point is reused, and a point
with an interrupted run (its worker killed, the machine lost, the run carried from another machine) continues that
run from its last finished epoch instead of starting again (`resume_point`). A worker exits when nothing is left
that could run.

`python -m ncflow.sweeps.worker ARGS_JSON` runs one worker; `ncflow sweep` (`ncflow.sweeps.coordinator`) starts them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, TypeVar

import optuna
from mlflow.tracking import MlflowClient
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from ncflow.engine.config import build_config
from ncflow.grokking.config import GrokConfig, build_grok_config, parse_grok_field
from ncflow.record.liveness import Owner
from ncflow.record.retry import is_database_locked, retried
from ncflow.record.signals import interruption_reason, termination_as_interrupt
from ncflow.sweeps.runs import finished_result, interrupted_run, kill_runs, running_runs, trial_tag, with_retry
from ncflow.sweeps.storage import open_storage, study_trials, sweep_lock, trial_id
from ncflow.sweeps.trial_liveness import Heartbeat, is_stale, record_owner
from ncflow.sweeps.trials import (
    ATTR_FAIL_REASON,
    ATTR_POINT,
    ATTR_REQUIRES,
    ATTR_REUSED,
    ATTR_RUN_ID,
    ATTR_STATUS,
    TASK_GROKKING,
    PointTask,
    objective_value,
    param_distributions,
    result_attrs,
    result_value,
)
from ncshared.mlflow_env import ADOPTED_RUN_VARIABLE
from ncshared.run_config import RunConfig
from ncshared.schema import STATUS_FAILED, TAG_PARENT_RUN, TAG_SWEEP, TAG_TRIAL

Result = TypeVar("Result")
WAIT_S = 1.0  # a worker with only points waiting for a prerequisite looks again this often


@dataclass(frozen=True)
class WorkerArgs:
    """Everything a worker process is told on its command line (as JSON)."""

    storage: str
    studies: list[str]  # claimed in this order (an intervention's Phase-1 study first)
    sweep: str
    parent_run_id: str
    tracking_uri: str
    experiment_id: str
    local: dict[str, str] = field(default_factory=dict)  # machine-local fields: tracking_uri, data_dir, device
    threads: int = 1
    lock_retries: int = 2  # extra attempts at a point whose training met "database is locked"
    pack: str = "1"  # points trained together in one pack (ncflow.engine.pack): a whole number, or `auto`


@dataclass(frozen=True)
class Claim:
    study: str
    trial_id: int
    number: int
    task: PointTask
    init_from: str | None = None  # the prerequisite's MLflow run, for a point that requires one


def requirement(storage: BaseStorage, requires: Mapping[str, str]) -> tuple[str, str | None]:
    """(`met`, run id) when the required point completed; `pending` while it waits or runs; else `unmet`."""
    trials = [t for t in study_trials(storage, requires["study"]) if t.user_attrs.get(ATTR_POINT) == requires["key"]]
    for trial in trials:
        if trial.state == TrialState.COMPLETE and trial.user_attrs.get(ATTR_RUN_ID):
            return "met", str(trial.user_attrs[ATTR_RUN_ID])
    if any(t.state == TrialState.WAITING or (t.state == TrialState.RUNNING and not is_stale(t)) for t in trials):
        return "pending", None
    return "unmet", None


def _take(storage: BaseStorage, study_name: str, trial: FrozenTrial, owner: Owner) -> int | None:
    """Move a WAITING trial to RUNNING for `owner`; its id, or None when another process took it first."""
    taken = trial_id(storage, study_name, trial.number)
    try:
        if not storage.set_trial_state_values(taken, TrialState.RUNNING):
            return None
    except optuna.exceptions.UpdateFinishedTrialError:
        return None
    record_owner(storage, taken, owner)
    return taken


def claim_next(
    storage: BaseStorage, url: str, studies: list[str], owner: Owner, size: int = 1,
    fits: Callable[[Claim, Claim], bool] | None = None,
) -> tuple[list[Claim], bool]:
    """Atomically take the oldest WAITING trial (studies in order) whose point no RUNNING trial holds and whose
    prerequisite, if any, completed — and, up to `size` in all, the next such trials of the same study that
    `fits(first, other)` (can share its pack). Also says whether some trial still waits for a pending prerequisite."""
    pending = False
    for name in studies:
        with sweep_lock(url, name):
            trials = study_trials(storage, name)
            busy = {t.user_attrs.get(ATTR_POINT) for t in trials if t.state == TrialState.RUNNING}
            taken: list[Claim] = []
            for trial in sorted(trials, key=lambda t: t.number):
                key = trial.user_attrs.get(ATTR_POINT)
                if trial.state != TrialState.WAITING or key is None or key in busy:
                    continue
                init_from = None
                if trial.user_attrs.get(ATTR_REQUIRES):
                    state, init_from = requirement(storage, trial.user_attrs[ATTR_REQUIRES])
                    if state != "met":
                        pending = pending or state == "pending"
                        continue
                candidate = Claim(name, -1, trial.number, PointTask.from_attrs(trial.user_attrs), init_from)
                if taken and (fits is None or not fits(taken[0], candidate)):
                    continue
                got = _take(storage, name, trial, owner)
                if got is not None:
                    taken.append(dataclasses.replace(candidate, trial_id=got))
                    busy.add(key)
                    if len(taken) == size:
                        break
            if taken:
                return taken, pending
    return [], pending


def _finish(storage: BaseStorage, claim: Claim, attrs: Mapping[str, Any], state: TrialState, value: float | None) -> None:
    """Record attributes and finish the trial; a trial another invocation already failed stays failed."""
    with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
        for key, item in attrs.items():
            storage.set_trial_user_attr(claim.trial_id, key, item)
        storage.set_trial_state_values(claim.trial_id, state, None if value is None else [value])


def _record_params(storage: BaseStorage, claim: Claim) -> None:
    """Write the fixed params into the trial, so it shows them (distributions from the fields' types)."""
    for name, distribution in param_distributions(claim.task.params).items():
        internal = distribution.to_internal_repr(claim.task.params[name])
        storage.set_trial_param(claim.trial_id, name, internal, distribution)


def config_of(args: WorkerArgs, claim: Claim) -> RunConfig:
    """The claimed point's RunConfig on this machine (and its Phase-1 source, for an intervention point)."""
    start = {"init_from": claim.init_from} if claim.init_from else {}
    return build_config(None, {**claim.task.config, **args.local, **start})


def grok_config_of(claim: Claim) -> GrokConfig:
    """A grokking point's GrokConfig, from the params its trial carries."""
    return build_grok_config(**{name: parse_grok_field(name, value) for name, value in claim.task.config.items()})


def train_grokking_point(args: WorkerArgs, claim: Claim) -> tuple[dict[str, Any], float]:
    """Train a grokking point (`ncflow.grokking.train`) as the sweep's child run; its result attrs and value."""
    from ncflow.engine.run_setup import resolve_device
    from ncflow.grokking.train import train_grokking

    config = grok_config_of(claim)
    experiment = MlflowClient(tracking_uri=args.tracking_uri).get_experiment(args.experiment_id).name
    tags = {TAG_SWEEP: args.sweep, TAG_PARENT_RUN: args.parent_run_id, TAG_TRIAL: trial_tag(claim.study, claim.number)}
    device = str(resolve_device(args.local.get("device", "auto")))
    monitor = train_grokking(config, args.tracking_uri, experiment, device, tags=tags)
    detector = monitor.detector
    attrs = result_attrs(str(monitor.run_id), detector.status, detector.t_nc, detector.fn_star)
    return attrs, objective_value(detector.status, detector.t_nc, config.steps)


def retried_while_locked(args: WorkerArgs, call: Callable[[], Result]) -> Result:
    """`call()`, tried again after 1 s, 2 s, … (`args.lock_retries` times) while the SQLite store is locked."""
    delays = [1.0 + k for k in range(args.lock_retries)]
    return retried(call, when=is_database_locked, delays=delays, attempts=args.lock_retries + 1)


def train_point(args: WorkerArgs, claim: Claim) -> tuple[dict[str, Any], float]:
    """Train the claimed point (retrying a point the SQLite store locked out); its result attrs and value."""
    from ncflow.tracked.train import train

    if claim.task.task == TASK_GROKKING:
        return train_grokking_point(args, claim)
    config = config_of(args, claim)
    result = retried_while_locked(
        args,
        lambda: train(
            config,
            sweep=args.sweep,
            parent_run_id=args.parent_run_id,
            extra_tags={TAG_TRIAL: trial_tag(claim.study, claim.number)},
            progress=False,
            ship_timeout_s=None,  # a point is done only once MLflow has all of it: wait out an outage
        ),
    )
    attrs = result_attrs(result.run_id, result.status, result.t_nc, result.fn_star)
    return attrs, objective_value(result.status, result.t_nc, config.total_epochs)


def reused(storage: BaseStorage, args: WorkerArgs, claim: Claim, client: MlflowClient) -> bool:
    """Record the trial's params; finish it from MLflow's FINISHED run of its point when there is one."""
    _record_params(storage, claim)
    done = finished_result(client, args.experiment_id, claim.task.condition, int(claim.task.params["seed"]))
    if done is not None:
        _finish(storage, claim, {**done, ATTR_REUSED: True}, TrialState.COMPLETE, result_value(claim.task, done))
    return done is not None


def fail_claims(storage: BaseStorage, args: WorkerArgs, claims: list[Claim], client: MlflowClient,
                error: BaseException) -> None:
    """FAIL the trials (retried next invocation) and end any of their runs still RUNNING; re-raise an interrupt."""
    interrupted = isinstance(error, KeyboardInterrupt)
    reason = (interruption_reason(error) if interrupted else f"{type(error).__name__}: {error}")[:2000]
    for claim in claims:
        _finish(storage, claim, {ATTR_STATUS: STATUS_FAILED, ATTR_FAIL_REASON: reason}, TrialState.FAIL, None)
        with contextlib.suppress(Exception):  # train ends its run itself; this covers an interrupt inside MLflow
            kill_runs(client, running_runs(client, args.experiment_id, claim.study, claim.number), reason)
    if not isinstance(error, Exception):
        raise error
    for claim in claims:
        print(f"ncflow sweep: trial {claim.number} ({claim.task.key}) failed: {reason}", file=sys.stderr)


def evaluate(storage: BaseStorage, args: WorkerArgs, claims: list[Claim], client: MlflowClient) -> None:
    """Reuse the points MLflow already finished, continue the interrupted ones, train the others (one pack when
    several); a crash fails the trials not finished yet (retried next invocation)."""
    with contextlib.ExitStack() as beating:
        for claim in claims:
            beating.enter_context(Heartbeat(storage, claim.trial_id))
        todo: list[Claim] = []
        try:
            todo = [claim for claim in claims if not reused(storage, args, claim, client)]
            for claim in list(todo):
                run = interrupted_point_run(args, claim, client)
                if run is not None:
                    attrs, value = resume_point(args, claim, run, client)
                    _finish(storage, claim, {**attrs, ATTR_REUSED: False}, TrialState.COMPLETE, value)
                    todo.remove(claim)
            if len(todo) == 1:
                attrs, value = train_point(args, todo[0])
                _finish(storage, todo[0], {**attrs, ATTR_REUSED: False}, TrialState.COMPLETE, value)
            elif todo:
                train_claims_packed(storage, args, todo)
        except BaseException as error:
            fail_claims(storage, args, todo or claims, client, error)


def interrupted_point_run(args: WorkerArgs, claim: Claim, client: MlflowClient) -> Any | None:
    """The engine point's resumable interrupted run in the sweep's experiment (`ncflow.sweeps.runs.interrupted_run`)."""
    if claim.task.task == TASK_GROKKING:  # a grokking point continues its own run (`ncflow.grokking.train`)
        return None
    return interrupted_run(client, args.experiment_id, claim.task.condition, int(claim.task.params["seed"]))


def resume_point(args: WorkerArgs, claim: Claim, run: Any, client: MlflowClient) -> tuple[dict[str, Any], float]:
    """Continue the point's interrupted run (`ncflow.tracked.resume`) as this trial's child run: it is tagged with
    this sweep's parent and trial first, so the trial's run is found (and ended) like a new one."""
    from ncflow.tracked import mlflow_run
    from ncflow.tracked.resume import resume

    run_id = run.info.run_id
    tags = {TAG_SWEEP: args.sweep, TAG_PARENT_RUN: args.parent_run_id, TAG_TRIAL: trial_tag(claim.study, claim.number)}
    with_retry(mlflow_run.set_tags, client, run_id, tags)
    print(f"ncflow sweep: trial {claim.number} ({claim.task.key}) continues its interrupted run {run_id}",
          file=sys.stderr, flush=True)
    result = retried_while_locked(
        args, lambda: resume(run_id, tracking_uri=args.tracking_uri, progress=False, ship_timeout_s=None))
    attrs = result_attrs(result.run_id, result.status, result.t_nc, result.fn_star)
    return attrs, objective_value(result.status, result.t_nc, config_of(args, claim).total_epochs)


def train_claims_packed(storage: BaseStorage, args: WorkerArgs, claims: list[Claim]) -> None:
    """Train the claimed points as one pack (ncflow.tracked.pack_train), one MLflow run each; finish each trial."""
    from ncflow.tracked.pack_train import train_pack

    configs = [config_of(args, claim) for claim in claims]
    results = train_pack(
        configs, sweep=args.sweep, parent_run_id=args.parent_run_id,
        extra_tags=[{TAG_TRIAL: trial_tag(claim.study, claim.number)} for claim in claims],
        progress=False, ship_timeout_s=None,
    )
    for claim, config, result in zip(claims, configs, results):
        attrs = result_attrs(result.run_id, result.status, result.t_nc, result.fn_star)
        value = objective_value(result.status, result.t_nc, config.total_epochs)
        _finish(storage, claim, {**attrs, ATTR_REUSED: False}, TrialState.COMPLETE, value)


def pack_size(args: WorkerArgs) -> int:
    """`--pack`: a number as given; `auto` by the device (ncflow.engine.pack.auto_pack_size)."""
    if args.pack != "auto":
        return int(args.pack)
    from ncflow.engine.pack import auto_pack_size
    from ncflow.engine.run_setup import resolve_device

    return auto_pack_size(resolve_device(args.local.get("device", "auto")))


def packable(args: WorkerArgs) -> Callable[[Claim, Claim], bool]:
    """Whether two claimed points can share a pack (`ncflow.engine.pack.pack_key`)."""
    from ncflow.engine.pack import pack_key

    def fits(first: Claim, other: Claim) -> bool:
        if TASK_GROKKING in (first.task.task, other.task.task):  # a grokking run trains alone
            return False
        return pack_key(config_of(args, first)) == pack_key(config_of(args, other))

    return fits


def run_worker(args: WorkerArgs) -> int:
    """Claim and evaluate points until none is left that could run; 130 when interrupted (its trial is failed).

    SIGTERM and SIGHUP unwind like Ctrl-C, so the current run ends KILLED and its trial FAIL.
    """
    os.environ.pop(ADOPTED_RUN_VARIABLE, None)  # train would adopt the parent run as its own
    import torch

    torch.set_num_threads(max(1, args.threads))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(args.storage)
    client = MlflowClient(tracking_uri=args.tracking_uri)
    owner = Owner.this_process()
    size, fits = pack_size(args), packable(args)
    try:
        with termination_as_interrupt():
            while True:
                claims, pending = claim_next(storage, args.storage, args.studies, owner, size, fits)
                if claims:
                    evaluate(storage, args, claims, client)
                elif pending:
                    time.sleep(WAIT_S)
                else:
                    break
    except KeyboardInterrupt:
        return 130
    return 0


def main(argv: list[str] | None = None) -> int:
    raw = json.loads((argv if argv is not None else sys.argv[1:])[0])
    return run_worker(WorkerArgs(**raw))


if __name__ == "__main__":
    sys.exit(main())
