"""Packs: every member trains exactly as the standalone run of its seed, and lands in MLflow as that run would."""

import pytest
import torch
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from ncflow.cli.main import main
from ncflow.engine import loop, pack, run_setup
from ncflow.engine.config import ConfigError, build_config
from ncflow.tracked import resume as resuming
from ncflow.tracked import train as training
from ncflow.tracked.pack_train import train_pack
from ncshared import schema

SMALL = {"dataset": "synthetic", "synthetic_classes": "4", "synthetic_shape": "1x4x4", "synthetic_per_class": "16",
         "depth": "3", "width": "32", "batch_size": "12", "phase1_epochs": "5", "phase2_epochs": "5"}
# Members differ in what a pack allows: seed, weight decay, learning rate.
MEMBERS = (("0", "1e-4", "1e-3"), ("1", "5e-4", "2e-3"), ("2", "0", "1e-3"))
TINY = ["--depth", "2", "--width", "64", "--phase1-epochs", "2", "--phase2-epochs", "2"]


def configs(**changes: str):
    return [build_config(None, {**SMALL, "seed": seed, "weight_decay": wd, "lr": lr, **changes}) for seed, wd, lr in MEMBERS]


def standalone(config) -> run_setup.Setup:
    setup = run_setup.prepare(config)
    loop.run_epochs(setup, run_setup.NullSink(), progress=False)
    return setup


def standalone_history(config) -> list[dict[str, float]]:
    return standalone(config).history


def packed(member_configs, batched: bool = True) -> list[run_setup.Setup]:
    """Trained as a pack, through the batched pass (on the CPU too, where it is not the default)."""
    members = [run_setup.prepare(config) for config in member_configs]
    pack.share_data(members)
    pack.run_pack(members, [run_setup.NullSink()] * len(members), progress=False, batched=batched)
    return members


def packed_histories(member_configs, batched: bool = True) -> list[list[dict[str, float]]]:
    return [member.history for member in packed(member_configs, batched)]


def assert_same_state(member: run_setup.Setup, alone: run_setup.Setup, rel: float) -> None:
    """Weights, BatchNorm buffers (num_batches_tracked too) and optimiser moments: the standalone run's."""
    ours, theirs = member.model.state_dict(), alone.model.state_dict()
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert torch.allclose(ours[key].double(), theirs[key].double(), rtol=rel, atol=rel), key
    moments = [(a["exp_avg"], b["exp_avg"]) for a, b in zip(member.optimizer.state_dict()["state"].values(),
                                                          alone.optimizer.state_dict()["state"].values())
               if "exp_avg" in a]
    assert all(torch.allclose(a, b, rtol=rel, atol=rel) for a, b in moments)


def worst_relative_difference(first: list[dict[str, float]], second: list[dict[str, float]]) -> float:
    assert [row["epoch"] for row in first] == [row["epoch"] for row in second]
    worst = 0.0
    for left, right in zip(first, second):
        assert left.keys() == right.keys()
        for key in left.keys() - {schema.EPOCH_TIME}:
            worst = max(worst, abs(left[key] - right[key]) / max(abs(left[key]), 1e-12))
    return worst


@pytest.fixture
def float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def test_mlp_members_equal_their_standalone_runs_in_float64(float64):
    member_configs = configs()
    for member, config in zip(packed(member_configs), member_configs):
        alone = standalone(config)
        assert len(member.history) == 10
        assert worst_relative_difference(member.history, alone.history) < 1e-9
        assert_same_state(member, alone, 1e-9)


def test_resnet20_members_equal_their_standalone_runs_in_float64(float64):
    member_configs = configs(arch="resnet20", synthetic_shape="3x8x8", optimizer="sgd", phase1_epochs="2",
                             phase2_epochs="1")
    for member, config in zip(packed(member_configs), member_configs):  # grouped convolutions
        alone = standalone(config)
        assert len(member.history) == 3
        assert worst_relative_difference(member.history, alone.history) < 1e-9
        assert_same_state(member, alone, 1e-9)
    assert not pack.batches_members([run_setup.prepare(member_configs[0])])  # on the CPU: one after another


