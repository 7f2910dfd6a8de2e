"""The training loop through its Python API: determinism, intervention, crash and resume, ResNet-20."""

import math

import pytest
from mlflow.tracking import MlflowClient

from ncflow.engine.config import build_config
from ncflow.tracked import artifacts, mlflow_run
from ncflow.tracked import resume as resuming
from ncflow.tracked import train as training

SMALL = {
    "dataset": "synthetic",
    "synthetic_classes": "4",
    "synthetic_shape": "1x4x4",
    "synthetic_per_class": "16",
    "depth": "3",
    "width": "32",
    "batch_size": "16",
    "phase1_epochs": "3",
    "phase2_epochs": "3",
    "checkpoint_every": "2",
}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"


@pytest.fixture(autouse=True)
def no_adopted_run(monkeypatch):
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)


def small_config(store: str, **changes: str):
    return build_config(None, {**SMALL, "tracking_uri": store, **changes})


def without_timing(history):
    return [{k: v for k, v in row.items() if k != "time/epoch_s"} for row in history]


def test_same_seed_same_history_other_seed_differs(store):
    first = training.train(small_config(store), progress=False)
    second = training.train(small_config(store), progress=False)
    third = training.train(small_config(store, seed="1"), progress=False)
    assert without_timing(first.history) == without_timing(second.history)
    assert without_timing(first.history) != without_timing(third.history)
    assert [row["epoch"] for row in first.history] == [1, 2, 3, 4, 5, 6]
    assert [row["phase"] for row in first.history] == [1, 1, 1, 2, 2, 2]


def test_intervention_rescales_features_and_starts_phase2(store):
    phase1 = training.train(small_config(store), progress=False)  # the two-phase control run is the source
    client = MlflowClient(store)
    assert "checkpoints/phase1_end.pt" in {a.path for a in client.list_artifacts(phase1.run_id, "checkpoints")}
    result = training.train(small_config(store, init_from=phase1.run_id, rescale_alpha="0.3"), progress=False)
    metrics = client.get_run(result.run_id).data.metrics
    # ReLU is positively homogeneous: scaling the last hidden layer's weight and bias by α scales every feature by α.
    assert metrics["intervention/fn_after"] == pytest.approx(0.3 * metrics["intervention/fn_before"], rel=1e-5)
    assert metrics["intervention/fn_before"] == pytest.approx(phase1.history[2]["nc/fn"], rel=1e-9)  # epoch 3
    assert [row["epoch"] for row in result.history] == [4, 5, 6]
    assert all(row["phase"] == 2 for row in result.history)
    assert result.history[0]["nc/fn"] < phase1.history[3]["nc/fn"]  # the shrunken features start Phase 2
    # α = 1 continues the control exactly: same state, same schedule, same batch order from epoch 4 on.
    control = training.train(small_config(store, init_from=phase1.run_id), progress=False)
    assert [row["nc/nc1"] for row in control.history] == pytest.approx([row["nc/nc1"] for row in phase1.history[3:]])
    assert client.get_run(result.run_id).info.run_name.endswith("-a0.3-s0")


def test_intervention_rejects_a_source_without_phase1_checkpoint(store):
    ce_only = training.train(small_config(store, protocol="ce-only", phase1_epochs="1", phase2_epochs="1"), progress=False)
    with pytest.raises(training.ConfigError, match="init_from: run .* has no checkpoints/phase1_end.pt"):
        training.train(small_config(store, init_from=ce_only.run_id), progress=False)


def test_intervention_rejects_another_architecture(store):
    phase1 = training.train(small_config(store, phase2_epochs="0"), progress=False)
    with pytest.raises(training.ConfigError, match="init_from: run .* has depth=3, this run has depth=2"):
        training.train(small_config(store, depth="2", init_from=phase1.run_id), progress=False)


def test_crash_leaves_failed_run_with_reason_and_resume_completes_it(store, crash_measure):
    restore = crash_measure(5, "simulated out-of-memory")
    reference = small_config(store, seed="7")
    with pytest.raises(RuntimeError, match="simulated"):
        training.train(reference, progress=False)
    client = MlflowClient(store)
    failed = client.search_runs(
        [client.get_experiment_by_name("ncflow").experiment_id], "params.seed = '7'", max_results=5
    )
    assert len(failed) == 1
    run = failed[0]
    assert run.info.status == "FAILED"
    assert run.data.tags["ncflow.status"] == "failed"
    assert run.data.tags["ncflow.fail_reason"] == "RuntimeError: simulated out-of-memory"
    state = mlflow_run.load_checkpoint(client, run.info.run_id, "last")
    assert state["epoch"] == 4 and len(state["history"]) == 4  # the crash lost no finished epoch

    restore()
    resumed = resuming.resume(run.info.run_id, tracking_uri=store, progress=False)
    uninterrupted = training.train(reference, progress=False)
    assert client.get_run(run.info.run_id).info.status == "FINISHED"
    assert [row["epoch"] for row in resumed.history] == [1, 2, 3, 4, 5, 6]
    # RNG states and batch order are restored, so the resumed run equals an uninterrupted one.
    assert without_timing(resumed.history) == without_timing(uninterrupted.history)


