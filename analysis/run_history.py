"""One run's per-epoch history: read from MLflow, cached on local disk, and many of them as one long frame.

A run's history is read from its `schema.HISTORY_FILE` artifact (one download instead of one request per
metric), else from `MlflowClient.get_metric_history` (runs without the artifact). Summary metrics (logged at
step 0 under `schema.SUMMARY_PREFIXES`) are not history. An ended run's history never changes, so it is
cached under a directory keyed by (run id, end time). `analysis.store.load_histories` puts these together.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import mlflow.artifacts
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from ncshared.schema import HISTORY_EPOCH, HISTORY_FILE, SUMMARY_PREFIXES

ENDED_STATUSES = ("FINISHED", "FAILED", "KILLED")  # MLflow run statuses after which a run no longer changes
LONG_COLUMNS = ("run_id", HISTORY_EPOCH, "metric", "value")


def default_cache_dir() -> Path:
    """`$NCFLOW_ANALYSIS_CACHE`, else `$XDG_CACHE_HOME/ncflow-analysis`, else `~/.cache/ncflow-analysis`."""
    if os.environ.get("NCFLOW_ANALYSIS_CACHE"):
        return Path(os.environ["NCFLOW_ANALYSIS_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "ncflow-analysis"


@dataclass(frozen=True)
class History:
    """One run's per-epoch metrics: `values[i, j]` is metric `metrics[j]` at epoch `epochs[i]` (NaN: not logged)."""

    epochs: np.ndarray  # int64, increasing, unique
    metrics: tuple[str, ...]
    values: np.ndarray  # float64, len(epochs) × len(metrics)

    @classmethod
    def from_wide(cls, wide: pd.DataFrame) -> "History":
        """From a frame with an `epoch` column and one column per metric (the history artifact's layout).

        Non-numeric cells become NaN; a repeated epoch (a resumed run re-logging it) keeps its last row.
        """
        wide = wide.apply(pd.to_numeric, errors="coerce").dropna(subset=[HISTORY_EPOCH])
        wide = wide.drop_duplicates(HISTORY_EPOCH, keep="last").sort_values(HISTORY_EPOCH)
        metrics = tuple(str(c) for c in wide.columns if c != HISTORY_EPOCH)
        values = wide[list(metrics)].to_numpy(dtype=float).reshape(len(wide), len(metrics))
        return cls(wide[HISTORY_EPOCH].to_numpy(dtype="int64"), metrics, values)


class HistoryCache:
    """`History` arrays as `<run_id>-<end_time>.npz` files (no pickle).

    Only ended runs are cached: their history is immutable, and a resumed run gets a new end time.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    @staticmethod
    def key(run: Mapping[str, Any]) -> str | None:
        """The cache key of a runs-frame row, or None when the run may still change."""
        end_time = run.get("end_time")
        if run.get("mlflow_status") not in ENDED_STATUSES or end_time is None or pd.isna(end_time):
            return None
        return f"{run['run_id']}-{int(end_time)}"

    def path(self, key: str) -> Path:
        return self.directory / f"{key}.npz"

    def read(self, key: str) -> History | None:
        """The cached history, or None (absent, truncated or foreign: fetch again)."""
        try:
            with np.load(self.path(key), allow_pickle=False) as data:
                return History(data["epochs"], tuple(str(m) for m in data["metrics"]), data["values"])
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            return None

    def write(self, key: str, history: History) -> None:
        """Write atomically (temp file, then rename), so a concurrent reader never sees half a file."""
        self.directory.mkdir(parents=True, exist_ok=True)
        handle, temp = tempfile.mkstemp(dir=self.directory, suffix=".npz.tmp")
        try:
            with os.fdopen(handle, "wb") as file:
                np.savez(file, epochs=history.epochs, metrics=np.array(history.metrics, dtype=str),
                         values=history.values)
            os.replace(temp, self.path(key))
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(temp)


@contextlib.contextmanager
def quiet_artifact_downloads() -> Iterator[None]:
    """Silence MLflow's per-file download progress bar (ours counts runs) unless the user set it."""
    name = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    if name in os.environ:
        yield
        return
    os.environ[name] = "false"
    try:
        yield
    finally:
        os.environ.pop(name, None)


