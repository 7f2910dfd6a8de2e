"""analysis.report without a server: the manifest key, and recording a report as an MLflow run (local store)."""

from __future__ import annotations

import pandas as pd

from analysis import report
from ncshared import schema as c
from ncshared.mlflow_env import ADOPTED_RUN_VARIABLE


def test_report_key_is_none_while_a_run_may_change():
    source = report.Source("sqlite:///x.db", c.DEFAULT_EXPERIMENT, None, None, False)
    runs = pd.DataFrame({"run_id": ["a", "b"], "mlflow_status": ["FINISHED", "FINISHED"],
                         "end_time": pd.array([10, 20], dtype="Int64")})
    key = report.report_key(source, runs, ["md"], ["png"])
    assert key is not None and key == report.report_key(source, runs.copy(), ["md"], ["png"])
    assert key != report.report_key(source, runs, ["md"], ["png", "pdf"])
    assert key != report.report_key(source, runs.assign(end_time=pd.array([10, 21], dtype="Int64")), ["md"], ["png"])
    running = runs.assign(mlflow_status=["FINISHED", "RUNNING"], end_time=pd.array([10, None], dtype="Int64"))
    assert report.report_key(source, running, ["md"], ["png"]) is None


def test_source_resolves_the_tracking_uri_from_the_environment(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///from-env.db")
    assert report.Source(None, c.DEFAULT_EXPERIMENT, None, None, False).uri == "sqlite:///from-env.db"
    assert report.Source("sqlite:///given.db", c.DEFAULT_EXPERIMENT, None, None, False).uri == "sqlite:///given.db"


def _report_dir(tmp_path):
    out = tmp_path / "report"
    (out / "tables").mkdir(parents=True)
    (out / "report.md").write_text("# report\n", encoding="utf-8")
    (out / "tables" / "table2_depth.md").write_text("**Table 2**\n", encoding="utf-8")
    return out


def test_log_report_creates_an_analysis_run(mlflow_store, tmp_path, monkeypatch):
    monkeypatch.delenv(ADOPTED_RUN_VARIABLE, raising=False)
    experiment_id = mlflow_store.experiment()
    source = report.Source(mlflow_store.uri, c.DEFAULT_EXPERIMENT, "depth", None, False)
    run_id = report.log_report(source, _report_dir(tmp_path), 4)
    run = mlflow_store.client.get_run(run_id)
    assert run.info.experiment_id == experiment_id and run.info.status == "FINISHED"
    assert run.info.run_name.startswith("analysis-depth-")
    assert run.data.tags[c.TAG_KIND] == c.KIND_ANALYSIS and run.data.tags[c.TAG_ANALYSIS_RUNS] == "4"
    assert {f.path for f in mlflow_store.client.list_artifacts(run_id)} == {"report.md", "tables"}


def test_log_report_adopts_the_run_mlflow_run_made(mlflow_store, tmp_path, monkeypatch):
    experiment_id = mlflow_store.experiment()
    adopted = mlflow_store.client.create_run(experiment_id).info.run_id  # as `mlflow run . -e analyze` does
    monkeypatch.setenv(ADOPTED_RUN_VARIABLE, adopted)
    source = report.Source(mlflow_store.uri, c.DEFAULT_EXPERIMENT, None, None, False)
    assert report.log_report(source, _report_dir(tmp_path), 6) == adopted
    runs = mlflow_store.client.search_runs([experiment_id])
    assert [run.info.run_id for run in runs] == [adopted]  # tagged, not a second run
    tags = runs[0].data.tags
    assert tags[c.TAG_KIND] == c.KIND_ANALYSIS and tags[c.TAG_ANALYSIS_RUNS] == "6"
    assert tags[c.TAG_RUN_NAME].startswith("analysis-all-")
    assert runs[0].info.status == "RUNNING"  # MLflow ends the run it made
    assert {f.path for f in mlflow_store.client.list_artifacts(adopted)} == {"report.md", "tables"}