@pytest.mark.parametrize("arch", ["mlp", "resnet20"])
def test_members_equal_their_standalone_runs_in_float32(arch):
    # ResNet-20 on 128 images in batches of 32: on 64 images in batches of 12 (a last batch of 4) BatchNorm meets
    # channels of near-zero variance that amplify float32 rounding ~1e5× — a standalone run is as sensitive to any
    # change of summation order; float64 (above) is the exactness proof.
    resnet = {"arch": "resnet20", "synthetic_shape": "3x8x8", "optimizer": "sgd", "batch_size": "32",
              "synthetic_per_class": "32"}
    shape = resnet if arch == "resnet20" else {}
    member_configs = configs(phase1_epochs="2", phase2_epochs="1", **shape)
    for history, config in zip(packed_histories(member_configs), member_configs):
        assert worst_relative_difference(history, standalone_history(config)) < 1e-4
    sequential = packed_histories(member_configs, batched=False)  # the CPU's default: exactly the standalone runs
    assert all(worst_relative_difference(history, standalone_history(config)) == 0.0
               for history, config in zip(sequential, member_configs))


def test_packed_logits_are_each_members_own():
    members = [run_setup.prepare(config) for config in configs()]
    inputs = torch.stack([member.data.train_x[:5].flatten(1) for member in members])
    logits = pack.packed_mlp_logits([member.model for member in members], inputs)
    for member, member_logits in zip(members, logits):
        assert torch.allclose(member_logits, member.model(member.data.train_x[:5])[0], atol=1e-6)


def test_members_that_cannot_share_a_pack_are_refused():
    with pytest.raises(ConfigError, match=r"^seeds: the members of a pack must share depth; got 3 and 5$"):
        pack.check_packable([build_config(None, SMALL), build_config(None, {**SMALL, "depth": "5"})])
    pack.check_packable(configs())  # seed, λ and lr may differ


def test_train_seeds_makes_one_run_per_seed_like_a_standalone_run(cli_store: str, tmp_path):
    result = CliRunner().invoke(main, ["train", "--quiet", *TINY, "--seeds", "0,1"])
    assert result.exit_code == 0, result.output
    client = MlflowClient(cli_store)
    experiment = client.get_experiment_by_name("ncflow").experiment_id
    packed = {run.info.run_name: run for run in client.search_runs([experiment])}
    assert sorted(packed) == ["mlp2-relu-w64-wd2e-04-digits-s0", "mlp2-relu-w64-wd2e-04-digits-s1"]
    alone_uri = f"sqlite:///{tmp_path / 'alone.db'}"
    result = CliRunner().invoke(main, ["train", "--quiet", *TINY, "--seed", "1", "--tracking-uri", alone_uri])
    assert result.exit_code == 0, result.output
    alone_client = MlflowClient(alone_uri)
    (alone,) = alone_client.search_runs([alone_client.get_experiment_by_name("ncflow").experiment_id])
    member = packed[alone.info.run_name]
    assert member.info.status == alone.info.status == "FINISHED"
    differing = {"tracking_uri"}  # the only param that names where the run went
    assert {k: v for k, v in member.data.params.items() if k not in differing} == \
        {k: v for k, v in alone.data.params.items() if k not in differing}
    stable_tags = (schema.TAG_KIND, schema.TAG_CONDITION, schema.TAG_STATUS, schema.TAG_RUN_NAME)
    assert {t: member.data.tags[t] for t in stable_tags} == {t: alone.data.tags[t] for t in stable_tags}
    assert member.data.metrics.keys() == alone.data.metrics.keys()
    for key in (*schema.PER_EPOCH_METRICS, *member.data.metrics.keys()):
        if key == schema.EPOCH_TIME:
            continue
        ours = [m.value for m in sorted(client.get_metric_history(member.info.run_id, key), key=lambda m: m.step)]
        theirs = [m.value for m in sorted(alone_client.get_metric_history(alone.info.run_id, key), key=lambda m: m.step)]
        assert ours == pytest.approx(theirs, rel=1e-4, abs=1e-7), key
    def artifacts(c, run_id, path=None):
        return sorted(a.path for a in c.list_artifacts(run_id, path))
    assert artifacts(client, member.info.run_id) == artifacts(alone_client, alone.info.run_id)
    assert artifacts(client, member.info.run_id, "checkpoints") == artifacts(alone_client, alone.info.run_id, "checkpoints")


