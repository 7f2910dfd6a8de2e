"""MLproject, python_env.yaml and conda.yaml agree with RunConfig and pyproject.toml."""

import tomllib
from dataclasses import fields
from pathlib import Path

import yaml

from ncflow.cli import mlproject
from ncflow.engine.config import PRESETS, build_config
from ncshared.run_config import RunConfig

ROOT = Path(__file__).resolve().parent.parent


def test_generated_files_are_current():
    assert (ROOT / "MLproject").read_text() == mlproject.render(mlproject.mlproject())
    assert (ROOT / "python_env.yaml").read_text() == mlproject.render(mlproject.python_env())


def test_train_entry_points_take_every_field_and_their_defaults_are_the_presets(monkeypatch):
    monkeypatch.delenv("NCFLOW_LOG_MODEL")  # RunConfig's own defaults (the suite's environment turns log_model off)
    project = yaml.safe_load((ROOT / "MLproject").read_text())
    expected = {f.name for f in fields(RunConfig)} - set(mlproject.WHERE_TO_LOG)
    for entry_point, preset in [("main", None), *[(name, name) for name in PRESETS]]:
        parameters = project["entry_points"][entry_point]["parameters"]
        assert set(parameters) == expected
        defaults = {name: spec["default"] for name, spec in parameters.items()}
        assert build_config(None, defaults) == build_config(preset)
        command = project["entry_points"][entry_point]["command"]
        assert all(f"{{{name}}}" in command for name in expected)


def test_conda_env_and_python_env_hold_the_training_stack():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    dependencies = [*project["dependencies"], *project["optional-dependencies"]["train"]]
    conda = yaml.safe_load((ROOT / "conda.yaml").read_text())
    pip_section = next(item for item in conda["dependencies"] if isinstance(item, dict))
    assert pip_section["pip"] == dependencies
    assert yaml.safe_load((ROOT / "python_env.yaml").read_text())["dependencies"] == dependencies
    assert not any(dep.startswith(("torch", "optuna")) for dep in project["dependencies"])  # a small first install
    assert "ncflow[train]" in project["optional-dependencies"]["test"]
    assert "python=3.11" in conda["dependencies"]
