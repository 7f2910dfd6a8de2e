"""Han et al.'s regularisers in the engine: their values by hand, `ncflow train --reg`, the unplug (regulariser off,
weight decay, learning-rate factor, cosine) and a resume after it, bad values, packs, and the CIFAR ResNet-18."""

from __future__ import annotations

import math
import re

import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from ncflow.cli.main import main
from ncflow.collapse.regularisers import regulariser_value
from ncflow.engine import loop, pack, run_setup
from ncflow.engine.config import build_config, condition_hash, run_name
from ncflow.engine.models import ResNet18, build_model, layer_count, network_from_weights
from ncflow.tracked import mlflow_run
from ncflow.tracked import resume as resuming
from ncflow.tracked import train as training
from ncflow.tracked.rebuild import load_run
from ncshared import schema

# 4 points in 2-d, two classes: class 0 at (0, 0), (2, 0); class 1 at (0, 3), (0, 5).
FEATURES = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 3.0], [0.0, 5.0]], dtype=torch.float64)
LABELS = torch.tensor([0, 0, 1, 1])
HEAD_W, HEAD_B = torch.eye(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64)

TINY = ["--quiet", "--dataset", "synthetic", "--synthetic-classes", "4", "--synthetic-shape", "1x4x4",
        "--synthetic-per-class", "16", "--depth", "2", "--width", "32", "--batch-size", "16", "--phase1-epochs", "2",
        "--phase2-epochs", "2", "--threads", "1"]
SMALL = {"dataset": "synthetic", "synthetic_classes": "4", "synthetic_shape": "1x4x4", "synthetic_per_class": "16",
         "depth": "2", "width": "32", "batch_size": "16", "phase1_epochs": "2", "phase2_epochs": "2", "threads": "1",
         "optimizer": "sgd", "lr": "0.05"}


@pytest.fixture(autouse=True)
def no_adopted_run(monkeypatch):
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)


def without_timing(history):
    return [{k: v for k, v in row.items() if k != schema.EPOCH_TIME} for row in history]


def metric(client: MlflowClient, run_id: str, key: str) -> list[float]:
    return [point.value for point in sorted(client.get_metric_history(run_id, key), key=lambda p: p.step)]


# ------------------------------------------------------------------------------------------- by hand


def test_ncc_regulariser_by_hand():
    # μ0 = (1, 0), V0 = ((1)² + (1)²)/2 = 1; μ1 = (0, 4), V1 = ((1)² + (1)²)/2 = 1; ‖μ0 − μ1‖² = 1 + 16 = 17.
    # Both ordered pairs: (V0 + V1) / (2 · 17) = 1/17; their mean is 1/17 = 0.0588235…
    value = regulariser_value("ncc", FEATURES, LABELS, HEAD_W, HEAD_B)
    assert value.item() == pytest.approx(1 / 17, rel=1e-12)
    assert value.item() == pytest.approx(0.058823529411764705, rel=1e-12)


def test_flatness_regulariser_by_hand():
    # W = I (‖W‖²_F = 2), b = 0: logits = h, and with K = 2, Σ_k p_k(1 − p_k) = 2·σ(z)σ(−z) for the logit gap z.
    # (0, 0): ‖h‖² = 0 → 0;  (2, 0): 2σ(2)σ(−2)·4 = 0.8399486832;  (0, 3): 2σ(3)σ(−3)·9 = 0.8131798752;
    # (0, 5): 2σ(5)σ(−5)·25 = 0.3324028335.  R = ‖W‖²_F · mean = 2 · (0 + 0.8399… + 0.8131… + 0.3324…)/4 = 0.9927656960
    terms = [0.0, 0.8399486832280519, 0.8131798751564184, 0.3324028335395078]
    value = regulariser_value("flatness", FEATURES, LABELS, HEAD_W, HEAD_B)
    assert value.item() == pytest.approx(2 * sum(terms) / 4, rel=1e-12)
    assert value.item() == pytest.approx(0.992765695961989, rel=1e-12)
    assert regulariser_value("none", FEATURES, LABELS, HEAD_W, HEAD_B).item() == 0.0


