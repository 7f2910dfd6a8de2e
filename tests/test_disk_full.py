"""No run lost to a full disk: the first resume state is saved before training starts, a full disk anywhere in the
record is one line naming the file and the space (exit 1, the run FAILED, no traceback), and the description,
`ncflow runs --stale` and `ncflow train --resume` agree about whether a run can be resumed.

The full disk is injected, not mounted: creating a record file's temporary copy raises ENOSPC (as on a full
device), from the n-th write of that file on; the journal's writes can be made to fail the same way."""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from ncflow.cli.main import main
from ncflow.record import local_record
from ncflow.record.local_record import RecordDiskFull, RunRecord
from ncshared import schema

TINY = ["--depth", "2", "--width", "16", "--phase1-epochs", "2", "--phase2-epochs", "2"]
VALUE_METRICS = [name for name in schema.PER_EPOCH_METRICS if name != schema.EPOCH_TIME]


def no_space() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.fixture
def full_disk(monkeypatch: pytest.MonkeyPatch) -> Callable[..., Callable[[], None]]:
    """`full_disk(name, from_write=1, journal=False)`: from the `from_write`-th atomic write of record files called
    `name` on, the disk is full (and the journal's writes fail too when `journal`); returns a function that frees it."""
    real_mkstemp, real_open_journal = tempfile.mkstemp, RunRecord._open_journal

    class FullJournal:
        def __init__(self, handle) -> None:
            self.handle = handle

        def write(self, data: bytes) -> int:
            raise no_space()

        def fileno(self) -> int:
            return self.handle.fileno()

    def arm(name: str, from_write: int = 1, journal: bool = False) -> Callable[[], None]:
        writes = {"n": 0}

        def mkstemp(*args, **kwargs):
            if str(kwargs.get("prefix", "")).startswith(f".{name}."):
                writes["n"] += 1
                if writes["n"] >= from_write:
                    raise no_space()
            return real_mkstemp(*args, **kwargs)

        monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
        if journal:
            monkeypatch.setattr(RunRecord, "_open_journal", lambda record: FullJournal(real_open_journal(record)))

        def free() -> None:
            monkeypatch.setattr(tempfile, "mkstemp", real_mkstemp)
            monkeypatch.setattr(RunRecord, "_open_journal", real_open_journal)
        return free

    return arm


def error_lines(stderr: str) -> list[str]:
    """What the command said on stderr, MLflow's own INFO lines (creating a new store) aside."""
    return [line for line in stderr.strip().splitlines() if " INFO mlflow." not in line]


def only_run(client: MlflowClient, exclude: tuple[str, ...] = ()):
    runs = client.search_runs([client.get_experiment_by_name("ncflow").experiment_id])
    (run,) = [run for run in runs if run.info.run_id not in exclude]
    return run


def as_if_killed(client: MlflowClient, run_id: str) -> None:
    """The run as a SIGKILL before its end would leave it: RUNNING, its heartbeat long silent."""
    client.update_run(run_id, status="RUNNING")
    client.set_tag(run_id, schema.TAG_HEARTBEAT, "1000 elsewhere 1")


def test_a_full_disk_before_the_first_state_is_one_line_and_the_run_is_never_called_resumable(
        cli_store: str, full_disk, run_records_in_tmp: Path):
    full_disk("state.pt")
    result = CliRunner().invoke(main, ["train", "--quiet", *TINY])
    client = MlflowClient(cli_store)
    run = only_run(client)
    run_id, state = run.info.run_id, run_records_in_tmp / run.info.run_id / "state.pt"
    assert result.exit_code == 1 and "Traceback" not in result.output
    (line,) = error_lines(result.stderr)
    assert line.startswith(f"Error: No space left on device: writing {state} needs ") and " free there; " in line
    assert line.endswith(f"run {run_id} FAILED and cannot be resumed (it has no resume state: looked for {state})")
    assert run.info.status == "FAILED" and run.data.tags[schema.TAG_STATUS] == "failed"
    note = run.data.tags[schema.TAG_NOTE]
    assert note.startswith("**failed** before its first epoch: RecordDiskFull: No space left on device: writing ")
    assert "It cannot be resumed: it has no resume state" in note and "--resume" not in note
    refused = CliRunner().invoke(main, ["train", "--resume", run_id])
    assert refused.exit_code == 2 and f"has no resume state: looked for {state}" in refused.output


def test_a_record_the_disk_cannot_create_fails_its_run_in_one_line(cli_store: str, full_disk, run_records_in_tmp):
    full_disk("record.json")
    result = CliRunner().invoke(main, ["train", "--quiet", *TINY])
    run = only_run(MlflowClient(cli_store))
    (line,) = error_lines(result.stderr)
    assert result.exit_code == 1 and line.startswith(
        f"Error: No space left on device: writing {run_records_in_tmp / run.info.run_id / 'record.json'} needs ")
    assert line.endswith(f"run {run.info.run_id} FAILED and cannot be resumed (it has no resume state: its record "
                         f"{run_records_in_tmp / run.info.run_id} could not be written)")
    assert run.info.status == "FAILED" and "It cannot be resumed" in run.data.tags[schema.TAG_NOTE]


