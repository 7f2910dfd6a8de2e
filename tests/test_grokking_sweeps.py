"""Han et al.'s sweeps (`grokking`, `ncc-regularizer`, `flatness-regularizer`) through `ncflow sweep`: grokking points
trained by the grokking loop as the sweep's child runs, exactly once (a rerun and a carried run are reused), `--set`
with the grokking settings, and the regulariser sweeps' engine counterpart with `--dataset`. Real CLI, real MLflow
(a temp SQLite store), real Optuna journal, a tiny task (p = 13, a 1-layer d = 16 transformer, 20 steps)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner

from ncflow.cli.main import main
from ncflow.grokking.config import build_grok_config
from ncflow.grokking.train import condition
from ncflow.sweeps.grids import NAMED_SWEEPS, for_data, parse_settings, resolve_points
from ncflow.sweeps.storage import open_storage, storage_url
from ncflow.sweeps.trials import ATTR_RUN_ID, ATTR_TASK, TASK_GROKKING
from ncshared.run_config import RunConfig
from ncshared.schema import TAG_CONDITION, TAG_KIND, TAG_PARENT_RUN, TAG_STEP_UNIT, TAG_SWEEP, TAG_TRIAL
from tests.mlflow_fixtures import LocalStore

TINY = "p=13,layers=1,d_model=16,heads=2,mlp_width=32,steps=20,eval_every=10"


@pytest.fixture
def store(mlflow_store: LocalStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> LocalStore:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    return mlflow_store


def invoke(store: LocalStore, *args: str, expect: int = 0) -> str:
    result = CliRunner().invoke(main, ["sweep", *args, "--tracking-uri", store.uri, "--experiment", "grokking",
                                       "--quiet"])
    assert result.exit_code == expect, result.output
    return result.output


def runs_of(store: LocalStore, kind: str = "train") -> list:
    experiment = store.client.get_experiment_by_name("grokking")
    return [run for run in store.client.search_runs([experiment.experiment_id], max_results=100)
            if run.data.tags.get(TAG_KIND) == kind]


def test_the_grokking_sweep_varies_operation_and_fraction_over_three_seeds():
    points = resolve_points(NAMED_SWEEPS["grokking"], {"experiment": "x", "tracking_uri": "y"})
    assert len(points) == 4 * 2 * 3
    assert {(p.config.operation, p.config.train_fraction) for p in points} == {
        (op, f) for op in ("add", "subtract", "multiply", "divide") for f in (0.3, 0.5)}
    assert {p.config.steps for p in points} == {20_000}  # the power preset
    # A point's key is the condition its monitor run is tagged with, known before it trains.
    assert points[0].condition == condition(points[0].config) == condition(build_grok_config(operation="add"))


def test_the_regulariser_sweeps_on_grokking_and_through_the_engine_with_a_data_set():
    ncc = resolve_points(NAMED_SWEEPS["ncc-regularizer"], {})
    assert [p.config.reg_lambda for p in ncc if p.seed == 0] == [0.0, 1e-4, 1e-3, 1e-2]
    assert [p.config.reg for p in ncc if p.seed == 0] == ["none", "ncc", "ncc", "ncc"]
    assert {p.config.steps for p in ncc} == {6000}
    flat = resolve_points(NAMED_SWEEPS["flatness-regularizer"], {})
    assert [(p.config.reg_lambda, p.config.unplug_step) for p in flat if p.seed == 0] == [
        (0.0, 0), (1e-4, 0), (1e-4, 3000)]
    assert flat[0].key == ncc[0].key  # one unregularised control for both sweeps: the second reuses its runs
    engine = resolve_points(for_data(NAMED_SWEEPS["flatness-regularizer"], "mnist-5k"), {"dataset": "mnist-5k"})
    assert all(isinstance(p.config, RunConfig) for p in engine)
    assert [(p.config.reg_lambda, p.config.unplug_epoch) for p in engine if p.seed == 0] == [
        (0.0, 0), (1e-4, 0), (1e-4, 30)]
    first = engine[0].config  # Han et al.'s SGD setting, cross-entropy only
    assert (first.optimizer, first.lr, first.momentum, first.weight_decay, first.batch_size, first.protocol) == (
        "sgd", 0.01, 0.9, 0.0, 64, "ce-only")


def test_settings_are_checked_as_grokking_settings():
    assert parse_settings(["steps=2000,operation=subtract"], "grokking") == {"steps": 2000, "operation": "subtract"}
    with pytest.raises(ValueError, match="steps: expected a whole number"):
        parse_settings(["steps=2.5"], "grokking")


@pytest.mark.parametrize("args, message", [
    (["grokking", "--set", "depth=3"], "depth: not a grokking setting"),
    (["grokking", "--dataset", "mnist-5k"], "the grokking sweep trains on modular arithmetic only"),
    (["ncc-regularizer", "--set", "reg_lambda=-1"], "reg_lambda: expected a number ≥ 0"),
    (["flatness-regularizer", "--set", "unplug_step=7000"], "unplug_step: expected 0 (never) or a step before the last"),
])
def test_bad_grokking_sweep_input_is_one_line_before_any_run(store: LocalStore, args: list[str], message: str):
    output = invoke(store, *args, expect=2)
    assert message in output and len(output.strip().splitlines()) == 1, output
    experiment = store.client.get_experiment_by_name("grokking")
    assert experiment is None or not store.client.search_runs([experiment.experiment_id])


def test_a_grokking_sweep_trains_each_point_once_as_child_runs_and_a_rerun_reuses_them(store: LocalStore):
    args = ("ncc-regularizer", "--set", TINY, "--seeds", "0")
    assert "4 points: 4 done" in invoke(store, *args)
    (parent,) = runs_of(store, "sweep")
    children = runs_of(store)
    assert len(children) == 4 and {run.info.status for run in children} == {"FINISHED"}
    by_lambda = {run.data.params["reg_lambda"]: run for run in children}
    assert sorted(by_lambda) == ["0.0", "0.0001", "0.001", "0.01"]
    for run in children:
        tags, params = run.data.tags, run.data.params
        assert tags[TAG_SWEEP] == "ncc-regularizer" and tags[TAG_PARENT_RUN] == parent.info.run_id
        assert tags[TAG_TRIAL].startswith("ncflow-ncc-regularizer#") and tags[TAG_STEP_UNIT] == "step"
        assert params["steps"] == "20" and params["reg"] == ("none" if params["reg_lambda"] == "0.0" else "ncc")
    regularised = by_lambda["0.01"]
    assert regularised.data.tags[TAG_CONDITION] == condition(build_grok_config(
        p=13, layers=1, d_model=16, heads=2, mlp_width=32, steps=20, eval_every=10, reg="ncc", reg_lambda=0.01,
        operation="add", train_fraction=0.3))
    history = store.client.get_metric_history(regularised.info.run_id, "reg/value")
    assert [point.step for point in history] == [10, 20] and all(point.value > 0 for point in history)
    assert not store.client.get_metric_history(by_lambda["0.0"].info.run_id, "reg/value")  # the control
    study = optuna.load_study(study_name="ncflow-ncc-regularizer", storage=open_storage(storage_url(None)))
    trials = study.get_trials()
    assert {t.user_attrs[ATTR_TASK] for t in trials} == {TASK_GROKKING}
    assert {t.user_attrs[ATTR_RUN_ID] for t in trials} == {run.info.run_id for run in children}
    assert {t.value for t in trials} <= {21.0} | set(range(1, 21))  # T_NC in steps, or steps + 1 when censored

    assert "4 points: 4 done" in invoke(store, *args)  # nothing trains twice
    # The flatness sweep's control is the same condition: its run is reused, only the flatness point trains (the
    # pinned unplug_step merges the sweep's two flatness points into one).
    assert "2 points: 2 done" in invoke(store, "flatness-regularizer", "--set", f"{TINY},unplug_step=0", "--seeds", "0")
    assert Counter(run.data.params["reg"] for run in runs_of(store)) == {"none": 1, "ncc": 3, "flatness": 1}
