"""Chaos: real `ncflow train` processes against a real `mlflow server` on 127.0.0.1, killed and cut off.

Each interrupted run is resumed and compared, step by step, with an uninterrupted run of the same
configuration: every per-epoch metric must have exactly one value per step, bit-identical on CPU (the epoch
time aside), and the same history.csv, summary metrics and status.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from ncshared import schema
from tests.mlflow_fixtures import MlflowServer

pytestmark = pytest.mark.slow

PHASE1, PHASE2 = 8, 8
CONFIG = ["--depth", "2", "--width", "32", "--batch-size", "16", "--phase1-epochs", str(PHASE1),
          "--phase2-epochs", str(PHASE2), "--checkpoint-every", "3", "--lr", "0.01", "--nc1-threshold", "0.5"]
VALUE_METRICS = [name for name in schema.PER_EPOCH_METRICS if name != schema.EPOCH_TIME]


def ncflow(args: list[str], cwd: Path, extra_env: dict[str, str] | None = None, **popen) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_RUN_ID", "MLFLOW_TRACKING_URI")}
    env.update({"NCFLOW_RECORD_DIR": str(cwd / "records"), "OMP_NUM_THREADS": "1", **(extra_env or {})})
    return subprocess.Popen([sys.executable, "-m", "ncflow.cli", "train", "--quiet", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def finish(process: subprocess.Popen, timeout: float = 240) -> tuple[int, str]:
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out + err


def journal_rows(records: Path) -> int:
    journals = list(records.glob("*/journal.jsonl"))
    if not journals:
        return 0
    return sum(1 for line in journals[0].read_text().splitlines() if line.startswith('{"type":"metrics"') and '"step":0' not in line)


def wait_for_rows(records: Path, count: int, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while journal_rows(records) < count:
        assert process.poll() is None, finish(process)[1][-3000:]
        assert time.monotonic() < deadline, f"no {count} epochs after {timeout} s"
        time.sleep(0.005)


def only_run_id(records: Path) -> str:
    (directory,) = [path for path in records.iterdir() if path.is_dir()]
    return directory.name


def per_step(client: MlflowClient, run_id: str) -> dict[str, list[tuple[int, float]]]:
    return {key: sorted((m.step, m.value) for m in client.get_metric_history(run_id, key)) for key in schema.PER_EPOCH_METRICS}


def history_csv(client: MlflowClient, run_id: str, tmp: Path) -> pd.DataFrame:
    path = client.download_artifacts(run_id, schema.HISTORY_FILE, str(tmp))
    return pd.read_csv(path).drop(columns=[schema.EPOCH_TIME])


def summary(client: MlflowClient, run_id: str) -> dict[str, float]:
    metrics = client.get_run(run_id).data.metrics
    return {key: value for key, value in metrics.items() if key.startswith(schema.SUMMARY_PREFIXES)}


@pytest.fixture(scope="module")
def server(tmp_path_factory, mlflow_template_db):
    instance = MlflowServer(tmp_path_factory.mktemp("chaos-server"), workers=1, template_db=mlflow_template_db)
    instance.start()
    yield instance
    instance.stop()


@pytest.fixture(scope="module")
def reference(server, tmp_path_factory):
    """The uninterrupted run everything is compared with."""
    cwd = tmp_path_factory.mktemp("reference")
    code, output = finish(ncflow([*CONFIG, "--tracking-uri", server.url], cwd))
    assert code == 0, output[-3000:]
    run_id = only_run_id(cwd / "records")
    client = MlflowClient(server.url)
    return run_id, per_step(client, run_id), history_csv(client, run_id, cwd), summary(client, run_id)


def assert_same_as_reference(client: MlflowClient, run_id: str, reference, tmp: Path) -> None:
    _, steps, history, summary_metrics = reference
    resumed = per_step(client, run_id)
    epochs = list(range(1, PHASE1 + PHASE2 + 1))
    for key in schema.PER_EPOCH_METRICS:
        assert [step for step, _ in resumed[key]] == epochs, f"{key}: not exactly one value per step"
    for key in VALUE_METRICS:
        assert resumed[key] == steps[key], f"{key} differs from the uninterrupted run"
    pd.testing.assert_frame_equal(history_csv(client, run_id, tmp), history, check_exact=True)
    assert summary(client, run_id) == summary_metrics
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags[schema.TAG_STATUS] == client.get_run(reference[0]).data.tags[schema.TAG_STATUS]


@pytest.mark.parametrize("rows, phase", [(3, 1), (PHASE1 + 3, 2)], ids=["phase1", "phase2"])
def test_sigkill_then_resume_equals_an_uninterrupted_run(server, reference, tmp_path, rows, phase):
    process = ncflow([*CONFIG, "--tracking-uri", server.url], tmp_path)
    wait_for_rows(tmp_path / "records", rows, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    run_id = only_run_id(tmp_path / "records")
    client = MlflowClient(server.url)
    assert client.get_run(run_id).info.status == "RUNNING"  # nothing could end it
    code, output = finish(ncflow(["--resume", run_id, "--tracking-uri", server.url], tmp_path))
    assert code == 0, output[-3000:]
    assert_same_as_reference(client, run_id, reference, tmp_path)


def test_sigterm_ends_killed_and_resumable(server, reference, tmp_path):
    process = ncflow([*CONFIG, "--tracking-uri", server.url], tmp_path)
    wait_for_rows(tmp_path / "records", 5, process)
    process.send_signal(signal.SIGTERM)
    code, output = finish(process)
    assert code == 1 and "Traceback" not in output, output[-3000:]  # click's "Aborted!", as for Ctrl-C
    run_id = only_run_id(tmp_path / "records")
    client = MlflowClient(server.url)
    run = client.get_run(run_id)
    assert run.info.status == "KILLED"
    assert run.data.tags[schema.TAG_FAIL_REASON] == "interrupted (SIGTERM)"
    code, output = finish(ncflow(["--resume", run_id, "--tracking-uri", server.url], tmp_path))
    assert code == 0, output[-3000:]
    assert_same_as_reference(client, run_id, reference, tmp_path)


def test_server_outage_longer_than_the_retry_window_loses_nothing(server, reference, tmp_path):
    # One HTTP retry: MLflow's client gives up within seconds, so a 12 s outage outlasts its retry window.
    # checkpoint_every 3: checkpoint uploads fall inside the outage too.
    short_retries = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
    process = ncflow([*CONFIG, "--tracking-uri", server.url, "--ship-timeout", "300"], tmp_path, short_retries)
    wait_for_rows(tmp_path / "records", 2, process)
    server.stop()
    try:
        time.sleep(12)
    finally:
        server.start()
    code, output = finish(process)
    assert code == 0, output[-3000:]
    run_id = only_run_id(tmp_path / "records")
    client = MlflowClient(server.url)
    assert_same_as_reference(client, run_id, reference, tmp_path)
    checkpoints = {a.path for a in client.list_artifacts(run_id, schema.CHECKPOINT_DIR)}
    assert schema.checkpoint_path(schema.CHECKPOINT_LAST) in checkpoints


def test_unsent_rows_wait_in_the_record_until_sync(server, reference, tmp_path):
    process = ncflow([*CONFIG, "--tracking-uri", server.url, "--ship-timeout", "1"], tmp_path,
                     {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "2"})
    wait_for_rows(tmp_path / "records", 2, process)
    server.stop()
    try:
        code, output = finish(process)
        assert code == 0, output[-3000:]  # training finished; the outage is not the run's failure
        assert "ncflow sync" in output
    finally:
        server.start()
    run_id = only_run_id(tmp_path / "records")
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_RUN_ID", "MLFLOW_TRACKING_URI")}
    synced = subprocess.run([sys.executable, "-m", "ncflow.cli", "sync", "--record-dir", str(tmp_path / "records")],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert synced.returncode == 0 and f"run {run_id}: all sent" in synced.stdout, synced.stdout + synced.stderr
    assert_same_as_reference(MlflowClient(server.url), run_id, reference, tmp_path)


def test_resume_refuses_a_live_run_and_a_finished_one(server, reference, tmp_path):
    process = ncflow([*CONFIG, "--phase2-epochs", "400", "--tracking-uri", server.url], tmp_path)
    try:
        wait_for_rows(tmp_path / "records", 1, process)
        run_id = only_run_id(tmp_path / "records")
        code, output = finish(ncflow(["--resume", run_id, "--tracking-uri", server.url], tmp_path))
        assert code == 2 and f"Error: resume: run {run_id} is still training" in output
        assert len(output.strip().splitlines()) == 1, output
    finally:
        process.kill()
        process.wait()
    finished = reference[0]
    code, output = finish(ncflow(["--resume", finished, "--tracking-uri", server.url], tmp_path))
    assert code == 2 and output.strip() == f"Error: resume: run {finished} is FINISHED; --force continues it anyway"
