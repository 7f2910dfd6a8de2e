"""A sweep's Optuna storage, and the sweep lock that serialises every enqueue and claim on one study.

`--storage` is a journal file path (Optuna's `JournalStorage` over `JournalFileBackend`; the default,
`optuna.journal` in the working directory), `sqlite:///FILE`, or `postgresql://…` for workers on many machines.
The sweep lock is a file lock (fcntl) beside a journal or SQLite storage, which holds between the processes of one
machine, and a PostgreSQL advisory lock for a PostgreSQL storage, which holds across machines.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
from pathlib import Path
from typing import Iterator

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial

from ncflow.engine.config import ConfigError

# A JournalFileBackend file under the working directory's `.ncflow/` (git-ignored, beside the run records); the
# sweep lock files sit next to it. A sweep started before this default (./optuna.journal) keeps its journal.
DEFAULT_STORAGE = ".ncflow/optuna.journal"
OLD_DEFAULT_STORAGE = "optuna.journal"


def storage_url(raw: str | None) -> str:
    """Normalise `--storage`: a file path (journal), `sqlite:///…`, or `postgresql://…` (psycopg2 driver)."""
    text = (raw or "").strip()
    if text in ("", "default", "none"):
        text = DEFAULT_STORAGE
        if not Path(text).exists() and Path(OLD_DEFAULT_STORAGE).exists():
            text = OLD_DEFAULT_STORAGE
        else:
            Path(text).parent.mkdir(parents=True, exist_ok=True)
    for bare in ("postgresql://", "postgres://"):
        if text.startswith(bare):  # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3; ncflow ships psycopg2
            return "postgresql+psycopg2://" + text[len(bare) :]
    if "://" in text:
        return text
    return str(Path(text).expanduser().resolve())


def storage_kind(url: str) -> str:
    """`journal`, `sqlite` or `postgresql`; anything else is refused with one line."""
    if "://" not in url:
        return "journal"
    scheme = url.split("://", 1)[0]
    if scheme == "sqlite":
        return "sqlite"
    if scheme.startswith("postgresql"):
        return "postgresql"
    raise ConfigError(f"storage: {scheme}:// is not supported; use a journal file path, sqlite:/// or postgresql://")


def open_storage(url: str) -> BaseStorage:
    """The Optuna storage behind a normalised URL."""
    kind = storage_kind(url)
    if kind == "journal":
        Path(url).parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(url))
    return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True} if kind == "postgresql" else {})


def study_trials(storage: BaseStorage, study_name: str) -> list[FrozenTrial]:
    """Every trial of a study (none when the study does not exist yet)."""
    try:
        study_id = storage.get_study_id_from_name(study_name)
    except KeyError:
        return []
    return storage.get_all_trials(study_id, deepcopy=False)


def existing_trials(url: str, study_name: str) -> list[FrozenTrial]:
    """The study's trials without creating anything (a missing journal file means no trials)."""
    if storage_kind(url) == "journal" and not Path(url).exists():
        return []
    return study_trials(open_storage(url), study_name)


def trial_id(storage: BaseStorage, study_name: str, number: int) -> int:
    """The storage's id of trial `number` of the study."""
    return storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study_name), number)


def _lock_key(name: str) -> int:
    """A signed 64-bit key for pg_advisory_lock, stable across processes."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


def _sqlite_path(url: str) -> Path:
    return Path(url.split("sqlite:///", 1)[1].split("?", 1)[0]).resolve()


@contextlib.contextmanager
def sweep_lock(url: str, name: str) -> Iterator[None]:
    """Mutual exclusion between every process working on study `name`, on this machine or (PostgreSQL) any."""
    kind = storage_kind(url)
    if kind == "postgresql":
        import sqlalchemy

        engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
        try:
            with engine.connect() as connection:
                connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": _lock_key(name)})
                try:
                    yield
                finally:
                    connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": _lock_key(name)})
        finally:
            engine.dispose()
        return
    base = Path(url) if kind == "journal" else _sqlite_path(url)
    lock_path = base.with_name(f"{base.name}.{hashlib.sha256(name.encode()).hexdigest()[:8]}.lock")
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
