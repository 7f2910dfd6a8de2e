"""analysis.store against real SQLite tracking stores populated as training logs (tests/mlflow_fixtures.py)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis import store
from ncshared import schema as c
from tests import mlflow_fixtures as fx

# Hand-checkable curves: depth 5 → ε = 0.01; NC1 first < 0.01 at epoch 3 → T_NC = 3, fn* = fn[epoch 3] = 1.1.
NC1 = [0.9, 0.2, 0.008, 0.004]
FN = [5.0, 9.0, 1.1, 1.0]
# Never below 0.01 → not_collapsed, no collapse/T_NC.
NC1_FLAT = [0.9, 0.2, 0.03, 0.03]


def _log(mlflow_store: fx.LocalStore, experiment_id: str, **kwargs: object) -> str:
    defaults = dict(depth=5, seed=0, nc1_curve=NC1, fn_curve=FN, phase1_epochs=2, sweep="depth")
    return fx.log_fake_training_run(mlflow_store.client, experiment_id, **{**defaults, **kwargs})


@pytest.fixture
def populated(mlflow_store: fx.LocalStore) -> dict[str, str]:
    """A depth sweep (parent + 3 runs, one logged by `mlflow run` as wd 2e-4), a weight-decay run that does not
    collapse, a run without the ncflow.kind tag, a failed run and an analysis run. Returns name → run id."""
    eid = mlflow_store.experiment()
    client = mlflow_store.client
    ids = {"parent": fx.log_sweep_parent(client, eid, "depth")}
    ids["d5s0"] = _log(mlflow_store, eid, seed=0, parent_run_id=ids["parent"], start_time_ms=1_000)
    ids["d5s1"] = _log(mlflow_store, eid, seed=1, params={"weight_decay": "2e-4"}, start_time_ms=2_000)
    ids["d7s0"] = _log(mlflow_store, eid, depth=7, params={"weight_decay": "0.0002"}, start_time_ms=3_000)
    ids["wd"] = _log(mlflow_store, eid, nc1_curve=NC1_FLAT, sweep="weight_decay", params={"weight_decay": "5e-4"},
                     start_time_ms=4_000)
    ids["untagged"] = _log(mlflow_store, eid, depth=3, sweep=None, start_time_ms=5_000)
    client.delete_tag(ids["untagged"], c.TAG_KIND)
    ids["failed"] = _log(mlflow_store, eid, depth=2, status="failed", start_time_ms=6_000)
    analysis = client.create_run(eid, run_name="analysis-all", tags={c.TAG_KIND: c.KIND_ANALYSIS})
    ids["analysis"] = analysis.info.run_id
    return ids


def test_parse_param_reads_numbers_words_and_strings():
    assert store.parse_param("7") == 7 and isinstance(store.parse_param("7"), int)
    assert store.parse_param("2e-4") == store.parse_param("0.0002") == 0.0002
    assert store.parse_param("1e-05") == 1e-5
    assert store.parse_param("true") is True and store.parse_param("false") is False
    assert store.parse_param("none") is None and store.parse_param("off") is None and store.parse_param("") is None
    assert store.parse_param("auto") == "auto" and store.parse_param("300,450") == "300,450"


def test_same_param_value_compares_parsed_values():
    assert store.same_param_value(store.parse_param("2e-4"), store.parse_param("0.0002"))
    assert store.same_param_value(7, 7.0) and store.same_param_value(None, float("nan"))
    assert not store.same_param_value(True, 1) and not store.same_param_value("auto", None)


def test_tag_columns_are_the_contract_tags():
    assert store.TAG_COLUMNS["status"] == c.TAG_STATUS and store.TAG_COLUMNS["kind"] == c.TAG_KIND
    assert set(store.TAG_COLUMNS) <= set(store.FIXED_COLUMNS)
    assert store.HISTORY_ARTIFACT == c.HISTORY_FILE and store.SUMMARY_PREFIXES == c.SUMMARY_PREFIXES


def test_load_runs_rows_columns_and_types(mlflow_store, populated):
    runs = store.load_runs(mlflow_store.uri, experiment="ncflow")
    # Training runs and (in a named experiment) the untagged run, in start order; not the sweep parent, not the
    # analysis run.
    assert list(runs["run_id"]) == [populated[k] for k in ("d5s0", "d5s1", "d7s0", "wd", "untagged", "failed")]
    assert list(runs.columns[: len(store.FIXED_COLUMNS)]) == list(store.FIXED_COLUMNS)
    first = runs.iloc[0]
    assert first["run_name"] == "mlp5-relu-w512-wd1e-04-mnist-s0" and set(runs["experiment"]) == {"ncflow"}
    assert first["mlflow_status"] == "FINISHED" and first["status"] == c.STATUS_COLLAPSED and first["sweep"] == "depth"
    assert first["start_time"] == 1_000 and first["end_time"] == 1_000 + 1000 * 5  # fixture: start + (epochs + 1) s
    assert first["parent_run_id"] == populated["parent"] and first["kind"] == c.KIND_TRAIN
    assert first["condition"] == fx.condition_hash(dict(fx.DEFAULT_PARAMS, depth="5", phase1_epochs="2",
                                                        phase2_epochs="2"))
    # Params parsed: ints, floats (2e-4 and 0.0002 alike), bools, none/off, "auto", lists as strings.
    assert runs["depth"].dtype == np.int64 and list(runs["depth"]) == [5, 5, 7, 5, 3, 2]
    assert list(runs["weight_decay"]) == [0.0001, 0.0002, 0.0002, 0.0005, 0.0001, 0.0001]
    assert runs["nesterov"].dtype == bool and not runs["nesterov"].any()
    assert runs["fn_ref"].isna().all() and runs["stop_after_collapse"].isna().all()
    assert set(runs["nc1_threshold"]) == {"auto"} and set(runs["milestones"]) == {"300,450"}
    # Metrics: summary values and the last per-epoch value; the metric `lr` yields to the param `lr`.
    assert first[c.T_NC] == 3.0 and first[c.FN_STAR] == 1.1
    assert first[c.COLLAPSE_THRESHOLD] == 0.01 and first[c.t_nc_at(0.05)] == 3.0  # 0.2 ≥ 0.05 > 0.008
    assert first[c.NC1] == 0.004 and first[c.FN] == 1.0 and first[c.PHASE] == 2.0
    assert first["lr"] == 0.001 and first[f"metrics.{c.LR}"] == pytest.approx(0.0)  # cosine ends at 0
    wd = runs[runs["run_id"] == populated["wd"]].iloc[0]
    assert wd["status"] == c.STATUS_NOT_COLLAPSED and np.isnan(wd[c.T_NC]) and wd[c.NC1] == 0.03
    failed = runs[runs["run_id"] == populated["failed"]].iloc[0]
    assert failed["mlflow_status"] == "FAILED" and failed["fail_reason"].startswith("RuntimeError")


def test_load_runs_filters(mlflow_store, populated):
    def names(**filters: object) -> set[str]:
        frame = store.load_runs(mlflow_store.uri, **{"experiment": "ncflow", **filters})
        return {key for key, run_id in populated.items() if run_id in set(frame["run_id"])}

    assert names(sweep="depth") == {"d5s0", "d5s1", "d7s0", "failed"}
    assert names(status="not_collapsed") == {"wd"}
    assert names(status="FAILED") == {"failed"}  # upper case: MLflow's run status
    assert names(params={"weight_decay": "2e-4"}) == {"d5s1", "d7s0"}  # logged as "2e-4" and as "0.0002"
    assert names(params={"weight_decay": 0.0002, "depth": "7"}) == {"d7s0"}
    assert names(params={"activation": "relu", "depth": 3}) == {"untagged"}
    assert names(params={"activation": "gelu"}) == set()
    assert names(params={"no_such_param": "1"}) == set()
    assert names(kind="sweep") == {"parent"}
    assert names(kind=c.KIND_ANALYSIS) == {"analysis"}
    assert names(kind="any") == set(populated)
    assert names(sweep="width") == set()
    assert store.load_runs(mlflow_store.uri, sweep="width").columns.tolist() == list(store.FIXED_COLUMNS)


def test_every_experiment_is_read_and_only_tagged_runs_are_kept(mlflow_store, populated):
    """`mlflow run .` logs to Default, `ncflow train` to ncflow: read without --experiment, both are found."""
    default = mlflow_store.client.get_experiment_by_name("Default").experiment_id
    from_mlflow_run = _log(mlflow_store, default, depth=2, sweep=None, start_time_ms=7_000)
    stranger = mlflow_store.client.create_run(default, run_name="someone-elses-run").info.run_id  # no ncflow tag
    runs = store.load_runs(mlflow_store.uri)
    expected = [populated[k] for k in ("d5s0", "d5s1", "d7s0", "wd", "failed")] + [from_mlflow_run]
    assert list(runs["run_id"]) == expected  # the untagged run and the stranger are left out
    assert stranger not in set(runs["run_id"])
    assert dict(zip(runs["run_id"], runs["experiment"]))[from_mlflow_run] == "Default"
    from analysis.report import experiments_read
    assert experiments_read(runs) == "experiments 'Default' (1 run), 'ncflow' (5 runs)"


def test_load_runs_reads_the_store_named_by_the_environment(mlflow_store, populated, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_store.uri)  # no URI given: the environment's
    assert set(store.load_runs()["run_id"]) == set(store.load_runs(mlflow_store.uri)["run_id"])


def test_load_runs_names_what_it_could_not_find(mlflow_store):
    missing = f"no experiment named 'ncflow' in the tracking store at {mlflow_store.uri}"
    with pytest.raises(store.StoreError, match=missing):
        store.load_runs(mlflow_store.uri, experiment="ncflow")
    assert store.load_runs(mlflow_store.uri).empty  # every experiment: none holds an ncflow run
    port = fx.free_port()  # nothing listens there
    start = time.monotonic()
    with pytest.raises(store.StoreError, match=f"cannot reach the MLflow tracking server at http://127.0.0.1:{port}"):
        store.load_runs(f"http://127.0.0.1:{port}")
    assert time.monotonic() - start < 10  # no minutes of HTTP retries


def _logged_long(run: fx.FakeRun, run_id: str) -> pd.DataFrame:
    """What the fixture logged for one run, as the long histories frame."""
    rows = [(run_id, int(epoch), key, float(values[i])) for key, values in run.columns.items()
            for i, epoch in enumerate(run.epochs)]
    return pd.DataFrame(rows, columns=["run_id", "epoch", "metric", "value"])


def test_histories_equal_what_was_logged_from_csv_and_from_metric_history(mlflow_store, tmp_path):
    eid = mlflow_store.experiment()
    spec = dict(depth=5, seed=0, nc1_curve=NC1, fn_curve=FN, phase1_epochs=2, sweep="depth")
    with_csv = fx.log_run(mlflow_store.client, eid, fx.make_fake_run(**spec), start_time_ms=1_000)
    # An intervention-style run starting at epoch 3 and without the history artifact: read through
    # get_metric_history.
    late = fx.make_fake_run(**{**spec, "seed": 1, "start_epoch": 3})
    without_csv = fx.log_run(mlflow_store.client, eid, late, write_history_csv=False, start_time_ms=2_000)
    runs = store.load_runs(mlflow_store.uri)
    histories = store.load_histories(runs, mlflow_store.uri, cache_dir=tmp_path / "cache")

    assert list(histories.columns) == ["run_id", "epoch", "metric", "value"]
    assert histories["epoch"].dtype == np.int64 and histories["value"].dtype == np.float64
    expected = fx.make_fake_run(**spec)
    from_csv = histories[histories["run_id"] == with_csv].reset_index(drop=True)
    pd.testing.assert_frame_equal(from_csv, _logged_long(expected, with_csv), check_dtype=False)
    assert len(from_csv) == 4 * len(c.PER_EPOCH_METRICS) and set(from_csv["metric"]) == set(fx.PER_EPOCH_METRICS)  # no summary metrics
    nc1 = from_csv[from_csv["metric"] == c.NC1]
    assert list(nc1["epoch"]) == [1, 2, 3, 4] and list(nc1["value"]) == NC1

    from_metrics = histories[histories["run_id"] == without_csv]
    logged = _logged_long(late, without_csv)
    key = ["metric", "epoch"]
    pd.testing.assert_frame_equal(from_metrics.sort_values(key).reset_index(drop=True),
                                  logged.sort_values(key).reset_index(drop=True), check_dtype=False)
    assert sorted(set(from_metrics["epoch"])) == [3, 4, 5, 6]


def test_cache_serves_a_second_load_without_the_store(mlflow_store, tmp_path):
    eid = mlflow_store.experiment()
    for seed in range(3):
        _log(mlflow_store, eid, seed=seed, write_history_csv=seed != 2)
    runs = store.load_runs(mlflow_store.uri)
    cache = tmp_path / "cache"
    first = store.load_histories(runs, mlflow_store.uri, cache_dir=cache)
    assert len(list(cache.glob("*.npz"))) == 3  # one file per ended run, named <run_id>-<end_time>
    assert {p.name for p in cache.glob("*.npz")} == {f"{r.run_id}-{r.end_time}.npz" for r in runs.itertuples()}
    # Remove the store entirely: the cached histories must not need it.
    mlflow_store.db_path.unlink()
    shutil.rmtree(mlflow_store.artifact_root)
    second = store.load_histories(runs, mlflow_store.uri, cache_dir=cache)
    pd.testing.assert_frame_equal(first, second)


def test_running_runs_are_not_cached(mlflow_store, tmp_path):
    eid = mlflow_store.experiment()
    run_id = _log(mlflow_store, eid, status="running", write_history_csv=False)
    cache = tmp_path / "cache"
    runs = store.load_runs(mlflow_store.uri)
    assert runs["mlflow_status"].tolist() == ["RUNNING"] and runs["end_time"].isna().all()
    before = store.load_histories(runs, mlflow_store.uri, cache_dir=cache)
    mlflow_store.client.log_metric(run_id, c.NC1, 0.002, step=5)  # training goes on
    after = store.load_histories(runs, mlflow_store.uri, cache_dir=cache)
    assert not list(cache.glob("*.npz"))
    assert before[before["metric"] == c.NC1]["epoch"].max() == 4
    assert after[after["metric"] == c.NC1].tail(1)[["epoch", "value"]].values.tolist() == [[5, 0.002]]


def test_analysis_never_imports_torch():
    modules = sorted(f"analysis.{path.stem}" for path in Path(store.__file__).parent.glob("*.py"))
    assert {"analysis.cli", "analysis.report", "analysis.tables", "analysis.figures", "analysis.store"} <= set(modules)
    code = f"import sys, {', '.join(modules)}; sys.exit('torch' in sys.modules or 'ncflow' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


def test_a_param_added_later_reads_as_what_older_runs_trained_with(mlflow_store):
    eid = mlflow_store.experiment()
    new = store.run_row(mlflow_store.client.get_run(_log(mlflow_store, eid, seed=1, params={"classifier": "etf"})))
    fixed, params, metrics = store.run_row(mlflow_store.client.get_run(_log(mlflow_store, eid, seed=0)))
    older = ({**fixed, "run_id": "older"}, {k: v for k, v in params.items() if k not in c.ADDED_PARAM_DEFAULTS}, metrics)
    runs = store.runs_frame([older, new]).set_index("run_id")
    assert runs.loc["older", "classifier"] == "learned" and runs.loc["older", "checkpoints"] == "all"
    assert runs.loc[new[0]["run_id"], "classifier"] == "etf"