def test_a_disk_full_everywhere_still_ends_the_run_failed_in_mlflow(cli_store: str, full_disk):
    full_disk("state.pt", journal=True)  # not even the journal takes the failure: MLflow is told directly
    result = CliRunner().invoke(main, ["train", "--quiet", *TINY])
    (line,) = error_lines(result.stderr)
    assert result.exit_code == 1 and line.startswith("Error: No space left on device: writing ")
    run = only_run(MlflowClient(cli_store))
    assert run.info.status == "FAILED" and run.data.tags[schema.TAG_STATUS] == "failed"
    assert run.data.tags[schema.TAG_FAIL_REASON].startswith("RecordDiskFull: No space left on device")
    assert "It cannot be resumed" in run.data.tags[schema.TAG_NOTE]


def per_step(client: MlflowClient, run_id: str) -> dict[str, list[tuple[int, float]]]:
    return {key: sorted((m.step, m.value) for m in client.get_metric_history(run_id, key)) for key in VALUE_METRICS}


def test_stale_runs_resume_and_the_description_agree_and_an_epoch_0_resume_is_exact(
        cli_store: str, full_disk, run_records_in_tmp: Path):
    client = MlflowClient(cli_store)
    free = full_disk("state.pt", from_write=2)  # the epoch-0 state fits; the disk is full from the next save on
    result = CliRunner().invoke(main, ["train", "--quiet", *TINY])
    saved = only_run(client)
    assert result.exit_code == 1, result.output
    (line,) = error_lines(result.stderr)
    run_id = saved.info.run_id
    assert line.endswith(f"run {run_id} FAILED: free space, then `ncflow train --resume {run_id}`")
    assert saved.data.tags[schema.TAG_NOTE].endswith(f"Continue it with `ncflow train --resume {saved.info.run_id}`.")
    state = torch.load(run_records_in_tmp / saved.info.run_id / "state.pt", weights_only=False)
    assert state["epoch"] == 0 and state["history"] == []  # written before training started
    free()
    full_disk("state.pt")  # another run finds no room for its first state
    assert CliRunner().invoke(main, ["train", "--quiet", *TINY, "--seed", "1"]).exit_code == 1
    stateless = only_run(client, exclude=(saved.info.run_id,))
    free()
    for run in (saved, stateless):
        as_if_killed(client, run.info.run_id)

    listed = CliRunner().invoke(main, ["runs", "--stale"])
    assert listed.exit_code == 0, listed.output
    rows = {line.split()[0]: line.split()[-1] for line in listed.output.splitlines()[1:3]}
    assert rows == {saved.info.run_id: "yes", stateless.info.run_id: "no"}
    missing = run_records_in_tmp / stateless.info.run_id / "state.pt"
    why = f"has no resume state: looked for {missing} and for the MLflow artifact checkpoints/last.pt in {cli_store}"
    assert f"run {stateless.info.run_id} cannot be resumed: it {why}" in listed.output
    refused = CliRunner().invoke(main, ["train", "--resume", stateless.info.run_id])
    assert refused.exit_code == 2 and why in refused.output

    resumed = CliRunner().invoke(main, ["train", "--quiet", "--resume", saved.info.run_id])
    assert resumed.exit_code == 0, resumed.output
    uninterrupted = CliRunner().invoke(main, ["train", "--quiet", *TINY])
    assert uninterrupted.exit_code == 0, uninterrupted.output
    reference = only_run(client, exclude=(saved.info.run_id, stateless.info.run_id))
    assert client.get_run(saved.info.run_id).info.status == "FINISHED"
    ours, theirs = per_step(client, saved.info.run_id), per_step(client, reference.info.run_id)
    assert [step for step, _ in ours[schema.NC1]] == [1, 2, 3, 4]  # one value per step
    assert ours == theirs  # bit for bit


def test_a_journal_write_cut_by_a_full_disk_leaves_no_partial_line(tmp_path: Path, monkeypatch):
    record = RunRecord.create(tmp_path, "run1", {})
    record.tags({"a": "1"})
    journal = record._open_journal()

    class HalfThenFull:
        def write(self, data) -> int:
            journal.write(bytes(data)[: len(data) // 2])
            raise no_space()

        def fileno(self) -> int:
            return journal.fileno()

    monkeypatch.setattr(record, "_journal", HalfThenFull())
    with pytest.raises(RecordDiskFull, match=r"^No space left on device: writing .*journal\.jsonl needs \d+ bytes, "):
        record.tags({"b": "2" * 100})
    monkeypatch.setattr(record, "_journal", journal)
    record.tags({"c": "3"})
    assert [entry["tags"] for entry in record.entries()] == [{"a": "1"}, {"c": "3"}]
    assert (tmp_path / "run1" / "journal.jsonl").read_text().count("\n") == 2


def test_shipping_goes_on_when_the_disk_cannot_take_the_shipped_count(tmp_path: Path, monkeypatch):
    record = RunRecord.create(tmp_path, "run1", {})
    record.tags({"a": "1"})
    record.mark_shipped(1)
    monkeypatch.setattr(local_record, "atomic_write_bytes", lambda *args, **kwargs: (_ for _ in ()).throw(no_space()))
    record.tags({"b": "2"})
    record.mark_shipped(2)  # kept in memory: no error
    assert record.shipped() == 2 and record.unshipped() == 0
    assert json.loads((tmp_path / "run1" / "shipped").read_text()) == 1  # another process ships entry 2 again
