"""The grokking task, its transformer, Han et al.'s regularisers and `ncflow grok` on a tiny prime."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from analysis.store import load_runs
from ncflow.cli.main import main as ncflow_main
from ncflow.collapse.metrics import collapse_metrics
from ncflow.collapse.regularisers import flatness_regulariser, ncc_regulariser
from ncflow.grokking.config import GrokConfig, build_grok_config
from ncflow.grokking.task import modular_task, vocabulary_size
from ncflow.grokking.train import RESUME_FILE, StepSchedule, record_folder, train_grokking
from ncflow.grokking.transformer import GrokTransformer
from ncflow.record.record_lock import RecordLock, RecordTaken
from ncshared import schema
from ncshared.grokking_markers import grokking_markers


@pytest.mark.parametrize(("operation", "expected"), [("add", (3 + 5) % 7), ("subtract", (3 - 5) % 7),
                                                     ("multiply", 15 % 7), ("divide", 2), ("squares", 34 % 7)])
def test_every_equation_is_right(operation, expected):
    task = modular_task(7, operation, 0.5, seed=0)
    tokens = torch.cat([task.train_x, task.val_x])
    labels = torch.cat([task.train_y, task.val_y])
    row = ((tokens[:, 0] == 3) & (tokens[:, 2] == 5)).nonzero().item()
    assert labels[row].item() == expected  # 3 ÷ 5 mod 7 = 3 · 5⁻¹ = 3 · 3 = 2
    assert len(labels) == (42 if operation == "divide" else 49) and tokens[:, 3].eq(7 + 5).all()
    assert len(task.train_y) == round(0.5 * len(labels))


def test_the_split_is_seeded_and_disjoint():
    first, again, other = (modular_task(11, "add", 0.3, seed) for seed in (0, 0, 1))
    assert torch.equal(first.train_x, again.train_x) and not torch.equal(first.train_x, other.train_x)
    train = {tuple(row) for row in first.train_x.tolist()}
    assert not train & {tuple(row) for row in first.val_x.tolist()}


def test_the_penultimate_feature_is_the_last_position_after_the_final_norm():
    model = GrokTransformer(vocabulary_size(7), 7, layers=1, d_model=8, heads=2, mlp_width=16).eval()
    tokens = modular_task(7, "add", 0.5, 0).train_x[:5]
    captured = []
    model.unembed.register_forward_pre_hook(lambda module, args: captured.append(args[0]))
    logits = model(tokens)
    assert logits.shape == (5, 7) and torch.equal(captured[0], model.features(tokens))
    changed = tokens.clone()
    changed[:, 3] = 0  # the last token changes the feature; causal attention: no position sees a later one
    assert not torch.allclose(model.features(changed), model.features(tokens))


def test_ncc_regulariser_is_the_pair_mean_of_the_monitored_ncc():
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(4).repeat(6)
    features = torch.randn(24, 5, generator=generator, dtype=torch.float64) + 3 * torch.eye(4, 5)[labels].double()
    weight = torch.randn(4, 5, dtype=torch.float64)
    monitored = collapse_metrics(features, labels, weight, None)["ncc"]
    assert ncc_regulariser(features, labels, 4).item() == pytest.approx(monitored / (4 * 3), rel=1e-12)
    assert ncc_regulariser(features[labels == 0], labels[labels == 0], 4).item() == 0.0  # one class: no pair


def test_flatness_regulariser_is_hans_bound_and_has_a_gradient():
    features = torch.randn(10, 3, requires_grad=True)
    weight = torch.randn(4, 3, requires_grad=True)
    value = flatness_regulariser(features, weight, None)
    p = torch.softmax(features @ weight.T, 1)
    expected = (weight ** 2).sum() * ((p * (1 - p)).sum(1) * (features ** 2).sum(1)).mean()
    assert value.item() == pytest.approx(expected.item(), rel=1e-6)
    value.backward()
    assert weight.grad is not None and features.grad.abs().sum() > 0


def test_the_unplug_switches_what_it_says():
    config = build_grok_config(steps=100, reg="flatness", reg_lambda=0.1, unplug_step=50, unplug_lr_factor=10,
                               unplug_schedule="cosine", warmup_steps=10)
    schedule = StepSchedule(config)
    assert schedule(5) == pytest.approx(0.5e-3) and schedule(50) == pytest.approx(1e-3)
    assert schedule(51) == pytest.approx(1e-2 * 0.5 * (1 + torch.cos(torch.tensor(torch.pi / 50)).item()))
    assert schedule(100) == pytest.approx(0.0, abs=1e-12)


def test_markers_read_the_measurements():
    rows = [{"epoch": 100.0, "train/acc": 0.5, "test/acc": 0.01, "nc/ncc": 8.0, "nc/flatness": 2.0},
            {"epoch": 200.0, "train/acc": 1.0, "test/acc": 0.02, "nc/ncc": 10.0, "nc/flatness": 3.0},
            {"epoch": 300.0, "train/acc": 1.0, "test/acc": 0.5, "nc/ncc": 4.0, "nc/flatness": 2.9},
            {"epoch": 400.0, "train/acc": 1.0, "test/acc": 0.995, "nc/ncc": 1.0, "nc/flatness": 1.0}]
    assert grokking_markers(rows) == {"grokking/step_memorised": 200.0, "grokking/step_generalised": 400.0,
                                      "grokking/step_ncc_drop": 300.0, "grokking/step_flatness_drop": 400.0,
                                      "grokking/delay": 200.0}


@pytest.mark.parametrize(("arguments", "message"), [
    (["--p", "9"], "p: expected a prime ≥ 3, got 9"),
    (["--reg-lambda", "0.1"], "reg_lambda: needs --reg ncc or --reg flatness"),
    (["--reg", "ncc", "--reg-lambda", "-1"], "reg_lambda: expected a number ≥ 0"),
    (["--reg", "ncc", "--unplug-step", "300", "--steps", "300"], "unplug_step: expected 0 (never) or a step before"),
    (["--heads", "3"], "heads: expected a divisor of d_model=128"),
    (["--reg", "flatness", "--reg-lambda", "0.1", "--unplug-lr-factor", "10"],
     "unplug_weight_decay/unplug_lr_factor/unplug_schedule: need an unplug (--unplug-step)"),
])
def test_bad_values_are_one_line_before_any_run(cli_store, arguments, message):
    result = CliRunner().invoke(ncflow_main, ["grok", *arguments])
    assert result.exit_code == 2 and message in result.output and len(result.output.strip().splitlines()) == 1


def test_a_tiny_grokking_run_is_tracked_in_steps(cli_store):
    result = CliRunner().invoke(ncflow_main, [
        "grok", "--p", "7", "--train-fraction", "0.6", "--layers", "1", "--d-model", "16", "--heads", "2",
        "--mlp-width", "32", "--steps", "40", "--eval-every", "20", "--reg", "ncc", "--reg-lambda", "0.01",
        "--unplug-step", "20", "--quiet"])
    assert result.exit_code == 0, result.output
    runs = load_runs(cli_store, experiment="grokking")
    assert len(runs) == 1 and runs["step_unit"][0] == "step" and runs["reg"][0] == "ncc"
    client = __import__("mlflow").MlflowClient(cli_store)
    run_id = runs["run_id"][0]
    assert [m.step for m in client.get_metric_history(run_id, schema.NCC)] == [20, 40]
    assert [m.value for m in client.get_metric_history(run_id, "reg/active")] == [1.0, 0.0]
    assert client.get_run(run_id).data.tags[schema.TAG_STEP_UNIT] == "step"
    assert GrokConfig().steps == 20_000


class Interrupt(Exception):
    """Stands for a signal or crash between two evaluations."""


def histories(client, run_id: str, keys: list[str]) -> dict[str, list[tuple[int, float]]]:
    return {key: [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]
            for key in keys}


def test_a_grokking_run_cut_off_mid_way_resumes_its_run_as_if_uninterrupted(cli_store, tmp_path, monkeypatch):
    monkeypatch.setenv("NCFLOW_RECORD_DIR", str(tmp_path / "records"))
    torch.set_num_threads(1)
    config = build_grok_config(p=13, layers=1, d_model=16, heads=2, mlp_width=32, steps=40, eval_every=10,
                               reg="ncc", reg_lambda=0.01, unplug_step=25)
    whole = train_grokking(config, cli_store, "whole")

    def cut_at_20(step: int, row: dict[str, float]) -> None:
        if step == 20:
            raise Interrupt
    with pytest.raises(Interrupt):
        train_grokking(config, cli_store, "cut", progress=cut_at_20)
    kept = record_folder(config, cli_store, "cut") / RESUME_FILE
    assert kept.exists() and record_folder(config, cli_store, "whole") != kept.parent  # per store and experiment
    with pytest.raises(RecordTaken):  # a second writer of the same run is refused while one holds it
        held = RecordLock(kept.parent)
        held.take("write")
        try:
            train_grokking(config, cli_store, "cut")
        finally:
            held.let_go()
    resumed = train_grokking(config, cli_store, "cut")
    client = __import__("mlflow").MlflowClient(cli_store)
    cut_runs = client.search_runs([client.get_experiment_by_name("cut").experiment_id])
    assert [run.info.run_id for run in cut_runs] == [resumed.run_id] and cut_runs[0].info.status == "FINISHED"
    keys = [schema.TRAIN_LOSS, schema.TRAIN_ACC, schema.TEST_ACC, schema.NC1, schema.NCC, schema.FLATNESS, "reg/value",
            "reg/active", "lr"]
    expected = histories(client, whole.run_id, keys)
    assert histories(client, resumed.run_id, keys) == expected  # bit for bit, every step logged once
    assert [step for step, _ in expected[schema.NCC]] == [10, 20, 30, 40]
    untimed = [[{k: v for k, v in row.items() if k != schema.EPOCH_TIME} for row in run.history] for run in (resumed, whole)]
    assert untimed[0] == untimed[1]  # the monitor's rows too: the kept ones replayed, the rest measured again
    assert not kept.exists()
    assert cut_runs[0].data.metrics.get("grokking/step_memorised") == client.get_run(
        whole.run_id).data.metrics.get("grokking/step_memorised")
