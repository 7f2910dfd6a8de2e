"""tools/carry_runs.py: finished runs exported from one store and imported into another read back the same."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from analysis import store, tables
from ncshared import schema
from tests import mlflow_fixtures as fx

ROOT = Path(__file__).resolve().parent.parent
NC1, FN = [0.9, 0.2, 0.008, 0.004], [16.2, 3.0, 1.1, 1.0]  # T_NC = 3, fn* = 1.1 at ε = 0.01


def carry(*args: str) -> str:
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "carry_runs.py"), *args], capture_output=True,
                            text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_exported_runs_import_with_their_params_tags_metrics_and_history(tmp_path, mlflow_template_db):
    source = fx.local_store(tmp_path / "source", mlflow_template_db)
    eid = source.experiment()
    for depth in (5, 7):
        for seed in (0, 1):
            fx.log_fake_training_run(source.client, eid, depth=depth, seed=seed, nc1_curve=NC1, fn_curve=FN,
                                     phase1_epochs=2, sweep="depth", fn_ref=2.0)
    fx.log_fake_training_run(source.client, eid, depth=3, seed=0, nc1_curve=NC1, fn_curve=FN, status="running")
    assert carry("export", "--tracking-uri", source.uri, "--out", str(tmp_path / "runs")) == \
        f"exported 4 runs to {tmp_path / 'runs'}\n"  # the running run is not carried
    target = fx.local_store(tmp_path / "target", mlflow_template_db)
    assert carry("import", "--tracking-uri", target.uri, "--from", str(tmp_path / "runs")).startswith("imported 4 runs")
    assert carry("import", "--tracking-uri", target.uri, "--from", str(tmp_path / "runs")).startswith("imported 0 runs")
    # The store they came from already holds them, and a carried run is exported under its original name.
    assert carry("import", "--tracking-uri", source.uri, "--from", str(tmp_path / "runs")).startswith("imported 0 runs")
    files = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert carry("export", "--tracking-uri", target.uri, "--out", str(tmp_path / "runs")) == \
        f"exported 0 runs to {tmp_path / 'runs'}\n"
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == files

    before = store.load_runs(source.uri, status="FINISHED").sort_values("run_name").reset_index(drop=True)
    after = store.load_runs(target.uri).sort_values("run_name").reset_index(drop=True)
    assert list(after["run_name"]) == list(before["run_name"])
    assert set(after["experiment"]) == {"ncflow"} and set(after["mlflow_status"]) == {"FINISHED"}
    same = ["status", "condition", "sweep", "depth", "seed", "weight_decay", schema.T_NC, schema.FN_STAR,
            schema.T_CROSS, schema.NC1, schema.FN, "start_time", "end_time"]
    pd.testing.assert_frame_equal(after[same], before[same])
    originals = {run.info.run_name: run.info.run_id for run in source.client.search_runs([eid])}
    for run in target.client.search_runs([target.client.get_experiment_by_name("ncflow").experiment_id]):
        assert run.data.tags[schema.TAG_CARRIED_FROM] == originals[run.info.run_name]
        assert [m.step for m in target.client.get_metric_history(run.info.run_id, schema.NC1)] == [1, 2, 3, 4]
    histories = [store.load_histories(frame, uri, cache_dir=tmp_path / f"cache-{name}")
                 for frame, uri, name in ((before, source.uri, "s"), (after, target.uri, "t"))]
    assert tables.build_tables(after, histories[1])["table2_depth"].to_markdown() == \
        tables.build_tables(before, histories[0])["table2_depth"].to_markdown()


def test_an_interrupted_run_moves_to_a_fresh_machine_and_resumes_bit_for_bit(tmp_path, crash_measure, monkeypatch):
    """Crash a run after epoch 4 of 6, carry it as an unfinished run to a store with no record of it (a fresh
    machine), resume it there: it finishes with the history of a run that was never interrupted, bit for bit."""
    from mlflow.tracking import MlflowClient

    from ncflow.engine.config import build_config
    from ncflow.tracked import train as training

    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    source, target = f"sqlite:///{tmp_path / 'source.db'}", f"sqlite:///{tmp_path / 'target.db'}"
    tiny = {"dataset": "synthetic", "synthetic_classes": "4", "synthetic_shape": "1x4x4", "synthetic_per_class": "16",
            "depth": "2", "width": "16", "batch_size": "16", "phase1_epochs": "3", "phase2_epochs": "3",
            "threads": "1", "deterministic": "true", "checkpoints": "none"}  # no last.pt: only the record has a state
    restore = crash_measure(5, "machine lost")
    with pytest.raises(RuntimeError, match="machine lost"):
        training.train(build_config(None, {**tiny, "tracking_uri": source}), progress=False)
    restore()
    moved = tmp_path / "unfinished"
    out = carry("export", "--tracking-uri", source, "--out", str(tmp_path / "runs"), "--unfinished", str(moved))
    assert out.endswith("exported 1 interrupted runs to " + str(moved) + "\n")
    assert [p.name[:-17] for p in moved.iterdir()] == ["mlp2-relu-w16-wd2e-04-synthetic-s0"]

    monkeypatch.setenv("NCFLOW_RECORD_DIR", str(tmp_path / "fresh-machine-records"))
    carry("import", "--tracking-uri", target, "--from", str(tmp_path / "runs"), "--unfinished", str(moved))
    client = MlflowClient(target)
    [carried] = client.search_runs([client.get_experiment_by_name("ncflow").experiment_id])
    assert carried.info.status == "KILLED"
    assert [m.step for m in client.get_metric_history(carried.info.run_id, schema.NC1)] == [1, 2, 3, 4]
    assert carry("resume", "--tracking-uri", target).endswith("resumed 1 interrupted runs to their end\n")

    finished = client.get_run(carried.info.run_id)
    assert finished.info.status == "FINISHED" and finished.data.tags[schema.TAG_THREADS] == "1"
    uninterrupted = training.train(build_config(None, {**tiny, "tracking_uri": source}), progress=False)
    for key in (schema.NC1, schema.FN, schema.TRAIN_LOSS, schema.TEST_ACC):
        carried_values = [m.value for m in sorted(client.get_metric_history(carried.info.run_id, key),
                                                  key=lambda m: m.step)]
        assert carried_values == [row[key] for row in uninterrupted.history], key
    # Finished now: exported as a finished run, and its unfinished file is gone.
    carry("export", "--tracking-uri", target, "--out", str(tmp_path / "runs"), "--unfinished", str(moved))
    assert list(moved.iterdir()) == []
    assert len(list((tmp_path / "runs").iterdir())) == 1
