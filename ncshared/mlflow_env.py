"""What the environment says about MLflow: which tracking store, and which run `mlflow run` made for us.

One definition each, used by training, sweeps and the analysis alike:
- the tracking URI is the one given, else `MLFLOW_TRACKING_URI`, else MLflow's local default
  (`sqlite:///mlflow.db` in MLflow 3). It is resolved per call and never set globally, so one process can
  work with several stores;
- under `mlflow run`, MLflow creates the run before our code starts and passes its id in `MLFLOW_RUN_ID`;
  that run is adopted (not a second one created), and its experiment is the one MLflow was told.
"""

from __future__ import annotations

import os

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

    Checks the scheme, that a sqlite file's directory is writable, and that an http(s) server answers
    within `timeout_s` (MLflow's own client retries for about four minutes before it gives up).
    """
    import urllib.error
    import urllib.parse
    import urllib.request
    from pathlib import Path

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
        file = Path(path)
        directory = file.parent if str(file.parent) else Path(".")
        if not directory.is_dir():
            raise StoreUnavailable(f"tracking_uri: {tracking_uri!r}: the directory {directory} does not exist")
        writable = os.access(file, os.R_OK | os.W_OK) if file.exists() else os.access(directory, os.W_OK)
        if not writable or Path("/proc") in (directory, *directory.parents):
            raise StoreUnavailable(f"tracking_uri: {tracking_uri!r}: {file} cannot be written")
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
