"""The shared side of a sweep: its Optuna storage and lock, trial ownership, and the worker process.

A sweep's to-do points are enqueued trials of the Optuna study `ncflow-NAME`, every parameter fixed. A worker
claims a WAITING trial under the sweep lock (a file lock beside a journal or SQLite storage, a PostgreSQL advisory
lock for a PostgreSQL storage), so two workers never hold the same point, trains it, and tells the trial its T_NC.
A claimed trial carries its owner (host, boot, pid, process start time) and a heartbeat; a RUNNING trial whose owner
is gone is failed by the next invocation (`fail_stale_trials`) and its point is retried.

`python -m ncflow.sweep_workers ARGS_JSON` runs one worker; `ncflow sweep` starts them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, TypeVar

import optuna
from mlflow.tracking import MlflowClient
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from ncflow import config as config_module
from ncflow.config import ConfigError, build_config

DEFAULT_STORAGE = "optuna.journal"  # a JournalFileBackend file in the working directory
HEARTBEAT_S = 30.0  # a worker refreshes its trial's heartbeat this often
STALE_AFTER_S = 300.0  # a RUNNING trial of another host with an older heartbeat counts as abandoned
STALE_REASON = "worker lost: its process ended without reporting (killed or crashed)"
LOCK_RETRIES = 8  # attempts at an MLflow call that met "database is locked"

ATTR_POINT = "ncflow_point"  # the point's identity: `<condition hash>-s<seed>`
ATTR_STAGE = "ncflow_stage"  # main | phase1
ATTR_PARAMS = "ncflow_params"  # the dims that vary and the seed, as values
ATTR_CONFIG = "ncflow_config"  # every RunConfig field as MLflow logs it
ATTR_OWNER = "ncflow_owner"  # the claiming process
ATTR_HEARTBEAT = "ncflow_heartbeat"  # unix time of the owner's last heartbeat
ATTR_RUN_ID = "mlflow_run_id"
ATTR_STATUS = "status"  # collapsed | not_collapsed | diverged (COMPLETE) or failed (FAIL)
ATTR_FN_STAR = "fn_star"
ATTR_T_NC = "t_nc"
ATTR_CENSORED = "censored"  # true when the run never collapsed: the value is total epochs + 1
ATTR_REUSED = "reused"  # true when the point was already finished in MLflow and nothing was trained
ATTR_FAIL_REASON = "fail_reason"
ATTR_PARENT = "mlflow_parent_run_id"  # the sweep parent of the run that holds the result
ATTR_REQUIRES = "ncflow_requires"  # {study, key}: the point whose run this point starts from (init_from)
WAIT_S = 1.0  # a worker with only points waiting for a prerequisite looks again this often
TAG_TRIAL = "ncflow.trial"  # on a child run: `<study>#<trial number>`, so an orphaned run is found

ENUMERATED_FIELDS: dict[str, tuple[str, ...]] = {
    "dataset": config_module.DATASETS,
    "arch": config_module.ARCHS,
    "activation": config_module.ACTIVATIONS,
    "optimizer": config_module.OPTIMIZERS,
    "schedule": config_module.SCHEDULES,
    "protocol": config_module.PROTOCOLS,
    "device": config_module.DEVICES,
    "preset": tuple(config_module.PRESETS),
}
FIELD_TYPES = {f.name: f.type for f in dataclasses.fields(config_module.RunConfig)}
Result = TypeVar("Result")


# ---------------------------------------------------------------- storage and lock


def storage_url(raw: str | None) -> str:
    """Normalise `--storage`: a file path (journal), `sqlite:///…`, or `postgresql://…` (psycopg2 driver)."""
    text = (raw or "").strip()
    if text in ("", "default", "none"):
        text = DEFAULT_STORAGE
    for bare in ("postgresql://", "postgres://"):
        if text.startswith(bare):  # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3; ncflow ships psycopg2
            return "postgresql+psycopg2://" + text[len(bare) :]
    if "://" in text:
        return text
    return str(Path(text).expanduser().resolve())


def storage_kind(url: str) -> str:
    """`journal`, `sqlite` or `postgresql`; anything else is refused with one line."""
    if "://" not in url:
        return "journal"
    scheme = url.split("://", 1)[0]
    if scheme == "sqlite":
        return "sqlite"
    if scheme.startswith("postgresql"):
        return "postgresql"
    raise ConfigError(f"storage: {scheme}:// is not supported; use a journal file path, sqlite:/// or postgresql://")


def open_storage(url: str) -> BaseStorage:
    """The Optuna storage behind a normalised URL."""
    kind = storage_kind(url)
    if kind == "journal":
        Path(url).parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(url))
    return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True} if kind == "postgresql" else {})


def _lock_key(name: str) -> int:
    """A signed 64-bit key for pg_advisory_lock, stable across processes."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


