"""Shared pytest fixtures. Analysis fixtures (real MLflow stores in temp dirs) are prefixed `mlflow_`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, Iterator

import pytest

from tests.mlflow_fixtures import LocalStore, local_store, make_template_db


# The fast loop while developing, `python -m pytest -m "not slow and not heavy"` (README): these modules are `heavy`
# as a whole — each takes tens of seconds or more, training or sweeping real networks end to end, or drawing every
# figure of a report; a test elsewhere says `@pytest.mark.heavy` itself. A new module that takes longer than ~15 s
# belongs here. The full suite (`python3 -m pytest`, what CI runs) runs everything.
HEAVY_MODULES = frozenset({
    "test_analysis_extra_studies", "test_analysis_figures", "test_bad_input", "test_carry_runs", "test_chaos",
    "test_disk_full", "test_divergence", "test_engine_regularisers", "test_examples", "test_first_hour",
    "test_grokking", "test_grokking_sweeps", "test_han_report", "test_imbalance",
    "test_layerwise", "test_library",
    "test_logged_model", "test_mlflow_run", "test_pack", "test_paper_claims", "test_provenance", "test_roundtrip",
    "test_single_writer", "test_sweep_parent_run", "test_sweeps", "test_tracking", "test_train", "test_train_cli",
})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.module is not None and item.module.__name__.rsplit(".", 1)[-1] in HEAVY_MODULES:
            item.add_marker(pytest.mark.heavy)


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


@pytest.fixture(autouse=True)
def no_logged_model_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs log no MLflow model unless a test says `log_model` (NCFLOW_LOG_MODEL, also for child processes): a model
    adds about a second to a run (tests/test_logged_model.py tests it)."""
    monkeypatch.setenv("NCFLOW_LOG_MODEL", "false")


@pytest.fixture(autouse=True)
def torch_numerics_restored() -> Iterator[None]:
    """A test that trains with `threads` or `deterministic` leaves those process-wide torch settings as they were
    (`ncflow.engine.run_setup.set_numerics` changes them for the process)."""
    torch = sys.modules.get("torch")
    before = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()) if torch else None
    yield
    if before is not None:
        torch.set_num_threads(before[0])
        torch.use_deterministic_algorithms(before[1])


@pytest.fixture
def cli_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A temp sqlite store as MLFLOW_TRACKING_URI, no adopted run, tmp_path as the working directory: a CLI's world."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.chdir(tmp_path)
    return uri
