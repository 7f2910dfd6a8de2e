"""A newcomer's first hour, end to end through the real CLIs and a real sqlite store.

A run made the way `mlflow run .` makes it (MLflow creates it in `Default` and hands its id to ncflow) and a run of
plain `ncflow train` (experiment `ncflow`) are both found by the analysis without flags; the report lists what it
could not write; the training commands without the `train` extra say in one line what to install.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from analysis import catalogue
from analysis.cli import main as analysis_main
from ncflow.cli.main import main as ncflow_main

TINY = ["train", "--quiet", "--depth", "2", "--width", "16", "--phase1-epochs", "2", "--phase2-epochs", "2",
        "--lr", "0.01", "--nc1-threshold", "0.9"]
ROOT = Path(__file__).resolve().parent.parent


def test_runs_of_mlflow_run_and_of_ncflow_train_are_one_experiment_story(cli_store, monkeypatch, tmp_path):
    client = MlflowClient(cli_store)
    default = client.get_experiment_by_name("Default") or client.get_experiment("0")
    adopted = client.create_run(default.experiment_id).info.run_id  # what `mlflow run .` does before ncflow starts
    stranger = client.create_run(default.experiment_id, run_name="not-ncflow").info.run_id
    client.set_terminated(stranger)
    monkeypatch.setenv("MLFLOW_RUN_ID", adopted)
    first = CliRunner().invoke(ncflow_main, [*TINY, "--seed", "1"])
    assert first.exit_code == 0, first.output
    assert f"run {adopted}: collapsed" in first.output and "experiment  Default (id 0)" in first.output
    monkeypatch.delenv("MLFLOW_RUN_ID")
    second = CliRunner().invoke(ncflow_main, TINY)
    assert second.exit_code == 0, second.output
    assert "experiment  ncflow" in second.output

    listing = CliRunner().invoke(analysis_main, ["runs", "--no-progress"])
    assert listing.exit_code == 0, listing.output
    assert "mlp2-relu-w16-wd2e-04-digits-s1" in listing.output and "mlp2-relu-w16-wd2e-04-digits-s0" in listing.output
    assert "not-ncflow" not in listing.output
    assert listing.output.strip().endswith("2 runs: 2 collapsed (read from experiments 'Default' (1 run), 'ncflow' (1 run))")
    narrowed = CliRunner().invoke(analysis_main, ["runs", "--no-progress", "--experiment", "Default"])
    assert "s1" in narrowed.output and "-s0 " not in narrowed.output

    out = tmp_path / "report"
    report = CliRunner().invoke(analysis_main, ["report", "--no-progress", "--out", str(out), "--figure-format", "png"])
    assert report.exit_code == 0, report.output
    markdown = (out / "report.md").read_text()
    assert "read from experiments 'Default' (1 run), 'ncflow' (1 run)" in markdown
    written = {path.stem for path in (out / "figures").glob("*.png")} | {path.stem for path in (out / "tables").glob("*.md")}
    absent = [o for o in (*catalogue.TABLES, *catalogue.FIGURES) if o.stem not in written]
    assert "fig1_dynamics" in written and "table6_grid" not in written
    section = markdown.split("## Not written", 1)[1]
    for output in absent:  # every table and figure of the paper is written or listed with its reason
        assert f"**{output.title}** (`{output.stem}`): needs {output.needs}; none found." in section
    assert f"{len(absent)} of the paper's tables and figures not written (report.md says why)" in report.output


BLOCK_TORCH = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision", "optuna"):
            raise ModuleNotFoundError(name)
        return None
sys.meta_path.insert(0, Block())
import importlib.util
real = importlib.util.find_spec
importlib.util.find_spec = lambda name, *a: None if name in ("torch", "torchvision", "optuna") else real(name, *a)
from ncflow.cli.main import main
main(sys.argv[1:])
"""


def test_training_without_the_train_extra_says_what_to_install(tmp_path):
    result = subprocess.run([sys.executable, "-c", BLOCK_TORCH, "train", "--quiet"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120, env={"PYTHONPATH": str(ROOT), "PATH": ""})
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        "Error: ncflow train needs the training stack (torch, torchvision, optuna missing): pip install "
        "'ncflow[train]' (from a checkout: pip install -e '.[train]')"]
    assert not (tmp_path / "mlflow.db").exists()  # nothing started
    help_text = subprocess.run([sys.executable, "-c", BLOCK_TORCH, "train", "--help"], cwd=tmp_path,
                               capture_output=True, text=True, timeout=120, env={"PYTHONPATH": str(ROOT), "PATH": ""})
    assert help_text.returncode == 0 and "Model options:" in help_text.stdout  # the help needs no torch


def test_analysis_has_a_version_and_names_the_default_store():
    version = CliRunner().invoke(analysis_main, ["--version"])
    assert version.exit_code == 0 and version.output.startswith("ncflow-analysis, version ")
    help_text = CliRunner().invoke(analysis_main, ["runs", "--help"]).output
    assert "sqlite:///mlflow.db" in help_text and "every experiment" in help_text
