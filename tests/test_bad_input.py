"""Bad input to `ncflow train`: one line, exit code 2, no traceback, and no run left behind."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from ncflow.cli.main import main
from ncshared import schema

TINY = ["--quiet", "--depth", "2", "--width", "16", "--phase1-epochs", "2", "--phase2-epochs", "1"]


@pytest.fixture
def store(cli_store: str) -> str:
    return cli_store


def run_cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["train", *args])
    return result.exit_code, result.output


def assert_one_line_error(code: int, output: str, starts: str) -> None:
    assert code == 2, output
    # MLflow itself logs two INFO lines when it creates a fresh sqlite store; everything else is ours.
    ours = [line for line in output.splitlines() if not re.match(r"\d{4}/\d\d/\d\d [\d:]+ INFO mlflow\.", line)]
    assert len(ours) == 1 and ours[0].startswith(f"Error: {starts}"), output
    assert "Traceback" not in output


def run_count(uri: str) -> int:
    client = MlflowClient(uri)
    return sum(len(client.search_runs([e.experiment_id])) for e in client.search_experiments())


@pytest.mark.parametrize("args, starts", [
    (["--seed", "1e20"], "seed: expected an integer from 0 to 9223372036854775807"),
    (["--seed", "-1"], "seed: expected an integer from 0"),
    (["--phase2-epochs", "1e30"], "phase2_epochs: expected an integer up to 10,000,000"),
    (["--tracking-uri", "sqlite:////proc/x.db"], "tracking_uri: 'sqlite:////proc/x.db': /proc/x.db cannot be written"),
    (["--tracking-uri", "bogus://"], "tracking_uri: 'bogus://' is not a store MLflow can open"),
    (["--tracking-uri", "http://127.0.0.1:9"], "tracking_uri: no MLflow tracking server answers at http://127.0.0.1:9"),
    (["--dataset", "mnist", "--data-dir", "empty-dir"], "data_dir: dataset 'mnist' not available under data_dir='empty-dir'"),
    (["--force"], "force: only applies with --resume RUN_ID"),
])
def test_bad_values_stop_before_any_run(store, tmp_path, args, starts, monkeypatch):
    monkeypatch.setattr("ncflow.engine.data.DOWNLOAD_TIMEOUT_S", 2.0)
    (tmp_path / "empty-dir").mkdir()
    code, output = run_cli(*TINY, *args)
    assert_one_line_error(code, output, starts)
    assert run_count(store) == 0


def trained_run(store: str) -> str:
    code, output = run_cli(*TINY)
    assert code == 0, output
    return re.search(r"^run ([0-9a-f]{32}): ", output, re.M).group(1)


def test_resume_refusals_name_the_reason(store, tmp_path, run_records_in_tmp: Path):
    finished = trained_run(store)
    client = MlflowClient(store)
    assert_one_line_error(*run_cli("--resume", finished), f"resume: run {finished} is FINISHED; --force continues it")
    assert_one_line_error(*run_cli("--resume", finished, "--depth", "3"),
                          "resume: takes no training options (the run's own are used); got --depth")
    assert_one_line_error(*run_cli("--resume", "0" * 32), "resume: no MLflow run '" + "0" * 32)
    foreign = client.create_run(client.get_experiment_by_name("ncflow").experiment_id).info.run_id
    assert_one_line_error(*run_cli("--resume", foreign), f"resume: run {foreign} is not an ncflow training run")
    # A training run with no resume state anywhere: no local record, no MLflow checkpoint.
    bare = client.create_run(client.get_experiment_by_name("ncflow").experiment_id,
                             tags={schema.TAG_KIND: schema.KIND_TRAIN}).info.run_id
    client.set_terminated(bare, "FAILED")
    code, output = run_cli("--resume", bare)
    assert_one_line_error(code, output, f"resume: run {bare} has no resume state: looked for ")
    assert f"{run_records_in_tmp / bare / 'state.pt'}" in output and "checkpoints/last.pt" in output
    # A corrupt local state (cut short by hand) is refused, naming the file.
    state = run_records_in_tmp / finished / "state.pt"
    state.write_bytes(state.read_bytes()[:100])
    code, output = run_cli("--resume", finished, "--force")
    assert_one_line_error(code, output, f"resume: {state} is not a readable checkpoint")
    state.write_bytes(b"")
    assert_one_line_error(*run_cli("--resume", finished, "--force"), f"resume: {state} is not a readable checkpoint")


def test_force_resume_of_a_finished_run_keeps_one_value_per_step(store, run_records_in_tmp: Path):
    finished = trained_run(store)
    code, output = run_cli("--resume", finished, "--force")
    assert code == 0, output
    client = MlflowClient(store)
    for key in schema.PER_EPOCH_METRICS:
        assert [m.step for m in client.get_metric_history(finished, key)] == [1, 2, 3], key
    assert client.get_run(finished).info.status == "FINISHED"
    assert torch.load(run_records_in_tmp / finished / "state.pt", weights_only=True)["epoch"] == 3


@pytest.mark.parametrize("args, starts", [
    (["nosuch"], "unknown sweep 'nosuch'; named sweeps: depth"),
    (["depth", "--seeds", "x"], "--seeds: expected comma-separated integers like 0,1,2, got 'x'"),
    (["depth", "--set", "activation=swish"], "sweep depth, point"),
    (["depth", "--workers", "0"], "workers: expected a whole number >= 1, got '0'"),
    (["depth", "--workers", "1.5"], "workers: expected a whole number >= 1, got '1.5'"),
])
def test_bad_sweep_input_is_one_line_too(store, args, starts):
    result = CliRunner().invoke(main, ["sweep", *args, "--dry-run"])
    assert_one_line_error(result.exit_code, result.output, starts)
    assert run_count(store) == 0


def test_workers_takes_mlflows_float_form(store):
    result = CliRunner().invoke(main, ["sweep", "depth", "--workers", "2.0", "--dry-run", "--seeds", "0"])
    assert result.exit_code == 0, result.output
    assert "4 points: 0 done, 0 running, 0 failed, 4 todo" in result.output
