"""Shared pytest fixtures. Analysis fixtures (real MLflow stores in temp dirs) are prefixed `mlflow_`."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest

from tests.mlflow_fixtures import LocalStore, local_store, make_template_db


@pytest.fixture(scope="session")
def mlflow_template_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty, migrated SQLite tracking store, built once per session and copied by `mlflow_store`."""
    return make_template_db(tmp_path_factory.mktemp("mlflow-template") / "template.db")


@pytest.fixture
def mlflow_store(tmp_path: Path, mlflow_template_db: Path, monkeypatch: pytest.MonkeyPatch) -> LocalStore:
    """A fresh SQLite tracking store in tmp_path (never the working tree's mlflow.db); its URI is explicit."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return local_store(tmp_path / "store", mlflow_template_db)


@pytest.fixture
def crash_measure(monkeypatch: pytest.MonkeyPatch) -> Callable[[int, str], Callable[[], None]]:
    """`crash_measure(n, message)`: from now on `loop.measure_epoch`'s n-th call raises RuntimeError(message) (a
    crash mid-run); returns a function that puts the real one back (for the resume)."""
    from ncflow.engine import loop

    measure = loop.measure_epoch

    def arm(call: int, message: str) -> Callable[[], None]:
        calls = {"n": 0}

        def measure_then_crash(setup):
            calls["n"] += 1
            if calls["n"] == call:
                raise RuntimeError(message)
            return measure(setup)

        monkeypatch.setattr(loop, "measure_epoch", measure_then_crash)
        return lambda: monkeypatch.setattr(loop, "measure_epoch", measure)

    return arm


@pytest.fixture(autouse=True)
def run_records_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test's training runs keep their local records in its tmp dir, never in the working tree."""
    root = tmp_path / "ncflow-records"
    monkeypatch.setenv("NCFLOW_RECORD_DIR", str(root))
    return root


@pytest.fixture
def cli_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A temp sqlite store as MLFLOW_TRACKING_URI, no adopted run, tmp_path as the working directory: a CLI's world."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.chdir(tmp_path)
    return uri
