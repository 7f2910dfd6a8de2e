"""A sweep's MLflow side: the finished run that makes a grid point done, and the child runs of lost trials.

A grid point is identified by the tag `ncflow.condition` + param `seed`: it is done when MLflow holds a FINISHED
run with that identity, whatever made it. Seeds are compared as numbers (`mlflow run -P seed=1.0` logs `1.0`
for seed 1). A sweep's child run carries `ncflow.trial = <study>#<trial number>`, so a RUNNING run whose trial
is no longer running (its worker died) is found and ended KILLED; such a run (or one ended by a signal) is the
point's interrupted run, which the next worker to claim the point continues (`interrupted_run`).
"""

from __future__ import annotations

import os
from typing import Any, Callable, Iterable, TypeVar

from mlflow.tracking import MlflowClient

from ncflow.record.retry import is_database_locked, retried
from ncflow.sweeps.trials import ATTR_PARENT, result_attrs
from ncshared.schema import (
    FN_STAR,
    KIND_TRAIN,
    NC1,
    STATUS_COLLAPSED,
    STATUS_FAILED,
    STATUS_NOT_COLLAPSED,
    T_NC,
    TAG_CONDITION,
    TAG_FAIL_REASON,
    TAG_KIND,
    TAG_PARENT_RUN,
    TAG_STATUS,
    TAG_TRIAL,
    same_number,
)

LOCK_RETRIES = 8  # attempts at an MLflow call that met "database is locked"
LOCK_DELAYS_S = tuple(0.25 * 2**k for k in range(LOCK_RETRIES - 1))  # 0.25 s, doubling, before each retry
MAX_RUNS = 1000  # one search's page: far more runs than one condition or one study has
Result = TypeVar("Result")


def with_retry(call: Callable[..., Result], *args: Any, **kwargs: Any) -> Result:
    """Call an MLflow function, retrying while a shared SQLite store answers "database is locked"."""
    return retried(lambda: call(*args, **kwargs), when=is_database_locked, delays=LOCK_DELAYS_S, attempts=LOCK_RETRIES)


def finished_result(client: MlflowClient, experiment_id: str, condition: str, seed: int) -> dict[str, Any] | None:
    """The result (trial user attributes) of the earliest FINISHED run of the point in MLflow, or None.

    MLflow compares params as strings, so the search is by condition and status only and the seed is
    compared here as a number.
    """
    runs = with_retry(
        client.search_runs,
        [experiment_id],
        filter_string=f"tags.`{TAG_CONDITION}` = '{condition}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time ASC"],
        max_results=MAX_RUNS,
    )
    mine = [run for run in runs if same_number(run.data.params.get("seed", ""), seed)]
    if not mine:
        return None
    run = min(mine, key=lambda r: r.info.start_time)
    metrics = run.data.metrics
    status = run.data.tags.get(TAG_STATUS, STATUS_COLLAPSED if T_NC in metrics else STATUS_NOT_COLLAPSED)
    attrs = result_attrs(run.info.run_id, status, metrics.get(T_NC), metrics.get(FN_STAR))
    return {**attrs, ATTR_PARENT: run.data.tags.get(TAG_PARENT_RUN, "")}


def interrupted_run(
    client: MlflowClient, experiment_id: str, condition: str, seed: int, record_dir: str | os.PathLike[str] | None = None
) -> Any | None:
    """The point's interrupted training run — ended KILLED (a signal, an abandoned trial's run, a run carried from
    another machine) — that can be resumed from its local record under `record_dir` (NCFLOW_RECORD_DIR by default)
    or its MLflow checkpoint; of several, the one with the most logged epochs; None when the point has none.

    A FAILED run (an exception in training, perhaps a bug since fixed) is not continued: its point trains afresh.
    A RUNNING run is never picked: it is live, or ended KILLED first when its trial is found abandoned."""
    from ncflow.record.local_record import RunRecord, record_root
    from ncflow.tracked.stale_runs import resumability

    runs = with_retry(
        client.search_runs,
        [experiment_id],
        filter_string=f"tags.`{TAG_CONDITION}` = '{condition}' and tags.`{TAG_KIND}` = '{KIND_TRAIN}' "
                      "and attributes.status = 'KILLED'",
        max_results=MAX_RUNS,
    )
    root = record_root(record_dir)
    mine = [run for run in runs if same_number(run.data.params.get("seed", ""), seed)
            and resumability(RunRecord(root / run.info.run_id), client).resumable]
    if not mine:
        return None
    logged = {run.info.run_id: max((m.step for m in with_retry(client.get_metric_history, run.info.run_id, NC1)),
                                   default=0) for run in mine}
    return max(mine, key=lambda run: (logged[run.info.run_id], run.info.start_time))


def trial_tag(study_name: str, number: int) -> str:
    """The `ncflow.trial` tag of the child run that trial `number` of the study trains."""
    return f"{study_name}#{number}"


def tagged_trial(run: Any) -> int:
    """The trial number in a child run's `ncflow.trial` tag."""
    return int(run.data.tags[TAG_TRIAL].rsplit("#", 1)[1])


def running_runs(client: MlflowClient, experiment_id: str, study_name: str, number: int | None = None) -> list[Any]:
    """RUNNING MLflow runs started by the study's trials (one trial's when `number` is given)."""
    trial = f"= '{trial_tag(study_name, number)}'" if number is not None else f"LIKE '{study_name}#%'"
    return with_retry(
        client.search_runs,
        [experiment_id],
        filter_string=f"tags.`{TAG_TRIAL}` {trial} and attributes.status = 'RUNNING'",
        max_results=MAX_RUNS,
    )


def kill_runs(client: MlflowClient, runs: Iterable[Any], reason: str) -> None:
    """End RUNNING MLflow runs whose worker is gone as KILLED, with `ncflow.status=failed` and the reason."""
    from ncflow.tracked import mlflow_run  # torch loads only when a run must be ended

    for run in runs:
        tags = {TAG_STATUS: STATUS_FAILED, TAG_FAIL_REASON: reason}
        with_retry(mlflow_run.set_tags, client, run.info.run_id, tags)
        with_retry(client.set_terminated, run.info.run_id, "KILLED")