def _sqlite_path(url: str) -> Path:
    return Path(url.split("sqlite:///", 1)[1].split("?", 1)[0]).resolve()


@contextlib.contextmanager
def sweep_lock(url: str, name: str) -> Iterator[None]:
    """Mutual exclusion between every process working on study `name`, on this machine or (PostgreSQL) any."""
    kind = storage_kind(url)
    if kind == "postgresql":
        import sqlalchemy

        engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
        try:
            with engine.connect() as connection:
                connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": _lock_key(name)})
                try:
                    yield
                finally:
                    connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": _lock_key(name)})
        finally:
            engine.dispose()
        return
    base = Path(url) if kind == "journal" else _sqlite_path(url)
    lock_path = base.with_name(f"{base.name}.{hashlib.sha256(name.encode()).hexdigest()[:8]}.lock")
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def with_retry(call: Callable[..., Result], *args: Any, **kwargs: Any) -> Result:
    """Call an MLflow function, retrying while a shared SQLite store answers "database is locked"."""
    for attempt in range(LOCK_RETRIES):
        try:
            return call(*args, **kwargs)
        except Exception as error:  # MlflowException or SQLAlchemy OperationalError, depending on the call
            if "database is locked" not in str(error) or attempt == LOCK_RETRIES - 1:
                raise
            time.sleep(0.25 * 2**attempt)
    raise AssertionError("unreachable")


# ---------------------------------------------------------------- owners, liveness, staleness


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state, start time in clock ticks) of a Linux process, or None when it does not exist."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    after_name = text.rsplit(")", 1)[1].split()
    return after_name[0], after_name[19]


def _boot_id() -> str:
    with contextlib.suppress(OSError):
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    return "unknown"


@dataclass(frozen=True)
class Owner:
    """The process that claimed a trial; `started` guards against a recycled pid."""

    host: str
    boot: str
    pid: int
    started: str

    @classmethod
    def this_process(cls) -> "Owner":
        stat = _proc_stat(os.getpid())
        return cls(socket.gethostname(), _boot_id(), os.getpid(), stat[1] if stat else "unknown")

    @classmethod
    def from_attr(cls, value: Any) -> "Owner | None":
        with contextlib.suppress(TypeError, KeyError, ValueError):
            return cls(str(value["host"]), str(value["boot"]), int(value["pid"]), str(value["started"]))
        return None

    def is_local(self) -> bool:
        return self.host == socket.gethostname() and self.boot == _boot_id()

    def is_alive(self) -> bool:
        """Whether a local owner still runs (a zombie counts as dead)."""
        stat = _proc_stat(self.pid)
        if stat is None:
            if not Path("/proc").exists():  # no procfs: fall back to signal 0
                try:
                    os.kill(self.pid, 0)
                except ProcessLookupError:
                    return False
                return True
            return False
        state, started = stat
        return state not in ("Z", "X") and (self.started == "unknown" or started == self.started)


def is_stale(trial: FrozenTrial, now: float | None = None) -> bool:
    """A RUNNING ncflow trial whose owner is gone: dead here, silent elsewhere, or never recorded.

    A claim writes the owner under the sweep lock, so a trial seen under the lock without one lost its claimer.
    """
    if trial.state != TrialState.RUNNING or ATTR_POINT not in trial.user_attrs:
        return False
    owner = Owner.from_attr(trial.user_attrs.get(ATTR_OWNER))
    if owner is None:
        return True
    if owner.is_local():
        return not owner.is_alive()
    heartbeat = float(trial.user_attrs.get(ATTR_HEARTBEAT, 0.0))
    return (now if now is not None else time.time()) - heartbeat > STALE_AFTER_S


