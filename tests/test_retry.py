"""`ncflow.record.retry.retried` and the retry loops built on it (sweep store calls, experiment creation, shipping)."""

from __future__ import annotations

import pytest
from mlflow.entities import Experiment
from mlflow.exceptions import MlflowException

from ncflow.record import retry
from ncflow.record.local_record import RunRecord
from ncflow.record.retry import is_database_locked, retried
from ncflow.record.shipper import ship_pending
from ncflow.sweeps import runs
from ncflow.tracked import mlflow_run

LOCKED = "(sqlite3.OperationalError) database is locked"


class Flaky:
    """A call that raises the given errors in turn, then returns `result`; counts its calls."""

    def __init__(self, errors: list[BaseException], result: str = "done") -> None:
        self.errors, self.result, self.calls = list(errors), result, 0

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return self.result


@pytest.fixture
def pauses(monkeypatch) -> list[float]:
    """Every pause a retry takes (time.sleep replaced, so the tests do not wait)."""
    taken: list[float] = []
    monkeypatch.setattr(retry.time, "sleep", taken.append)
    return taken


def test_database_locked_is_recognised_in_any_error_type():
    assert is_database_locked(MlflowException(f"API request failed: {LOCKED}"))
    assert is_database_locked(RuntimeError(LOCKED))
    assert not is_database_locked(MlflowException("RESOURCE_DOES_NOT_EXIST: no run"))


def test_retries_what_when_accepts_with_the_given_pauses(pauses):
    call = Flaky([RuntimeError(LOCKED), RuntimeError(LOCKED)], "stored")
    assert retried(call, when=is_database_locked, delays=(0.25, 0.5, 1.0), attempts=8) == "stored"
    assert call.calls == 3
    assert pauses == [0.25, 0.5]


def test_a_failure_when_rejects_is_raised_at_once(pauses):
    call = Flaky([ValueError("bad filter"), RuntimeError(LOCKED)])
    with pytest.raises(ValueError, match="bad filter"):
        retried(call, when=is_database_locked, delays=(0.25,), attempts=8)
    assert call.calls == 1
    assert pauses == []


def test_stops_after_attempts_and_raises_the_last_failure(pauses):
    call = Flaky([RuntimeError(f"{LOCKED} #{n}") for n in range(10)])
    with pytest.raises(RuntimeError, match="#2"):
        retried(call, when=is_database_locked, delays=(1.0, 2.0), attempts=3)
    assert call.calls == 3
    assert pauses == [1.0, 2.0]


def test_the_last_pause_repeats_once_the_delays_run_out(pauses):
    call = Flaky([OSError("down")] * 5, "up")
    assert retried(call, delays=(0.5, 1.0)) == "up"
    assert pauses == [0.5, 1.0, 1.0, 1.0, 1.0]


def test_stops_when_give_up_says_so_and_tells_each_retry(pauses):
    call = Flaky([OSError(f"down {n}") for n in range(100)])
    told: list[tuple[str, float]] = []
    with pytest.raises(OSError, match="down 3"):
        retried(call, delays=(0.5, 1.0), give_up=lambda: call.calls > 3,
                on_retry=lambda error, pause: told.append((str(error), pause)))
    assert call.calls == 4
    assert told == [("down 0", 0.5), ("down 1", 1.0), ("down 2", 1.0)]
    assert pauses == [0.5, 1.0, 1.0]


def test_an_interrupt_is_never_retried_and_a_given_sleep_is_used(pauses):
    call = Flaky([KeyboardInterrupt()])
    with pytest.raises(KeyboardInterrupt):
        retried(call, delays=(1.0,))
    assert call.calls == 1
    mine: list[float] = []
    assert retried(Flaky([OSError()], "ok"), delays=(3.0,), sleep=mine.append) == "ok"
    assert (mine, pauses) == ([3.0], [])
    with pytest.raises(ValueError, match="attempts"):
        retried(Flaky([]), attempts=0)


def test_sweep_store_calls_retry_a_locked_database_eight_times_doubling_from_a_quarter_second(pauses):
    assert runs.LOCK_DELAYS_S == (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
    call = Flaky([RuntimeError(LOCKED)] * 8)
    with pytest.raises(RuntimeError):
        runs.with_retry(call)
    assert call.calls == 8
    assert pauses == list(runs.LOCK_DELAYS_S)
    passed = runs.with_retry(lambda *args, **kwargs: (args, kwargs), 1, key="v")
    assert passed == ((1,), {"key": "v"})


class RacingClient:
    """An MLflow client where every create fails; the experiment appears (another worker made it) after
    `appears_after` failed creates (None: never)."""

    def __init__(self, appears_after: int | None) -> None:
        self.appears_after, self.looks, self.creates = appears_after, 0, 0

    def get_experiment_by_name(self, name: str) -> Experiment | None:
        self.looks += 1
        if self.appears_after is not None and self.creates >= self.appears_after:
            return Experiment("7", name, "", "active")
        return None

    def create_experiment(self, name: str) -> str:
        self.creates += 1
        raise MlflowException("UNIQUE constraint failed: experiments.name")


def test_ensure_experiment_looks_again_after_a_lost_race(pauses):
    client = RacingClient(appears_after=2)
    assert mlflow_run.ensure_experiment(client, "ncflow") == "7"
    assert (client.looks, client.creates) == (3, 2)
    assert pauses == pytest.approx([0.2, 0.4])


def test_ensure_experiment_gives_up_after_five_looks(pauses):
    client = RacingClient(appears_after=None)
    with pytest.raises(MlflowException, match="could not create or find MLflow experiment 'ncflow'"):
        mlflow_run.ensure_experiment(client, "ncflow")
    assert (client.looks, client.creates) == (5, 5)
    assert pauses == pytest.approx([0.2, 0.4, 0.6, 0.8])


class DownClient:
    """An MLflow client whose server refuses every write."""

    def __init__(self) -> None:
        self.calls = 0

    def log_batch(self, *args, **kwargs) -> None:
        self.calls += 1
        raise ConnectionError("connection refused")


def test_ship_pending_retries_until_told_to_stop_and_keeps_the_entries(tmp_path, pauses):
    record = RunRecord.create(tmp_path, "run1", {})
    record.metrics(1, {"nc/nc1": 0.5})
    record.tags({"ncflow.status": "running"})
    client = DownClient()
    left = ship_pending(client, record, should_stop=lambda: client.calls >= 4)
    assert left == 2
    assert record.shipped() == 0
    assert client.calls == 4
    assert pauses == [0.5, 1.0, 2.0]
