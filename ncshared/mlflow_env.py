"""What the environment says about MLflow: which tracking store, and which run `mlflow run` made for us.

One definition each, used by training, sweeps and the analysis alike:
- the tracking URI is the one given, else `MLFLOW_TRACKING_URI`, else MLflow's local default
  (`sqlite:///mlflow.db` in MLflow 3). It is resolved per call and never set globally, so one process can
  work with several stores;
- under `mlflow run`, MLflow creates the run before our code starts and passes its id in `MLFLOW_RUN_ID`;
  that run is adopted (not a second one created), and its experiment is the one MLflow was told;
- a store is opened by `open_store` (every command line's one check: `check_store`, then one read), so a bad URI, a
  server that does not answer or a damaged database is one line (`StoreUnavailable`) before any work starts.
"""

from __future__ import annotations

import os
from pathlib import Path

from mlflow.tracking import MlflowClient

ADOPTED_RUN_VARIABLE = "MLFLOW_RUN_ID"


def resolve_tracking_uri(tracking_uri: str | None = None) -> str:
    """The given URI, else MLFLOW_TRACKING_URI, else MLflow's local default (read afresh on every call)."""
    if tracking_uri:
        return tracking_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    import mlflow

    return mlflow.get_tracking_uri()


def adopted_run_id() -> str | None:
    """The id of the run `mlflow run` created for this process, or None outside `mlflow run`."""
    return os.environ.get(ADOPTED_RUN_VARIABLE) or None


def adopted_experiment_name(client: MlflowClient) -> str | None:
    """The experiment of the adopted run (MLflow's `Default` unless `--experiment-name`), or None."""
    run_id = adopted_run_id()
    if run_id is None:
        return None
    experiment_id = client.get_run(run_id).info.experiment_id
    return client.get_experiment(experiment_id).name


def environment_without_adopted_run() -> dict[str, str]:
    """This process's environment minus MLFLOW_RUN_ID, for child processes that must open runs of their own."""
    return {name: value for name, value in os.environ.items() if name != ADOPTED_RUN_VARIABLE}


STORE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql", "http", "https", "file", "databricks")
CONNECT_TIMEOUT_S = 10.0


class StoreUnavailable(RuntimeError):
    """The tracking store cannot be used; the message is one line naming the URI and what is wrong."""


def check_store(tracking_uri: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Fail fast, in one line, on a store MLflow would reject only after minutes of retries or with a traceback.

    Checks the scheme, that a sqlite file's directory is writable and an existing file is an SQLite database, and
    that an http(s) server answers within `timeout_s` (MLflow's own client retries for about four minutes before it
    gives up).
    """
    import urllib.error
    import urllib.parse
    import urllib.request

    scheme = urllib.parse.urlparse(tracking_uri).scheme.split("+", 1)[0]
    if scheme == "" and "://" not in tracking_uri:
        return  # a local path: MLflow's file store
    if scheme not in STORE_SCHEMES:
        raise StoreUnavailable(
            f"tracking_uri: {tracking_uri!r} is not a store MLflow can open; use sqlite:///FILE.db, "
            "http(s)://HOST:PORT or postgresql://USER@HOST/DB"
        )
    if scheme == "sqlite":
        path = tracking_uri.split(":///", 1)[1] if ":///" in tracking_uri else ""
        if path in ("", ":memory:"):
            return
        file = Path(path.split("?", 1)[0])
        directory = file.parent if str(file.parent) else Path(".")
        if not directory.is_dir():
            raise StoreUnavailable(f"tracking_uri: {tracking_uri!r}: the directory {directory} does not exist")
        writable = os.access(file, os.R_OK | os.W_OK) if file.exists() else os.access(directory, os.W_OK)
        if not writable or Path("/proc") in (directory, *directory.parents):
            raise StoreUnavailable(f"tracking_uri: {tracking_uri!r}: {file} cannot be written")
        check_sqlite_file(tracking_uri, file)
    if scheme in ("http", "https"):
        try:
            with urllib.request.urlopen(f"{tracking_uri.rstrip('/')}/health", timeout=timeout_s):
                return
        except urllib.error.HTTPError:
            return  # something answered (a proxy without /health, an auth wall): MLflow reports the details
        except (urllib.error.URLError, OSError, ValueError) as error:
            reason = getattr(error, "reason", error)
            raise StoreUnavailable(
                f"tracking_uri: no MLflow tracking server answers at {tracking_uri} within {timeout_s:.0f} s ({reason})"
            ) from None


SQLITE_HEADER = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite database file


def check_sqlite_file(tracking_uri: str, file: Path) -> None:
    """An existing sqlite store's file must be an SQLite database (a directory, another file type or a file whose
    header was overwritten is refused in one line; damage further in is found by `open_store`'s first read)."""
    if file.is_dir():
        raise StoreUnavailable(f"tracking_uri: {tracking_uri!r}: {file} is a directory, not an SQLite database file")
    if not file.is_file():
        return  # MLflow creates it
    with file.open("rb") as handle:
        header = handle.read(len(SQLITE_HEADER))
    if header and header != SQLITE_HEADER:
        raise StoreUnavailable(f"tracking_uri: {tracking_uri!r}: {file} is not an SQLite database "
                               "(file is not a database)")


def open_store(tracking_uri: str | None = None, timeout_s: float = CONNECT_TIMEOUT_S) -> MlflowClient:
    """A client for the resolved store after `check_store` and one read (an experiment): every reason the store
    cannot be used — a bad URI, a server that does not answer, a damaged database, a file store MLflow refuses — is
    one `StoreUnavailable` line that keeps MLflow's own reason."""
    uri = resolve_tracking_uri(tracking_uri)
    check_store(uri, timeout_s)
    try:
        client = MlflowClient(tracking_uri=uri)
        client.search_experiments(max_results=1)
    except Exception as error:  # MLflow's own refusal of the URI, its database (sqlalchemy, sqlite3) or its server
        raise store_failure(uri, error) from None
    return client


FILE_STORE_SWITCH = "MLFLOW_ALLOW_FILE_STORE"  # MLflow 3's opt-in to its file store (`file:///DIR` or a bare path)


def store_failure(uri: str, error: BaseException) -> StoreUnavailable:
    """The one-line error for a store MLflow failed to open or read, with MLflow's own reason (its first line)."""
    text = str(getattr(error, "message", None) or error).strip()
    reason = text.splitlines()[0] if text else type(error).__name__
    if FILE_STORE_SWITCH in text:  # MLflow 3 refuses file stores unless the environment opts in
        import mlflow

        first_sentence = reason.split(". ", 1)[0]
        return StoreUnavailable(
            f"tracking_uri: {uri!r} is a file store, which MLflow {mlflow.__version__} opens only with "
            f"{FILE_STORE_SWITCH}=true ({first_sentence}); use sqlite:///FILE.db, http(s)://HOST:PORT or "
            "postgresql://USER@HOST/DB"
        )
    return StoreUnavailable(f"tracking_uri: cannot use the MLflow store {uri!r}: {reason[:300]}")