def study_trials(storage: BaseStorage, study_name: str) -> list[FrozenTrial]:
    """Every trial of a study (none when the study does not exist yet)."""
    try:
        study_id = storage.get_study_id_from_name(study_name)
    except KeyError:
        return []
    return storage.get_all_trials(study_id, deepcopy=False)


def _trial_id(storage: BaseStorage, study_name: str, number: int) -> int:
    return storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study_name), number)


def kill_runs(client: MlflowClient, runs: Iterable[Any], reason: str) -> None:
    """End RUNNING MLflow runs whose worker is gone as KILLED, with `ncflow.status=failed` and the reason."""
    from ncflow import tracking

    for run in runs:
        tags = {tracking.TAG_STATUS: "failed", tracking.TAG_FAIL_REASON: reason}
        with_retry(tracking.set_tags, client, run.info.run_id, tags)
        with_retry(client.set_terminated, run.info.run_id, "KILLED")


def running_runs(client: MlflowClient, experiment_id: str, study_name: str, number: int | None = None) -> list[Any]:
    """RUNNING MLflow runs started by the study's trials (one trial's when `number` is given)."""
    trial = f"= '{study_name}#{number}'" if number is not None else f"LIKE '{study_name}#%'"
    return with_retry(
        client.search_runs,
        [experiment_id],
        filter_string=f"tags.`{TAG_TRIAL}` {trial} and attributes.status = 'RUNNING'",
        max_results=1000,
    )


def fail_stale_trials(storage: BaseStorage, study_name: str, client: MlflowClient, experiment_id: str) -> list[int]:
    """Under the sweep lock: fail abandoned RUNNING trials, and kill every RUNNING MLflow run of a trial that is
    no longer running (its worker died, or was interrupted before it could end the run); the failed numbers."""
    failed = []
    now = time.time()
    trials = study_trials(storage, study_name)
    for trial in trials:
        if not is_stale(trial, now):
            continue
        trial_id = _trial_id(storage, study_name, trial.number)
        with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
            storage.set_trial_user_attr(trial_id, ATTR_FAIL_REASON, STALE_REASON)
            storage.set_trial_user_attr(trial_id, ATTR_STATUS, "failed")
            storage.set_trial_state_values(trial_id, TrialState.FAIL)
            failed.append(trial.number)
    live = {t.number for t in trials if t.state == TrialState.RUNNING and t.number not in failed}
    orphans = [r for r in running_runs(client, experiment_id, study_name) if int(r.data.tags[TAG_TRIAL].rsplit("#", 1)[1]) not in live]
    kill_runs(client, orphans, STALE_REASON)
    return failed


# ---------------------------------------------------------------- enqueue, claim, tell


def param_distributions(params: Mapping[str, Any]) -> dict[str, BaseDistribution]:
    """Distributions from each field's type, not from the grid, so later grids never clash in one study.

    Free-form string and list fields have no stable distribution; they stay in the user attribute only.
    """
    distributions: dict[str, BaseDistribution] = {}
    for name in params:
        kind = FIELD_TYPES.get(name, "str")
        if kind == "int":
            distributions[name] = IntDistribution(0, 2**31 - 1)
        elif kind == "float":
            distributions[name] = FloatDistribution(0.0, 1e12)
        elif kind == "bool":
            distributions[name] = CategoricalDistribution((False, True))
        elif name in ENUMERATED_FIELDS:
            distributions[name] = CategoricalDistribution(ENUMERATED_FIELDS[name])
    return distributions


