"""`ncflow-analysis` against a real `mlflow server` on 127.0.0.1 (SQLite backend, proxied artifacts in a temp dir).

The server is shared by the module; every test that uses it is `slow`. `report`'s pieces (key, manifest, MLflow
logging) are also tested without a server in tests/test_analysis_report.py.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from analysis import report, store
from analysis.cli import main
from ncshared import schema as c
from tests import mlflow_fixtures as fx

EPOCHS, PHASE1 = 10, 3
# depth → per-seed (T_NC, fn*). Depth 2: ε = 0.05; T_NC 5, 6, 7 → mean 6; fn* 1.2, 1.3, 1.4 → mean 1.3.
# Depth 5: ε = 0.01; T_NC 8, 8, 9 → mean 8.333…; fn* 1.0, 1.1, 1.2 → mean 1.1.
SWEEP = {2: [(5, 1.2), (6, 1.3), (7, 1.4)], 5: [(8, 1.0), (8, 1.1), (9, 1.2)]}


def curves(t_nc: int, fn_star: float) -> tuple[np.ndarray, np.ndarray]:
    """NC1 0.5 before epoch t_nc and 0.005 from it on; fn 10 before, fn* at t_nc, 0.99·fn* after."""
    epochs = np.arange(1, EPOCHS + 1)
    nc1 = np.where(epochs < t_nc, 0.5, 0.005)
    fn = np.where(epochs < t_nc, 10.0, np.where(epochs == t_nc, fn_star, 0.99 * fn_star))
    return nc1, fn


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, mlflow_template_db: Path) -> Iterator[dict[str, object]]:
    """A running server holding the depth sweep above (the depth-5 seed-2 run without history.csv)."""
    root = tmp_path_factory.mktemp("server")
    with fx.start_mlflow_server(root, workers=1, template_db=mlflow_template_db) as uri:
        client = MlflowClient(tracking_uri=uri)
        experiment_id = client.create_experiment(c.DEFAULT_EXPERIMENT)
        parent = fx.log_sweep_parent(client, experiment_id, "depth")
        for depth, seeds in SWEEP.items():
            for seed, (t_nc, fn_star) in enumerate(seeds):
                nc1, fn = curves(t_nc, fn_star)
                fx.log_fake_training_run(client, experiment_id, depth=depth, seed=seed, nc1_curve=nc1, fn_curve=fn,
                                         phase1_epochs=PHASE1, sweep="depth", parent_run_id=parent,
                                         write_history_csv=(depth, seed) != (5, 2))
        yield {"uri": uri, "client": client, "experiment_id": experiment_id}


def invoke(*args: str) -> object:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.mark.slow
def test_report_writes_tables_figures_and_logs_itself(server, tmp_path):
    out, cache = tmp_path / "report", tmp_path / "cache"
    result = invoke("report", "--tracking-uri", server["uri"], "--out", str(out), "--cache-dir", str(cache),
                    "--no-progress", "--figure-format", "png", "--log")
    assert result.exit_code == 0, result.output
    assert "from 6 runs" in result.output and "logged as MLflow run" in result.output

    table = pd.read_csv(out / "tables" / "table2_depth.csv").set_index("depth")
    assert table.loc[2, "n"] == 3 and table.loc[5, "n"] == 3
    assert table.loc[2, "T_NC_mean"] == 6.0 and table.loc[2, "fn_star_mean"] == pytest.approx(1.3)
    assert table.loc[5, "T_NC_mean"] == pytest.approx(25 / 3) and table.loc[5, "fn_star_mean"] == pytest.approx(1.1)
    for fmt in ("md", "csv", "tex"):
        assert (out / "tables" / f"table2_depth.{fmt}").stat().st_size > 0
    pngs = sorted((out / "figures").glob("*.png"))
    assert pngs and not list((out / "figures").glob("*.pdf"))
    markdown = (out / "report.md").read_text()
    assert f"experiment {c.DEFAULT_EXPERIMENT!r}" in markdown and server["uri"] in markdown
    assert "6 runs (6 collapsed)" in markdown
    assert "(tables/table2_depth.csv)" in markdown and "| 2 | 3 | 3/3 |" in markdown  # Depth | N | Collapsed
    assert all(f"(figures/{png.name})" in markdown for png in pngs)
    assert len(list(cache.glob("*.npz"))) == 6  # one cached history per finished run

    analysis = store.load_runs(server["uri"], kind=c.KIND_ANALYSIS)
    assert len(analysis) == 1 and analysis.loc[0, "run_name"].startswith("analysis-all-")
    assert analysis.loc[0, "kind"] == c.KIND_ANALYSIS
    logged = {f.path for f in server["client"].list_artifacts(analysis.loc[0, "run_id"])}
    assert {"report.md", "tables", "figures"} <= logged
    # The analysis run is not a training run: the next report still reads 6 runs.
    assert len(store.load_runs(server["uri"])) == 6


@pytest.mark.slow
def test_tables_command_writes_only_the_chosen_formats(server, tmp_path):
    result = invoke("tables", "--tracking-uri", server["uri"], "--sweep", "depth", "--out", str(tmp_path),
                    "--cache-dir", str(tmp_path / "cache"), "--no-progress", "--format", "md,csv")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "table2_depth.md").exists() and not list(tmp_path.glob("*.tex"))
    assert str(tmp_path / "table2_depth.csv") in result.output


@pytest.mark.slow
def test_runs_command_lists_name_status_t_nc_and_fn_star(server):
    result = invoke("runs", "--tracking-uri", server["uri"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    row = next(line for line in lines if line.startswith("mlp2-relu-w512-wd1e-04-mnist-s1")).split()
    assert row == ["mlp2-relu-w512-wd1e-04-mnist-s1", "depth", "collapsed", "6", "1.300", "0.0050"]
    assert lines[-1] == "6 runs: 6 collapsed (read from experiment 'ncflow' (6 runs))"


@pytest.mark.slow
def test_errors_are_one_line_and_say_what_was_searched(server, monkeypatch):
    result = invoke("runs", "--tracking-uri", server["uri"], "--sweep", "width")
    assert result.exit_code == 1
    searched = f"every experiment, sweep 'width' at {server['uri']}"
    assert result.output == f"Error: no ncflow training runs found in {searched}\n"

    result = invoke("runs", "--tracking-uri", server["uri"], "--experiment", "nope")
    assert result.output == f"Error: no experiment named 'nope' in the tracking store at {server['uri']}\n"

    port = fx.free_port()
    result = invoke("report", "--tracking-uri", f"http://127.0.0.1:{port}")
    assert result.exit_code == 2 and result.output.count("\n") == 1  # a bad store is bad input
    assert result.output.startswith(f"Error: tracking_uri: no MLflow tracking server answers at http://127.0.0.1:{port}")

    result = invoke("runs", "--tracking-uri", "foo://bar")
    assert result.exit_code == 2 and result.output.startswith("Error: tracking_uri: 'foo://bar' is not a store")

    monkeypatch.setenv("MLFLOW_TRACKING_URI", server["uri"])  # the default URI comes from the environment
    result = invoke("runs", "--sweep", "width")
    assert server["uri"] in result.output

    result = invoke("tables", "--tracking-uri", server["uri"], "--format", "md,docx")
    assert result.exit_code == 2 and result.output == "Error: Invalid value for --format: 'docx' not in md,csv,tex\n"


@pytest.mark.slow
def test_repeated_report_rewrites_nothing_until_the_store_changes(server, tmp_path, monkeypatch):
    client = server["client"]
    experiment_id = client.create_experiment("repeat")  # its own experiment: the default one keeps its 6 runs

    def log_run(seed: int) -> None:
        nc1, fn = curves(5 + seed, 1.2)
        fx.log_fake_training_run(client, experiment_id, depth=2, seed=seed, nc1_curve=nc1, fn_curve=fn,
                                 phase1_epochs=PHASE1, sweep="depth")

    log_run(0)
    log_run(1)
    out = tmp_path / "report"
    args = ("report", "--tracking-uri", server["uri"], "--experiment", "repeat", "--out", str(out),
            "--cache-dir", str(tmp_path / "cache"), "--no-progress", "--figure-format", "png")
    start = time.perf_counter()
    first = invoke(*args)
    first_s = time.perf_counter() - start
    assert first.exit_code == 0 and "from 2 runs" in first.output and "up to date" not in first.output
    written = {path: path.stat().st_mtime_ns for path in out.rglob("*") if path.is_file()}
    assert out / report.MANIFEST in written and any(path.suffix == ".png" for path in written)

    def rebuild(*args: object, **kwargs: object) -> None:
        raise AssertionError("an unchanged store was read or rendered again")

    with monkeypatch.context() as patch:  # the repeat reads the run list only: no history, table or figure
        for module, name in ((store, "load_histories"), (report, "write_tables"), (report, "write_figures")):
            patch.setattr(module, name, rebuild)
        start = time.perf_counter()
        second = invoke(*args)
        second_s = time.perf_counter() - start
    assert second.exit_code == 0 and "up to date" in second.output and "from 2 runs" in second.output
    assert {path: path.stat().st_mtime_ns for path in written} == written  # not one file rewritten
    assert second_s < first_s / 2

    assert "up to date" not in invoke(*args, "--force").output
    (out / "report.md").unlink()  # a file missing: rebuild
    assert "up to date" not in invoke(*args).output and (out / "report.md").exists()
    log_run(2)  # a new run: rebuild
    third = invoke(*args)
    assert "up to date" not in third.output and "from 3 runs" in third.output
    assert "3 runs (3 collapsed)" in (out / "report.md").read_text()
    assert "up to date" in invoke(*args).output



@pytest.mark.parametrize("command", ["report", "tables", "figures", "runs"])
def test_every_command_has_help(command):
    result = invoke(command, "--help")
    assert result.exit_code == 0 and "--tracking-uri" in result.output and f"tag {c.TAG_SWEEP}" in result.output