@pytest.mark.parametrize("name", ["ncc", "flatness"])
def test_regulariser_gradient_is_nonzero(name):
    features = FEATURES.clone().requires_grad_(True)
    weight = HEAD_W.clone().requires_grad_(True)
    regulariser_value(name, features, LABELS, weight, HEAD_B).backward()
    assert features.grad.abs().sum().item() > 1e-3
    if name == "flatness":
        assert weight.grad.abs().sum().item() > 1e-3
    # The NCC's gradient pushes each class's points apart from their mean: d R / d h at (2, 0) points along +x.
    if name == "ncc":
        assert features.grad[1, 0].item() > 0 and features.grad[0, 0].item() < 0


# ------------------------------------------------------------------------------------- names and hash


def test_run_name_and_condition_hash():
    plain = build_config(None, {})
    ncc = build_config(None, {"reg": "ncc", "reg_lambda": "1e-3"})
    flat = build_config(None, {"reg": "flatness", "reg_lambda": "1e-4", "unplug_epoch": "100"})
    assert run_name(ncc) == "mlp5-relu-w512-wd2e-04-digits-ncc1e-03-s0"
    assert run_name(flat) == "mlp5-relu-w512-wd2e-04-digits-flatness1e-04-u100-s0"
    assert condition_hash(plain) == "ab8f5615ffa3"  # every run logged before the regularisers keeps its condition
    hashes = {condition_hash(config) for config in (plain, ncc, flat, ncc.replace(reg_lambda=1e-2),
                                                    flat.replace(unplug_lr_factor=10.0))}
    assert len(hashes) == 5
    older = {k: v for k, v in plain.as_params().items() if not k.startswith(("reg", "unplug"))}
    assert schema.condition_hash(older) == condition_hash(plain)  # an older run's params lack the fields


# ---------------------------------------------------------------------------------------- bad values


def runs_in(uri: str) -> int:
    client = MlflowClient(uri)
    return sum(len(client.search_runs([e.experiment_id])) for e in client.search_experiments())


BAD_VALUES = [
    (["--reg", "ncc", "--reg-lambda", "-0.1"], "reg_lambda: expected a finite number >= 0, got -0.1"),
    (["--reg", "ncc", "--reg-lambda", "nan"], "reg_lambda: expected a finite number >= 0, got nan"),
    (["--reg-lambda", "0.01"], "reg_lambda: 0.01 needs a regulariser (reg ncc or flatness); reg is none"),
    (["--reg", "l2"], "reg: 'l2' is not one of none, ncc, flatness"),
    (["--reg", "ncc", "--unplug-epoch", "4"], "unplug_epoch: expected 0 (never) or an epoch before the last (4), "
                                             "got 4 (past the end)"),
    (["--reg", "ncc", "--unplug-epoch", "-1"], "unplug_epoch: expected 0 (never) or an epoch before the last"),
    (["--unplug-epoch", "2"], "unplug_epoch: 2 unplugs a regulariser, but reg is none"),
    (["--reg", "ncc", "--unplug-lr-factor", "10"], "unplug_lr_factor: applies at the unplug; set unplug_epoch"),
    (["--unplug-schedule", "cosine"], "unplug_schedule: applies at the unplug; set unplug_epoch (and reg)"),
    (["--reg", "flatness", "--unplug-epoch", "2", "--unplug-lr-factor", "0"],
     "unplug_lr_factor: expected a finite number > 0, got 0.0"),
    (["--reg", "flatness", "--unplug-epoch", "2", "--unplug-weight-decay", "-0.5"],
     "unplug_weight_decay: expected a finite number >= 0, or -1 to keep the weight decay, got -0.5"),
]