@dataclass(frozen=True)
class PointTask:
    """What a trial must know to train a point without the sweep definition."""

    key: str
    stage: str
    params: dict[str, Any]  # the varying dims and the seed
    config: dict[str, str]  # RunConfig.as_params()
    requires: dict[str, str] | None = None  # {study, key} of the point whose run becomes init_from

    @property
    def condition(self) -> str:
        """The `ncflow.condition` hash: the key without its `-s<seed>` suffix."""
        return self.key.rsplit("-s", 1)[0]

    def user_attrs(self) -> dict[str, Any]:
        attrs = {ATTR_POINT: self.key, ATTR_STAGE: self.stage, ATTR_PARAMS: self.params, ATTR_CONFIG: self.config}
        return {**attrs, ATTR_REQUIRES: self.requires} if self.requires else attrs

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> "PointTask":
        requires = attrs.get(ATTR_REQUIRES)
        return cls(attrs[ATTR_POINT], attrs[ATTR_STAGE], dict(attrs[ATTR_PARAMS]), dict(attrs[ATTR_CONFIG]), requires)


def enqueue(study: optuna.Study, task: PointTask) -> None:
    """One WAITING trial for the point, every parameter fixed."""
    study.enqueue_trial(dict(task.params), user_attrs=task.user_attrs())


def record_reused(study: optuna.Study, task: PointTask, result: Mapping[str, Any], value: float) -> None:
    """A COMPLETE trial for a point MLflow already holds finished (nothing trained)."""
    distributions = param_distributions(task.params)
    trial = optuna.trial.create_trial(
        params={name: task.params[name] for name in distributions},
        distributions=distributions,
        value=value,
        user_attrs={**task.user_attrs(), **result, ATTR_REUSED: True},
    )
    study.add_trial(trial)


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
    trial_id = _trial_id(storage, study_name, trial.number)
    try:
        if not storage.set_trial_state_values(trial_id, TrialState.RUNNING):
            return None
    except optuna.exceptions.UpdateFinishedTrialError:
        return None
    storage.set_trial_user_attr(trial_id, ATTR_OWNER, dataclasses.asdict(owner))
    storage.set_trial_user_attr(trial_id, ATTR_HEARTBEAT, time.time())
    return trial_id


def claim_next(storage: BaseStorage, url: str, studies: list[str], owner: Owner) -> tuple[Claim | None, bool]:
    """Atomically take the oldest WAITING trial (studies in order) whose point no RUNNING trial holds and whose
    prerequisite, if any, completed. Also says whether some trial still waits for a pending prerequisite."""
    pending = False
    for name in studies:
        with sweep_lock(url, name):
            trials = study_trials(storage, name)
            busy = {t.user_attrs.get(ATTR_POINT) for t in trials if t.state == TrialState.RUNNING}
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
                trial_id = _take(storage, name, trial, owner)
                if trial_id is not None:
                    return Claim(name, trial_id, trial.number, PointTask.from_attrs(trial.user_attrs), init_from), pending
    return None, pending


