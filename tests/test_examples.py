"""Every script in examples/ runs as a user would run it (short, with a loose ε so that a few epochs collapse), and
its run appears in `ncflow-analysis runs` with T_NC and in the report's table of own models."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from analysis.cli import main as analysis_main
from ncshared import schema

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
RUNS = {  # script → (arguments, the run name it makes)
    "plain_loop.py": (["--epochs", "4"], "mlp-256-64-digits-s0"),
    "lightning_module.py": (["--epochs", "3"], "lightning-cnn-digits-s0"),
    "hf_trainer.py": (["--epochs", "2"], "tiny-vit-digits-s0"),
}


@pytest.fixture(scope="module")
def example_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One store holding a run of every example (each run in its own process, as a user runs it)."""
    folder = tmp_path_factory.mktemp("examples")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    for script, (arguments, _) in RUNS.items():
        done = subprocess.run([sys.executable, str(EXAMPLES / script), "--tracking-uri", uri, "--nc1-threshold",
                               "0.95", *arguments], cwd=folder, capture_output=True, text=True, timeout=300, check=False)
        assert done.returncode == 0, f"{script} failed:\n{done.stderr[-3000:]}"
        assert "T_NC = " in done.stdout and "T_NC = None" not in done.stdout, f"{script}: {done.stdout}"
    return uri


def test_each_example_run_is_listed_with_its_t_nc(example_store):
    result = CliRunner().invoke(analysis_main, ["runs", "--tracking-uri", example_store,
                                                "--experiment", "ncflow-examples"])
    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line.split() for line in result.output.splitlines() if line.strip()}
    for _, name in RUNS.values():
        assert lines[name][2] == "collapsed" and lines[name][3].isdigit(), result.output


def test_each_example_writes_one_run_shared_with_its_framework(example_store):
    """Lightning's MLFlowLogger run and the Trainer's MLflowCallback run are the runs ncflow writes into: one run per
    example, holding the framework's metrics and ncflow's."""
    client = MlflowClient(example_store)
    runs = client.search_runs([client.get_experiment_by_name("ncflow-examples").experiment_id])
    by_name = {run.info.run_name: run for run in runs}
    assert sorted(by_name) == sorted(name for _, name in RUNS.values())
    assert {"train_loss", schema.NC1} <= set(by_name["lightning-cnn-digits-s0"].data.metrics)  # Lightning's and ours
    assert {"train_loss", schema.NC1} <= set(by_name["tiny-vit-digits-s0"].data.metrics)  # the Trainer's and ours
    assert by_name["tiny-vit-digits-s0"].data.params["per_device_train_batch_size"] == "64"  # logged by the Trainer
    for run in runs:
        assert run.info.status == "FINISHED" and run.data.tags[schema.TAG_SOURCE] == schema.SOURCE_MONITOR


def test_the_report_tables_them_as_own_models(example_store, tmp_path):
    result = CliRunner().invoke(analysis_main, ["report", "--tracking-uri", example_store,
                                                "--experiment", "ncflow-examples", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    table = (tmp_path / "tables" / "table_monitored.md").read_text()
    for model in ("mlp-256-64", "lightning-cnn", "tiny-vit"):
        assert f"| {model} | digits | epoch | 1 | 1/1 | < 0.95 |" in table, table
