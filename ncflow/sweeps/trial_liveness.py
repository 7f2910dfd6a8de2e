"""Whether the worker that claimed a RUNNING trial is still alive, and failing the trials of those that are not.

A claim writes the trial's owner (host, boot id, pid, process start time) and a heartbeat that a thread of the
worker refreshes every TRIAL_HEARTBEAT_EVERY_S. A RUNNING trial is stale when its owner is gone: a local owner
whose process no longer exists (or is a zombie, or is another process with a recycled pid; `ncflow.record.liveness`
tells), an owner on another host whose heartbeat is older than TRIAL_STALE_AFTER_S, or no owner at all (its
claimer died inside the sweep lock). Stale trials are failed under the sweep lock (`fail_stale_trials`), so their
points are enqueued again, and every RUNNING MLflow run of a trial that no longer runs is ended KILLED.

One mechanism serves every storage. Optuna's own heartbeat is no substitute (checked in the installed Optuna 5.0.0):
- `JournalStorage` (optuna/storages/journal/_storage.py) derives from `BaseStorage` only, not from
  `optuna.storages._heartbeat.BaseHeartbeat`, and has no heartbeat at all: the journal file, the default
  storage, needs its own.
- `RDBStorage(heartbeat_interval=…)` (PostgreSQL) keeps a heartbeat table, but its docstring says it "is supposed
  to be used with Study.optimize ... If you use ask and tell instead, it will not work"; sweep workers claim
  enqueued trials under the sweep lock, not through `optimize`, and `Study.ask` warns when it is enabled.
- `optuna.storages.fail_stale_trials(study)` fails a trial only after `grace_period` (default twice the interval)
  without a heartbeat, and `RDBStorage._get_stale_trial_ids` skips a RUNNING trial that has no heartbeat row yet
  (tried: such a trial stays RUNNING for ever). A worker killed between its claim and its first beat would hold
  its point for ever, and a worker killed on this host would hold it for the grace period, where the pid check
  frees it at once (the parent fails a dead worker's trial as soon as the worker exits, and a relaunch right after
  a kill trains exactly the missing points). It also records no fail reason.
What Optuna's table would add is the database server's clock for cross-host staleness; here the owner's heartbeat
is compared with this host's clock, so keep the machines' clocks in sync (NTP).
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time

import optuna
from mlflow.tracking import MlflowClient
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from ncflow.record.liveness import TRIAL_HEARTBEAT_EVERY_S, TRIAL_STALE_AFTER_S, Owner
from ncflow.sweeps.runs import kill_runs, running_runs, tagged_trial
from ncflow.sweeps.storage import study_trials, trial_id
from ncflow.sweeps.trials import ATTR_FAIL_REASON, ATTR_HEARTBEAT, ATTR_OWNER, ATTR_POINT, ATTR_STATUS
from ncshared.schema import STATUS_FAILED

STALE_REASON = "worker lost: its process ended without reporting (killed or crashed)"


def record_owner(storage: BaseStorage, trial: int, owner: Owner) -> None:
    """Mark a just-claimed trial (storage id `trial`) as held by `owner`, with a first heartbeat."""
    storage.set_trial_user_attr(trial, ATTR_OWNER, dataclasses.asdict(owner))
    storage.set_trial_user_attr(trial, ATTR_HEARTBEAT, time.time())


class Heartbeat:
    """Refreshes a claimed trial's heartbeat from a daemon thread until stopped."""

    def __init__(self, storage: BaseStorage, trial: int, interval_s: float = TRIAL_HEARTBEAT_EVERY_S) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, args=(storage, trial, interval_s), daemon=True)

    def _beat(self, storage: BaseStorage, trial: int, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            with contextlib.suppress(Exception):  # a finished trial or a busy store: the next beat tries again
                storage.set_trial_user_attr(trial, ATTR_HEARTBEAT, time.time())

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def is_stale(trial: FrozenTrial, now: float | None = None) -> bool:
    """A RUNNING ncflow trial whose owner is gone: dead here, silent elsewhere, or never recorded.

    A claim writes the owner under the sweep lock, so a trial seen under the lock without one lost its claimer.
    """
    if trial.state != TrialState.RUNNING or ATTR_POINT not in trial.user_attrs:
        return False
    owner = Owner.from_mapping(trial.user_attrs.get(ATTR_OWNER))
    if owner is None:
        return True
    if owner.is_local():
        return not owner.is_alive()
    heartbeat = float(trial.user_attrs.get(ATTR_HEARTBEAT, 0.0))
    return (now if now is not None else time.time()) - heartbeat > TRIAL_STALE_AFTER_S


def fail_stale_trials(storage: BaseStorage, study_name: str, client: MlflowClient, experiment_id: str) -> list[int]:
    """Under the sweep lock: fail abandoned RUNNING trials, and kill every RUNNING MLflow run of a trial that is
    no longer running (its worker died, or was interrupted before it could end the run); the failed numbers."""
    failed = []
    now = time.time()
    trials = study_trials(storage, study_name)
    for trial in trials:
        if not is_stale(trial, now):
            continue
        stale = trial_id(storage, study_name, trial.number)
        with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
            storage.set_trial_user_attr(stale, ATTR_FAIL_REASON, STALE_REASON)
            storage.set_trial_user_attr(stale, ATTR_STATUS, STATUS_FAILED)
            storage.set_trial_state_values(stale, TrialState.FAIL)
            failed.append(trial.number)
    live = {t.number for t in trials if t.state == TrialState.RUNNING and t.number not in failed}
    orphans = [run for run in running_runs(client, experiment_id, study_name) if tagged_trial(run) not in live]
    kill_runs(client, orphans, STALE_REASON)
    return failed