class Heartbeat:
    """Refreshes a claimed trial's heartbeat from a daemon thread until stopped."""

    def __init__(self, storage: BaseStorage, trial_id: int, interval_s: float = HEARTBEAT_S) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, args=(storage, trial_id, interval_s), daemon=True)

    def _beat(self, storage: BaseStorage, trial_id: int, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            with contextlib.suppress(Exception):  # a finished trial or a busy store: the next beat tries again
                storage.set_trial_user_attr(trial_id, ATTR_HEARTBEAT, time.time())

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def objective_value(status: str, t_nc: int | None, total_epochs: int) -> float:
    """T_NC; a run that never collapsed (or diverged) reports total epochs + 1 and is marked censored."""
    return float(t_nc) if t_nc is not None and status == "collapsed" else float(total_epochs + 1)


def result_attrs(run_id: str, status: str, t_nc: float | None, fn_star: float | None) -> dict[str, Any]:
    attrs: dict[str, Any] = {ATTR_RUN_ID: run_id, ATTR_STATUS: status, ATTR_CENSORED: status != "collapsed"}
    if t_nc is not None:
        attrs[ATTR_T_NC] = int(t_nc)
    if fn_star is not None:
        attrs[ATTR_FN_STAR] = float(fn_star)
    return attrs


def finished_result(client: MlflowClient, experiment_id: str, condition: str, seed: int) -> dict[str, Any] | None:
    """The result of the earliest FINISHED run of the point in MLflow, or None."""
    from ncflow import tracking

    runs = with_retry(tracking.finished_runs_of, client, experiment_id, condition, seed)
    if not runs:
        return None
    run = min(runs, key=lambda r: r.info.start_time)
    metrics = run.data.metrics
    status = run.data.tags.get(tracking.TAG_STATUS, "collapsed" if "collapse/T_NC" in metrics else "not_collapsed")
    attrs = result_attrs(run.info.run_id, status, metrics.get("collapse/T_NC"), metrics.get("collapse/fn_star"))
    return {**attrs, ATTR_PARENT: run.data.tags.get(tracking.TAG_PARENT, "")}


# ---------------------------------------------------------------- the worker process


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


def train_point(args: WorkerArgs, claim: Claim) -> tuple[dict[str, Any], float]:
    """Train the claimed point (retrying a point the SQLite store locked out); its result attrs and value."""
    from ncflow.train import train

    start = {"init_from": claim.init_from} if claim.init_from else {}
    config = build_config(None, {**claim.task.config, **args.local, **start})
    for attempt in range(args.lock_retries + 1):
        try:
            result = train(
                config,
                sweep=args.sweep,
                parent_run_id=args.parent_run_id,
                extra_tags={TAG_TRIAL: f"{claim.study}#{claim.number}"},
                progress=False,
            )
            break
        except Exception as error:
            if "database is locked" not in str(error) or attempt == args.lock_retries:
                raise
            time.sleep(1.0 + attempt)
    attrs = result_attrs(result.run_id, result.status, result.t_nc, result.fn_star)
    return attrs, objective_value(result.status, result.t_nc, config.total_epochs)


def evaluate(storage: BaseStorage, args: WorkerArgs, claim: Claim, client: MlflowClient) -> None:
    """Reuse a point MLflow already finished, else train it; a crash fails the trial (retried next invocation)."""
    with Heartbeat(storage, claim.trial_id):
        try:
            _record_params(storage, claim)
            seed = int(claim.task.params["seed"])
            done = finished_result(client, args.experiment_id, claim.task.condition, seed)
            if done is not None:
                total = int(claim.task.config["phase1_epochs"]) + int(claim.task.config["phase2_epochs"])
                value = objective_value(done[ATTR_STATUS], done.get(ATTR_T_NC), total)
                _finish(storage, claim, {**done, ATTR_REUSED: True}, TrialState.COMPLETE, value)
                return
            attrs, value = train_point(args, claim)
            _finish(storage, claim, {**attrs, ATTR_REUSED: False}, TrialState.COMPLETE, value)
        except BaseException as error:
            reason = "interrupted" if isinstance(error, KeyboardInterrupt) else f"{type(error).__name__}: {error}"
            _finish(storage, claim, {ATTR_STATUS: "failed", ATTR_FAIL_REASON: reason[:2000]}, TrialState.FAIL, None)
            with contextlib.suppress(Exception):  # train ends its run itself; this covers an interrupt inside MLflow
                kill_runs(client, running_runs(client, args.experiment_id, claim.study, claim.number), reason[:2000])
            if not isinstance(error, Exception):
                raise
            print(f"ncflow sweep: trial {claim.number} ({claim.task.key}) failed: {reason}", file=sys.stderr)


def raise_interrupt(signum: int, frame: Any) -> None:
    """SIGTERM handler: unwind like Ctrl-C, so the current run ends KILLED and its trial FAIL."""
    raise KeyboardInterrupt(f"signal {signum}")


def run_worker(args: WorkerArgs) -> int:
    """Claim and evaluate points until none is left that could run; 130 when interrupted (its trial is failed)."""
    os.environ.pop("MLFLOW_RUN_ID", None)  # train would adopt the parent run as its own
    signal.signal(signal.SIGTERM, raise_interrupt)
    import torch

    torch.set_num_threads(max(1, args.threads))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(args.storage)
    client = MlflowClient(tracking_uri=args.tracking_uri)
    owner = Owner.this_process()
    try:
        while True:
            claim, pending = claim_next(storage, args.storage, args.studies, owner)
            if claim is not None:
                evaluate(storage, args, claim, client)
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