def test_bad_values_are_one_line_before_any_run(cli_store):
    for args, starts in BAD_VALUES:  # one store for all (creating one costs seconds)
        result = CliRunner().invoke(main, ["train", *TINY, *args])
        assert result.exit_code == 2, result.output
        ours = [line for line in result.output.splitlines()
                if not re.match(r"\d{4}/\d\d/\d\d [\d:]+ INFO mlflow\.", line)]
        assert len(ours) == 1 and ours[0].startswith(f"Error: {starts}"), result.output
        assert "Traceback" not in result.output
    assert runs_in(cli_store) == 0


# ------------------------------------------------------------------------------------------ training


def test_train_reg_ncc_through_the_cli_logs_reg_value_and_differs_from_lambda_0(cli_store):
    for extra in (["--reg", "ncc", "--reg-lambda", "0.01"], []):
        result = CliRunner().invoke(main, ["train", *TINY, "--optimizer", "sgd", "--lr", "0.05", *extra])
        assert result.exit_code == 0, result.output
    client = MlflowClient(cli_store)
    experiment = client.get_experiment_by_name("ncflow").experiment_id
    regularised, plain = client.search_runs([experiment], order_by=["attributes.start_time ASC"])
    assert regularised.data.params["reg"] == "ncc" and regularised.data.params["reg_lambda"] == "0.01"
    assert regularised.info.run_name.endswith("-ncc1e-02-s0")
    values = metric(client, regularised.info.run_id, schema.REG_VALUE)
    assert len(values) == 4 and all(math.isfinite(v) and v > 0 for v in values)
    assert metric(client, regularised.info.run_id, schema.REG_ACTIVE) == [1.0] * 4
    assert not metric(client, plain.info.run_id, schema.REG_VALUE)  # an unregularised run logs none
    # The same seed, data and batches: only the loss term differs, and so does the training.
    assert metric(client, regularised.info.run_id, schema.TRAIN_LOSS) != metric(client, plain.info.run_id,
                                                                                  schema.TRAIN_LOSS)
    assert metric(client, regularised.info.run_id, schema.NC1) != metric(client, plain.info.run_id, schema.NC1)
    # history.csv carries the regulariser's columns after the standard ones; the description says what ran.
    path = client.download_artifacts(regularised.info.run_id, schema.HISTORY_FILE)
    history = pd.read_csv(path)
    assert list(history.columns) == [*schema.HISTORY_COLUMNS, schema.REG_VALUE, schema.REG_ACTIVE]
    assert history[schema.REG_VALUE].tolist() == pytest.approx(values, rel=1e-12)
    note = regularised.data.tags[schema.TAG_NOTE]
    assert "regulariser ncc λ=0.01" in note and "every epoch" in note


def test_unplug_at_epoch_2_of_4_switches_regulariser_weight_decay_and_lr(tmp_path):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = build_config(None, {**SMALL, "schedule": "constant", "weight_decay": "1e-4", "reg": "flatness",
                                 "reg_lambda": "1e-3", "unplug_epoch": "2", "unplug_weight_decay": "0.001",
                                 "unplug_lr_factor": "10", "tracking_uri": store, "checkpoints": "all"})
    result = training.train(config, progress=False)
    assert [row[schema.REG_ACTIVE] for row in result.history] == [1.0, 1.0, 0.0, 0.0]
    assert all(math.isfinite(row[schema.REG_VALUE]) and row[schema.REG_VALUE] > 0 for row in result.history)
    assert [row[schema.LR] for row in result.history] == pytest.approx([0.05, 0.05, 0.5, 0.5], rel=1e-12)
    client = MlflowClient(store)
    assert metric(client, result.run_id, schema.LR) == pytest.approx([0.05, 0.05, 0.5, 0.5], rel=1e-12)
    assert metric(client, result.run_id, schema.REG_ACTIVE) == [1.0, 1.0, 0.0, 0.0]
    # The optimiser's own state: weight decay 1e-4 at the end of Phase 1 (epoch 2, the unplug's end), 0.001 after.
    phase1_end = mlflow_run.load_checkpoint(client, result.run_id, schema.CHECKPOINT_PHASE1_END)
    last = mlflow_run.load_checkpoint(client, result.run_id, schema.CHECKPOINT_LAST)
    assert phase1_end["optimizer"]["param_groups"][0]["weight_decay"] == 0.001  # switched as epoch 2 ended
    assert last["optimizer"]["param_groups"][0]["weight_decay"] == 0.001
    note = client.get_run(result.run_id).data.tags[schema.TAG_NOTE]
    assert ("regulariser flatness λ=0.001 (loss − λ·R on each batch's penultimate features) until epoch 2; then "
            "(unplugged) weight decay 0.0001 → 0.001, lr × 10, the constant schedule goes on") in note
    assert client.get_run(result.run_id).info.run_name.endswith("-flatness1e-03-u2-s0")


