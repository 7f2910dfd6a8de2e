"""What a sweep's Optuna trial carries: the grid point it trains, who holds it, and its result.

A sweep's todo points are enqueued trials of the study `ncflow-NAME`, every parameter fixed. The point travels
in the trial's user attributes, so a worker trains it without the sweep's definition; the claim (owner,
heartbeat) and the result (MLflow run, status, T_NC, fn*) are user attributes too. Every user attribute ncflow
writes is named `ncflow_…` (the `ATTR_*` constants). A trial's value is T_NC; a run that never collapsed reports
total epochs + 1 and is marked censored.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from ncflow.engine.config import PRESETS
from ncflow.grokking.config import OPERATIONS, GrokConfig
from ncshared import run_config
from ncshared.schema import STATUS_COLLAPSED

# The point (written when it is enqueued).
ATTR_POINT = "ncflow_point"  # the point's identity: `<condition hash>-s<seed>`
ATTR_STAGE = "ncflow_stage"  # main | phase1
ATTR_PARAMS = "ncflow_params"  # the dims that vary and the seed, as values
ATTR_CONFIG = "ncflow_config"  # every RunConfig field as MLflow logs it
ATTR_REQUIRES = "ncflow_requires"  # {study, key}: the point whose run this point starts from (init_from)
ATTR_TASK = "ncflow_task"  # what trains the point: TASK_GROKKING (ncflow.grokking); absent: the engine
TASK_ENGINE, TASK_GROKKING = "engine", "grokking"
# The claim (written by the worker that holds it).
ATTR_OWNER = "ncflow_owner"  # the claiming process: host, boot id, pid, process start time
ATTR_HEARTBEAT = "ncflow_heartbeat"  # unix time of the owner's last heartbeat
# The result.
ATTR_RUN_ID = "ncflow_run_id"  # the MLflow run that holds the result
ATTR_PARENT = "ncflow_parent_run_id"  # that run's sweep parent
ATTR_STATUS = "ncflow_status"  # collapsed | not_collapsed | diverged (COMPLETE) or failed (FAIL)
ATTR_T_NC = "ncflow_t_nc"
ATTR_FN_STAR = "ncflow_fn_star"
ATTR_CENSORED = "ncflow_censored"  # true when the run never collapsed: the value is total epochs + 1
ATTR_REUSED = "ncflow_reused"  # true when the point was already finished in MLflow and nothing was trained
ATTR_FAIL_REASON = "ncflow_fail_reason"
STUDY_ATTR_SWEEP = "ncflow_sweep"  # on the study: the sweep's name

ENUMERATED_FIELDS: dict[str, tuple[str, ...]] = {
    "dataset": run_config.DATASETS,
    "arch": run_config.ARCHS,
    "activation": run_config.ACTIVATIONS,
    "optimizer": run_config.OPTIMIZERS,
    "schedule": run_config.SCHEDULES,
    "protocol": run_config.PROTOCOLS,
    "device": run_config.DEVICES,
    "preset": tuple(PRESETS),
    "operation": OPERATIONS,
}
# Each field's type: RunConfig's, and a grokking point's GrokConfig fields (typed by their defaults) beside them.
FIELD_TYPES = {**{f.name: type(f.default).__name__ for f in dataclasses.fields(GrokConfig)},
               **{f.name: f.type for f in dataclasses.fields(run_config.RunConfig)}}


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
        elif params[name] in ENUMERATED_FIELDS.get(name, ()):  # your own data's path: in the user attribute only
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
    task: str = TASK_ENGINE  # TASK_ENGINE (config: a RunConfig's params) or TASK_GROKKING (a GrokConfig's)

    @property
    def condition(self) -> str:
        """The `ncflow.condition` hash: the key without its `-s<seed>` suffix."""
        return self.key.rsplit("-s", 1)[0]

    @property
    def total_epochs(self) -> int:
        """Epochs; optimiser steps for a grokking point (what its T_NC counts)."""
        if self.task == TASK_GROKKING:
            return int(self.config["steps"])
        return int(self.config["phase1_epochs"]) + int(self.config["phase2_epochs"])

    def user_attrs(self) -> dict[str, Any]:
        attrs = {ATTR_POINT: self.key, ATTR_STAGE: self.stage, ATTR_PARAMS: self.params, ATTR_CONFIG: self.config}
        if self.task != TASK_ENGINE:
            attrs[ATTR_TASK] = self.task
        return {**attrs, ATTR_REQUIRES: self.requires} if self.requires else attrs

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> "PointTask":
        requires = attrs.get(ATTR_REQUIRES)
        return cls(attrs[ATTR_POINT], attrs[ATTR_STAGE], dict(attrs[ATTR_PARAMS]), dict(attrs[ATTR_CONFIG]), requires,
                   attrs.get(ATTR_TASK, TASK_ENGINE))


def enqueue(study: optuna.Study, task: PointTask) -> None:
    """One WAITING trial for the point, every parameter fixed."""
    study.enqueue_trial(dict(task.params), user_attrs=task.user_attrs())


def objective_value(status: str, t_nc: int | None, total_epochs: int) -> float:
    """T_NC; a run that never collapsed (or diverged) reports total epochs + 1 and is marked censored."""
    return float(t_nc) if t_nc is not None and status == STATUS_COLLAPSED else float(total_epochs + 1)


def result_value(task: PointTask, result: Mapping[str, Any]) -> float:
    """The trial value of a point's result attributes (`result_attrs`)."""
    return objective_value(result[ATTR_STATUS], result.get(ATTR_T_NC), task.total_epochs)


def record_reused(study: optuna.Study, task: PointTask, result: Mapping[str, Any]) -> None:
    """A COMPLETE trial for a point MLflow already holds finished (nothing trained)."""
    distributions = param_distributions(task.params)
    trial = optuna.trial.create_trial(
        params={name: task.params[name] for name in distributions},
        distributions=distributions,
        value=result_value(task, result),
        user_attrs={**task.user_attrs(), **result, ATTR_REUSED: True},
    )
    study.add_trial(trial)


def result_attrs(run_id: str, status: str, t_nc: float | None, fn_star: float | None) -> dict[str, Any]:
    """A finished run's result as trial user attributes."""
    attrs: dict[str, Any] = {ATTR_RUN_ID: run_id, ATTR_STATUS: status, ATTR_CENSORED: status != STATUS_COLLAPSED}
    if t_nc is not None:
        attrs[ATTR_T_NC] = int(t_nc)
    if fn_star is not None:
        attrs[ATTR_FN_STAR] = float(fn_star)
    return attrs