def download_history_csv(artifact_uri: str, tracking_uri: str, name: str = HISTORY_FILE) -> History | None:
    """The run's history artifact (or another per-epoch CSV artifact `name` with an `epoch` column, such as
    `schema.LAYERS_FILE`), or None when the run has no such artifact (or it has no `epoch` column)."""
    with tempfile.TemporaryDirectory() as directory:
        try:
            path = mlflow.artifacts.download_artifacts(
                artifact_uri=f"{artifact_uri.rstrip('/')}/{name}", dst_path=directory,
                tracking_uri=tracking_uri,
            )
        except (MlflowException, OSError):
            return None
        wide = pd.read_csv(path)
    return History.from_wide(wide) if HISTORY_EPOCH in wide.columns else None


def history_from_metrics(client: MlflowClient, run_id: str, prefix: str = "") -> History:
    """The history from `get_metric_history`, one request per per-epoch metric key (the slow path); only the
    keys starting with `prefix` when given."""
    keys = sorted(k for k in client.get_run(run_id).data.metrics
                  if not k.startswith(SUMMARY_PREFIXES) and k.startswith(prefix))
    if not keys:
        return History(np.empty(0, dtype="int64"), (), np.empty((0, 0)))
    columns = {}
    for key in keys:
        points = sorted(client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp))
        columns[key] = pd.Series({m.step: m.value for m in points}, dtype=float)  # last write of a step wins
    return History.from_wide(pd.DataFrame(columns).rename_axis(HISTORY_EPOCH).reset_index())


def fetch_history(client: MlflowClient, tracking_uri: str, run: Mapping[str, Any]) -> History:
    """One run's history: the history artifact if the run has it, else its metric histories."""
    artifact_uri = run.get("artifact_uri")
    if isinstance(artifact_uri, str) and artifact_uri:
        history = download_history_csv(artifact_uri, tracking_uri)
        if history is not None:
            return history
    return history_from_metrics(client, str(run["run_id"]))


def _string_column(codes: np.ndarray, names: Sequence[str]) -> pd.Series:
    """names[codes] as a string column in pandas' default string dtype, built without per-row Python objects."""
    dtype = pd.Series(["x"]).dtype
    if getattr(dtype, "storage", None) == "pyarrow":
        import pyarrow as pa

        dictionary = pa.DictionaryArray.from_arrays(pa.array(codes.astype("int32")),
                                                    pa.array(list(names), pa.string()))
        return pd.Series(dictionary.cast(pa.string()).to_pandas(types_mapper={pa.string(): dtype}.get))
    return pd.Series(np.asarray(names, dtype=object)[codes], dtype=dtype)


def to_long(run_ids: Sequence[str], histories: Sequence[History]) -> pd.DataFrame:
    """Histories → one long frame `run_id, epoch, metric, value` (run, then metric, then epoch; NaN dropped)."""
    names = list(dict.fromkeys(m for h in histories for m in h.metrics))
    index = {name: code for code, name in enumerate(names)}
    run_codes, epochs, metric_codes = [np.empty(0, "int64")], [np.empty(0, "int64")], [np.empty(0, "int64")]
    values = [np.empty(0)]
    for code, history in enumerate(histories):
        n_epochs, n_metrics = history.values.shape
        run_codes.append(np.full(n_epochs * n_metrics, code, dtype="int64"))
        epochs.append(np.tile(history.epochs, n_metrics))
        metric_codes.append(np.repeat(np.array([index[m] for m in history.metrics], dtype="int64"), n_epochs))
        values.append(history.values.T.ravel())
    value = np.concatenate(values)
    keep = ~np.isnan(value)
    columns = (_string_column(np.concatenate(run_codes)[keep], run_ids), np.concatenate(epochs)[keep].astype("int64"),
               _string_column(np.concatenate(metric_codes)[keep], names), value[keep])
    return pd.DataFrame(dict(zip(LONG_COLUMNS, columns)))