def test_weight_decay_switch_reaches_the_optimizer_step():
    """Epoch 3 trains with the switched weight decay: the same state stepped with 1e-4 would end elsewhere."""
    config = build_config(None, {**SMALL, "schedule": "constant", "weight_decay": "1e-4", "reg": "ncc",
                                 "reg_lambda": "1e-3", "unplug_epoch": "2", "unplug_weight_decay": "0.5"})
    setup = run_setup.prepare(config)
    loop.run_epochs(setup, run_setup.NullSink(), progress=False)
    kept = build_config(None, {**SMALL, "schedule": "constant", "weight_decay": "1e-4", "reg": "ncc",
                               "reg_lambda": "1e-3", "unplug_epoch": "2"})
    other = run_setup.prepare(kept)
    loop.run_epochs(other, run_setup.NullSink(), progress=False)
    assert setup.history[1][schema.NC1] == other.history[1][schema.NC1]  # identical until the unplug
    assert setup.history[2][schema.NC1] != other.history[2][schema.NC1]
    decayed = sum(p.norm().item() for p in setup.model.parameters())
    assert decayed < sum(p.norm().item() for p in other.model.parameters())


def test_resume_after_the_unplug_equals_an_uninterrupted_run_bit_for_bit(tmp_path, crash_measure):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = build_config(None, {**SMALL, "phase2_epochs": "3", "schedule": "multistep", "milestones": "4",
                                 "lr_gamma": "0.5", "deterministic": "true", "reg": "ncc",
                                 "reg_lambda": "0.01", "unplug_epoch": "2", "unplug_weight_decay": "0.001",
                                 "unplug_lr_factor": "3", "unplug_schedule": "cosine", "tracking_uri": store})
    restore = crash_measure(4, "simulated crash after the unplug")
    with pytest.raises(RuntimeError, match="simulated"):
        training.train(config, progress=False)
    client = MlflowClient(store)
    [failed] = client.search_runs([client.get_experiment_by_name("ncflow").experiment_id])
    restore()
    resumed = resuming.resume(failed.info.run_id, tracking_uri=store, progress=False)
    uninterrupted = training.train(config, progress=False)
    assert [row["epoch"] for row in resumed.history] == [1, 2, 3, 4, 5]
    assert without_timing(resumed.history) == without_timing(uninterrupted.history)  # exact, every metric
    # The cosine after the unplug replaces the run's multistep (whose milestone at 4 no longer applies): 3 × 0.05 at
    # epoch 3, then ½(1 + cos(π·k/3)) of it. A resume that kept the multistep would train epochs 4–5 otherwise.
    start = 0.05 * 3
    expected = [start * 0.5 * (1 + math.cos(math.pi * k / 3)) for k in range(3)]
    assert [row[schema.LR] for row in resumed.history[2:]] == pytest.approx(expected, rel=1e-12)
    assert metric(client, failed.info.run_id, schema.LR)[2:] == pytest.approx(expected, rel=1e-12)