def test_resnet20_trains_one_epoch_on_synthetic_images(store):
    config = small_config(
        store, arch="resnet20", synthetic_shape="3x8x8", optimizer="sgd", lr="0.05", phase1_epochs="1", phase2_epochs="0"
    )
    result = training.train(config, progress=False)
    row = result.history[0]
    assert row["epoch"] == 1 and math.isfinite(row["train/loss"]) and 0 <= row["train/acc"] <= 1
    assert math.isfinite(row["nc/nc1"]) and row["nc/fn"] > 0


def test_bad_init_from_creates_no_run(store):
    client = MlflowClient(store)
    experiment_id = mlflow_run.ensure_experiment(client, "ncflow")
    before = len(client.search_runs([experiment_id], max_results=1000))
    with pytest.raises(training.ConfigError, match="init_from: no MLflow run 'deadbeef'"):
        training.train(small_config(store, init_from="deadbeef"), progress=False)
    assert len(client.search_runs([experiment_id], max_results=1000)) == before



def test_blow_up_is_recorded_as_divergence_not_a_crash(store):
    config = small_config(store, optimizer="sgd", lr="1e6", momentum="0.0", seed="3")
    result = training.train(config, progress=False)
    assert result.status == "diverged"
    run = MlflowClient(store).get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["ncflow.status"] == "diverged"
    assert run.data.tags["ncflow.divergence_reason"].startswith("non-finite")
    assert len(result.history) < 6  # training stops at the divergence


COLLAPSING = {"lr": "0.01", "nc1_threshold": "0.9"}  # ε = 0.9: the tiny run collapses within its 6 epochs


def test_fn_ref_auto_is_the_mean_fn_star_of_the_conditions_other_seeds(tmp_path):
    store = f"sqlite:///{tmp_path / 'auto.db'}"
    first = training.train(small_config(store, seed="0", **COLLAPSING), progress=False)
    second = training.train(small_config(store, seed="1", **COLLAPSING), progress=False)
    assert first.fn_star is not None and second.fn_star is not None
    third = training.train(small_config(store, seed="2", fn_ref="auto", **COLLAPSING), progress=False)
    assert third.summary["collapse/fn_ref"] == pytest.approx((first.fn_star + second.fn_star) / 2, rel=1e-12)
    # fn_ref is reporting-only: the auto run is the same condition as its references.
    client = MlflowClient(store)
    conditions = {client.get_run(r.run_id).data.tags["ncflow.condition"] for r in (first, second, third)}
    assert len(conditions) == 1


def test_stop_after_collapse_ends_the_run_n_epochs_after_t_nc(store):
    full = training.train(small_config(store, seed="4", **COLLAPSING), progress=False)
    stopped = training.train(small_config(store, seed="4", stop_after_collapse="1", **COLLAPSING), progress=False)
    assert full.t_nc is not None and full.t_nc + 1 < 6
    assert [row["epoch"] for row in stopped.history] == list(range(1, full.t_nc + 2))
    assert stopped.t_nc == full.t_nc and stopped.fn_star == full.fn_star
    assert without_timing(stopped.history) == without_timing(full.history[: full.t_nc + 1])


def test_resuming_a_run_that_had_already_stopped_trains_nothing_more(store, monkeypatch):
    config = small_config(store, seed="5", stop_after_collapse="0", **COLLAPSING)

    def broken_figure(*args, **kwargs):
        raise RuntimeError("figure failed")

    monkeypatch.setattr(artifacts, "dynamics_figure_png", broken_figure)
    with pytest.raises(RuntimeError, match="figure failed"):
        training.train(config, progress=False)
    client = MlflowClient(store)
    experiment_id = client.get_experiment_by_name("ncflow").experiment_id
    (run,) = client.search_runs([experiment_id], "params.seed = '5' and attributes.status = 'FAILED'")
    monkeypatch.undo()
    resumed = resuming.resume(run.info.run_id, tracking_uri=store, progress=False)
    assert client.get_run(run.info.run_id).info.status == "FINISHED"
    assert [row["epoch"] for row in resumed.history] == list(range(1, resumed.t_nc + 1))
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "nc/nc1")]
    assert sorted(set(steps)) == list(range(1, resumed.t_nc + 1))
