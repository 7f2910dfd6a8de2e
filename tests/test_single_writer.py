"""One writer per run: a run's record is held exclusively (ncflow.record.record_lock) by whichever process writes
it or ships it; a second one refuses in one line naming the holder, and a dead holder's record is taken over.

The unit tests hold records from child processes (a claim dies with its process); the CLI tests start real
`ncflow train --resume` and `ncflow sync` processes together on a run killed by SIGKILL, as in tests/test_chaos.py.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from ncflow.record.liveness import Owner
from ncflow.record.local_record import RunRecord
from ncflow.record.record_lock import SYNC, WRITE, RecordTaken
from ncflow.record.shipper import sync_records
from ncflow.tracked.stale_runs import stale_runs
from ncshared import schema
from tests.test_chaos import finish, ncflow, only_run_id, per_step, wait_for_rows

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux procfs")

HOLD = """
import sys
from pathlib import Path
from ncflow.record.local_record import RunRecord
from ncflow.record.record_lock import WRITE
record = RunRecord(Path(sys.argv[1]))
if sys.argv[2] == WRITE:
    record.claim({"tracking_uri": "sqlite:///elsewhere.db"})
    record.metrics(1, {"nc/nc1": 0.5})
else:
    record.take(sys.argv[2])
print("held", flush=True)
sys.stdin.readline()
"""


def holding(directory: Path, purpose: str) -> subprocess.Popen:
    """A child process that holds the record in `directory` (WRITE: claims it and journals a row) until told."""
    child = subprocess.Popen([sys.executable, "-c", HOLD, str(directory), purpose], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline() == "held\n"
    return child


def label(pid: int) -> str:
    return f"{socket.gethostname()} pid {pid}"


def test_a_live_claim_is_refused_and_a_dead_ones_is_taken_over(tmp_path):
    directory = tmp_path / "run1"
    child = holding(directory, WRITE)
    try:
        with pytest.raises(RecordTaken) as refused:
            RunRecord(directory).claim()
        assert str(refused.value) == f"run run1 is still training ({label(child.pid)}); stop it first"
        assert RunRecord(directory).holder().owner.pid == child.pid
        assert sync_records(lambda uri: pytest.fail("shipped a live run's record"), tmp_path) == []
    finally:
        child.kill()  # dies holding it, as under SIGKILL: record.json still names it, unreleased
        child.wait()
    record = RunRecord(directory)
    assert record.owner().pid == child.pid and record.holder() is None
    record.claim()
    me = Owner.this_process()
    assert record.owner() == me and record.holder().owner == me
    assert record.meta()["tracking_uri"] == "sqlite:///elsewhere.db"  # the rest of record.json is kept
    with pytest.raises(RecordTaken):
        RunRecord(directory).claim()  # one holder, even inside one process
    record.release()
    assert record.owner() is None and record.holder() is None
    RunRecord(directory).claim()


def test_a_resume_waits_for_a_sync_and_a_sync_skips_a_held_record(tmp_path):
    directory = tmp_path / "run1"
    writer = holding(directory, WRITE)
    writer.kill()  # a killed run: its journal holds a row MLflow does not have
    writer.wait()
    shipping = holding(directory, SYNC)
    try:
        with pytest.raises(RecordTaken) as refused:
            RunRecord(directory).take(WRITE)
        assert str(refused.value) == (f"run run1's record is being shipped to MLflow by {label(shipping.pid)} "
                                      "(ncflow sync); try again when done")
        assert sync_records(lambda uri: pytest.fail("shipped a record another sync holds"), tmp_path) == []
        started = time.monotonic()
        threading.Timer(0.5, shipping.kill).start()  # the sync ends in 0.5 s
        RunRecord(directory).take(WRITE, wait_for_sync_s=10)
        assert 0.4 < time.monotonic() - started < 5
    finally:
        shipping.kill()
        shipping.wait()


def test_runs_stale_leaves_out_a_run_another_process_holds(tmp_path, mlflow_store):
    client = mlflow_store.client
    experiment = mlflow_store.experiment()
    run_id = client.create_run(experiment, tags={schema.TAG_KIND: schema.KIND_TRAIN}).info.run_id
    later = time.time() + 1000  # silent for long enough
    shipping = holding(tmp_path / "records" / run_id, SYNC)
    try:
        assert stale_runs(client, tmp_path / "records", now=later) == []
    finally:
        shipping.kill()
        shipping.wait()
    assert [run.run_id for run in stale_runs(client, tmp_path / "records", now=later)] == [run_id]


TINY = ["--depth", "2", "--width", "16", "--phase1-epochs", "2", "--phase2-epochs", "30"]


def killed_run(tmp_path: Path, uri: str) -> str:
    """A run of `ncflow train` killed by SIGKILL after its second epoch: RUNNING, its record unreleased."""
    process = ncflow([*TINY, "--tracking-uri", uri], tmp_path)
    wait_for_rows(tmp_path / "records", 2, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    return only_run_id(tmp_path / "records")


def assert_one_value_per_step(uri: str, run_id: str) -> None:
    client = MlflowClient(uri)
    assert client.get_run(run_id).info.status == "FINISHED"
    for key, values in per_step(client, run_id).items():
        assert [step for step, _ in values] == list(range(1, 33)), f"{key}: not exactly one value per step"


def test_two_resumes_at_once_one_refuses_and_every_step_has_one_value(tmp_path, mlflow_store):
    run_id = killed_run(tmp_path, mlflow_store.uri)
    resumes = [ncflow(["--resume", run_id, "--tracking-uri", mlflow_store.uri], tmp_path) for _ in range(2)]
    outcomes = {process.pid: finish(process) for process in resumes}
    codes = sorted(code for code, _ in outcomes.values())
    assert codes == [0, 2], outcomes
    (winner,) = [pid for pid, (code, _) in outcomes.items() if code == 0]
    (refusal,) = [output for code, output in outcomes.values() if code == 2]
    assert refusal == f"Error: resume: run {run_id} is still training ({label(winner)}); stop it first\n"
    assert_one_value_per_step(mlflow_store.uri, run_id)


def test_a_resume_beside_a_sync_doubles_no_step(tmp_path, mlflow_store):
    run_id = killed_run(tmp_path, mlflow_store.uri)
    (tmp_path / "records" / run_id / "shipped").write_text("0")  # the sync has the whole journal to send
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_RUN_ID", "MLFLOW_TRACKING_URI")}
    sync = subprocess.Popen([sys.executable, "-m", "ncflow.cli", "sync", "--record-dir", str(tmp_path / "records")],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    resume = ncflow(["--resume", run_id, "--tracking-uri", mlflow_store.uri], tmp_path)
    (sync_code, synced), (resume_code, resumed) = finish(sync), finish(resume)
    assert resume_code == 0, resumed[-3000:]
    assert sync_code == 0 and (f"run {run_id}: all sent" in synced or "nothing to send" in synced), synced
    assert_one_value_per_step(mlflow_store.uri, run_id)