@pytest.mark.parametrize("args, message", [
    (["--seeds", "0,1", "--seed", "2"], "seeds: give --seeds or --seed, not both"),
    (["--seeds", "zero"], "--seeds: expected comma-separated integers like 0,1,2, got 'zero'"),
])
def test_bad_seeds_are_one_line_before_any_run(cli_store: str, args, message):
    result = CliRunner().invoke(main, ["train", "--quiet", *TINY, *args])
    assert result.exit_code == 2 and result.output.strip().endswith(f"Error: {message}"), result.output
    experiment = MlflowClient(cli_store).get_experiment_by_name("ncflow")
    assert experiment is None or MlflowClient(cli_store).search_runs([experiment.experiment_id]) == []


def test_a_crashed_pack_leaves_every_member_resumable_alone(tmp_path, monkeypatch, crash_measure):
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    restore = crash_measure(3 * 4 + 2, "simulated crash")  # epoch 5, second member
    member_configs = configs(tracking_uri=store, checkpoint_every="1", phase1_epochs="3", phase2_epochs="3")
    with pytest.raises(RuntimeError, match="simulated"):
        train_pack(member_configs, progress=False, record_dir=tmp_path / "records")
    restore()
    client = MlflowClient(store)
    runs = client.search_runs([client.get_experiment_by_name("ncflow").experiment_id])
    assert sorted(run.info.status for run in runs) == ["FAILED"] * 3
    assert {run.data.tags[schema.TAG_FAIL_REASON] for run in runs} == {"RuntimeError: simulated crash"}
    by_seed = {run.data.params["seed"]: run.info.run_id for run in runs}
    resumed = resuming.resume(by_seed["1"], tracking_uri=store, progress=False, record_dir=tmp_path / "records")
    alone = training.train(member_configs[1].replace(tracking_uri=f"sqlite:///{tmp_path / 'alone.db'}"),
                           progress=False, record_dir=tmp_path / "records")
    assert [row["epoch"] for row in resumed.history] == [1, 2, 3, 4, 5, 6]
    assert worst_relative_difference(resumed.history, alone.history) < 1e-4
    steps = [m.step for m in client.get_metric_history(by_seed["1"], schema.NC1)]
    assert sorted(steps) == [1, 2, 3, 4, 5, 6]  # each epoch once


def test_matmul_precision_is_set_for_the_process_and_logged(cli_store: str):
    previous = torch.get_float32_matmul_precision()
    try:
        run_setup.prepare(build_config(None, {**SMALL, "matmul_precision": "high"}))
        assert torch.get_float32_matmul_precision() == "high"
        run_setup.prepare(build_config(None, SMALL))
        assert torch.get_float32_matmul_precision() == "highest"  # the default: true float32
    finally:
        torch.set_float32_matmul_precision(previous)
    with pytest.raises(ConfigError, match="^seeds: the members of a pack must share matmul_precision"):
        pack.check_packable([build_config(None, SMALL), build_config(None, {**SMALL, "matmul_precision": "high"})])


def test_layerwise_imbalanced_members_keep_their_own_subsample_and_layers(float64):
    member_configs = configs(imbalance_ratio="2", layerwise="true", phase1_epochs="2", phase2_epochs="2")
    members = packed(member_configs)
    assert members[0].data is not members[1].data  # each seed's own subsample: gathered per member
    for member, config in zip(members, member_configs):
        alone = standalone(config)
        assert member.class_counts == alone.class_counts == [16, 16, 8, 8]
        assert "layers/1/nc1" in member.history[-1] and "nc/minority_collapse" in member.history[-1]
        assert worst_relative_difference(member.history, alone.history) < 1e-9