def test_regularised_pack_members_equal_their_standalone_runs():
    configs = [build_config(None, {**SMALL, "seed": "0", "reg": "ncc", "reg_lambda": "0.01"}),
               build_config(None, {**SMALL, "seed": "1", "reg": "flatness", "reg_lambda": "1e-3", "unplug_epoch": "1",
                                   "unplug_lr_factor": "2"}),
               build_config(None, {**SMALL, "seed": "2"})]
    pack.check_packable(configs)  # regularised and unregularised members may share a pack
    members = [run_setup.prepare(config) for config in configs]
    assert not pack.batchable(members)  # the batched pass has no features for the regulariser: one after another
    pack.run_pack(members, [run_setup.NullSink()] * 3, progress=False)
    for member, config in zip(members, configs):
        alone = run_setup.prepare(config)
        loop.run_epochs(alone, run_setup.NullSink(), progress=False)
        assert without_timing(member.history) == without_timing(alone.history)
    assert [row[schema.REG_ACTIVE] for row in members[1].history] == [1.0, 0.0, 0.0, 0.0]
    assert schema.REG_VALUE not in members[2].history[0]


# -------------------------------------------------------------------------------------------- ResNet-18


def test_resnet18_shapes():
    torch.manual_seed(0)
    model = build_model("resnet18", (3, 32, 32), 10, depth=5, width=512, activation="relu")
    assert isinstance(model, ResNet18)
    assert sum(p.numel() for p in model.parameters()) == 11_173_962  # the CIFAR ResNet-18's count
    assert model.conv.kernel_size == (3, 3) and model.conv.stride == (1, 1)  # 3×3 stride-1 stem, no max-pool
    assert [len(stage) for stage in model.stages] == [2, 2, 2, 2]
    logits, features = model(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 10) and features.shape == (2, 512)
    _, _, layers = model.forward_layers(torch.randn(2, 3, 8, 8))
    assert [layer.shape[1] for layer in layers] == [256, 512, 1024, 2048, 512] and layer_count("resnet18", 5) == 5
    rebuilt = network_from_weights("resnet18", 5, 512, "relu", model.state_dict())
    x = torch.randn(3, 3, 8, 8)
    model.eval()
    assert torch.equal(rebuilt(x)[0], model(x)[0])
    # validate_classes knows the 512 features: an ETF head fits K − 1 ≤ 512 classes.
    etf = {"arch": "resnet18", "classifier": "etf", "dataset": "synthetic"}
    build_config(None, {**etf, "synthetic_classes": "513"})
    with pytest.raises(ValueError, match="^classifier: etf needs a feature dimension of at least K − 1 = 513, got 512$"):
        build_config(None, {**etf, "synthetic_classes": "514"})


def test_resnet18_trains_one_regularised_epoch_and_rebuilds(tmp_path):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = build_config(None, {"dataset": "synthetic", "synthetic_classes": "4", "synthetic_shape": "3x8x8",
                                 "synthetic_per_class": "4", "arch": "resnet18", "optimizer": "sgd", "lr": "0.01",
                                 "momentum": "0.9", "weight_decay": "0", "batch_size": "8", "phase1_epochs": "1",
                                 "phase2_epochs": "0", "reg": "ncc", "reg_lambda": "1e-3", "threads": "1",
                                 "checkpoints": "last", "tracking_uri": store})
    result = training.train(config, progress=False)
    [row] = result.history
    assert math.isfinite(row[schema.TRAIN_LOSS]) and math.isfinite(row[schema.NC1]) and row[schema.FN] > 0
    assert row[schema.REG_ACTIVE] == 1.0 and row[schema.REG_VALUE] > 0
    assert MlflowClient(store).get_run(result.run_id).info.run_name.startswith("resnet18-wd0e+00-synthetic-ncc1e-03")
    rebuilt = load_run(result.run_id, tracking_uri=store)  # tracked/rebuild: the network from its checkpoint
    assert isinstance(rebuilt.network, ResNet18) and rebuilt.config.arch == "resnet18"
    data = rebuilt.data()
    with torch.no_grad():
        logits, features = rebuilt.network(data.test_x)
    assert features.shape == (len(data.test_y), 512)
    assert (logits.argmax(1) == data.test_y).double().mean().item() == pytest.approx(row[schema.TEST_ACC], abs=1e-12)
