"""Read ncflow runs from an MLflow tracking store (local `sqlite:///…` or `http://host:port`) into pandas.

Two tidy frames, read once and cached (docs/tracking.md is the contract for what training writes):

- `load_runs` → one row per run. Columns, in order: `run_id, run_name, experiment_id, mlflow_status,
  start_time, end_time` (ms, nullable Int64), `status, condition, sweep, fail_reason, divergence_reason`
  (the `ncflow.*` tags), `parent_run_id` (tag `mlflow.parentRunId`), `kind` (tag `ncflow.kind`),
  `artifact_uri`; then every param under its own name, parsed (`7` → int, `2e-4` and `0.0002` → 0.0002,
  `true`/`false` → bool, `none`/`off`/empty → None/NaN, anything else — `auto`, `300,450` — stays a string);
  then every metric key as a float column holding the run's latest value (summary metrics such as
  `collapse/T_NC`, and the last epoch of per-epoch metrics such as `nc/nc1`). A metric key that is also a
  param or fixed column name (`lr`: the configured rate vs the last epoch's rate) gets the column `metrics.<key>`.
- `load_histories` → long frame `run_id, epoch, metric, value`: every per-epoch metric of every run
  (summary metrics, logged at step 0 under `collapse/` and `intervention/`, are not history). It reads each run's
  `history.csv` artifact (one download instead of one request per metric) concurrently, falls back to
  `MlflowClient.get_metric_history` for runs without it, and caches each ended run's history under
  `cache_dir` keyed by (run_id, end_time): an ended run's history never changes, so a repeated report reads
  only local files. NaN values (a missing cell, or a logged NaN loss) are dropped; divergence is in the tags.

This module never imports torch (nor `ncflow`), so it runs on a laptop against a remote tracking server.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import tempfile
import urllib.error
import urllib.request
import zipfile
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import mlflow
import mlflow.artifacts
import numpy as np
import pandas as pd
from mlflow.entities import Run, ViewType
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from tqdm.auto import tqdm

FIXED_COLUMNS = (
    "run_id", "run_name", "experiment_id", "mlflow_status", "start_time", "end_time", "status", "condition",
    "sweep", "fail_reason", "divergence_reason", "parent_run_id", "kind", "artifact_uri",
)
TAG_COLUMNS = {
    "status": "ncflow.status", "condition": "ncflow.condition", "sweep": "ncflow.sweep",
    "fail_reason": "ncflow.fail_reason", "divergence_reason": "ncflow.divergence_reason",
    "parent_run_id": "mlflow.parentRunId", "kind": "ncflow.kind",
}
HISTORY_ARTIFACT = "history.csv"
SUMMARY_PREFIXES = ("collapse/", "intervention/")
MLFLOW_STATUSES = ("RUNNING", "SCHEDULED", "FINISHED", "FAILED", "KILLED")
ENDED_STATUSES = ("FINISHED", "FAILED", "KILLED")
NULL_WORDS = ("none", "off", "null", "")
PAGE_SIZE = 1000
FETCH_WORKERS = 16
_INT = re.compile(r"[+-]?\d+\Z")


class StoreError(RuntimeError):
    """The store cannot be read as asked; the message is one line naming the URI, experiment or filter."""


# ------------------------------------------------------------------------------------------- parsing


def parse_param(text: str) -> Any:
    """A logged param string as a value: int, float, bool, None, or the string itself.

    >>> [parse_param(s) for s in ("7", "2e-4", "0.0002", "true", "none", "off", "auto", "300,450")]
    [7, 0.0002, 0.0002, True, None, None, 'auto', '300,450']
    """
    stripped = str(text).strip()
    lowered = stripped.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in NULL_WORDS:
        return None
    if _INT.match(stripped):
        return int(stripped)
    try:
        return float(stripped)
    except ValueError:
        return stripped


def _same_value(logged: Any, wanted: Any) -> bool:
    """Parsed-value equality: 2e-4 equals 0.0002, 7 equals 7.0, None equals NaN."""
    if _is_missing(logged) or _is_missing(wanted):
        return _is_missing(logged) and _is_missing(wanted)
    if isinstance(logged, bool) or isinstance(wanted, bool):
        return logged is wanted
    if isinstance(logged, (int, float)) and isinstance(wanted, (int, float)):
        return float(logged) == float(wanted)
    return logged == wanted


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


# ------------------------------------------------------------------------------------ the tracking URI


def resolve_tracking_uri(tracking_uri: str | None) -> str:
    """The URI to read: the argument, else MLFLOW_TRACKING_URI, else MLflow's local default."""
    return tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or mlflow.get_tracking_uri()


def check_reachable(tracking_uri: str, timeout_s: float = 5.0) -> None:
    """For an http(s) URI, fail fast (instead of MLflow's minutes of retries) when no server answers."""
    if not tracking_uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(f"{tracking_uri.rstrip('/')}/health", timeout=timeout_s):
            return
    except urllib.error.HTTPError:
        return  # something answered (a proxy without /health, an auth wall): let MLflow report the details
    except (urllib.error.URLError, OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        raise StoreError(f"cannot reach the MLflow tracking server at {tracking_uri}: {reason}") from None


def make_client(tracking_uri: str | None) -> tuple[MlflowClient, str]:
    """A client for the resolved URI (checked reachable), and that URI."""
    uri = resolve_tracking_uri(tracking_uri)
    check_reachable(uri)
    try:
        return MlflowClient(tracking_uri=uri), uri
    except MlflowException:
        raise StoreError(f"bad tracking URI {uri!r}: not a store MLflow can open "
                         "(sqlite:///path.db, http(s)://host:port, postgresql://…, file:///path)") from None


def _first_line(error: BaseException) -> str:
    text = getattr(error, "message", None) or str(error)
    return text.strip().splitlines()[0] if text.strip() else type(error).__name__


# --------------------------------------------------------------------------------------- load_runs


def _quote(value: str) -> str:
    """A filter-string literal for value."""
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise StoreError(f"cannot filter on a value with both quote characters: {value!r}")


def build_filter(sweep: str | None, status: str | None, kind: str, params: Mapping[str, Any]) -> str:
    """The server-side part of the filters (exact strings only; numbers are compared after parsing).

    `status` in upper case (FINISHED, FAILED, …) filters MLflow's run status, otherwise the ncflow.status tag.
    `kind="train"` is applied client-side (runs without the tag count as training runs); `kind="any"` not at all.
    """
    clauses = []
    if sweep is not None:
        clauses.append(f"tags.`ncflow.sweep` = {_quote(sweep)}")
    if status is not None:
        if status in MLFLOW_STATUSES:
            clauses.append(f"attributes.status = {_quote(status)}")
        else:
            clauses.append(f"tags.`ncflow.status` = {_quote(status)}")
    if kind not in ("train", "any"):
        clauses.append(f"tags.`ncflow.kind` = {_quote(kind)}")
    for name, wanted in params.items():
        value = parse_param(str(wanted))
        if isinstance(value, str) and "`" not in name and not ("'" in value and '"' in value):
            clauses.append(f"params.`{name}` = {_quote(value)}")
    return " and ".join(clauses)


def _experiment_ids(client: MlflowClient, experiment: str | None, uri: str) -> list[str]:
    """Ids of the named experiment (None: every active experiment)."""
    try:
        if experiment is None:
            return [e.experiment_id for e in client.search_experiments(view_type=ViewType.ACTIVE_ONLY)]
        found = client.get_experiment_by_name(experiment)
    except MlflowException as error:
        raise StoreError(f"cannot read the tracking store at {uri}: {_first_line(error)}") from None
    if found is None:
        raise StoreError(f"no experiment named {experiment!r} in the tracking store at {uri}")
    return [found.experiment_id]


def search_all_runs(client: MlflowClient, experiment_ids: list[str], filter_string: str) -> list[Run]:
    """Every active run matching the filter, following page tokens."""
    runs: list[Run] = []
    token = None
    while True:
        page = client.search_runs(experiment_ids, filter_string, run_view_type=ViewType.ACTIVE_ONLY,
                                  max_results=PAGE_SIZE, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def run_record(run: Run) -> tuple[dict[str, Any], dict[str, Any], dict[str, float]]:
    """(fixed columns, parsed params, metrics) of one run."""
    info, tags = run.info, run.data.tags
    fixed = {
        "run_id": info.run_id, "run_name": info.run_name or tags.get("mlflow.runName"),
        "experiment_id": info.experiment_id, "mlflow_status": info.status,
        "start_time": info.start_time, "end_time": info.end_time, "artifact_uri": info.artifact_uri,
    }
    fixed.update({column: tags.get(tag) for column, tag in TAG_COLUMNS.items()})
    params = {key: parse_param(value) for key, value in run.data.params.items()}
    return fixed, params, dict(run.data.metrics)


def runs_frame(records: list[tuple[dict[str, Any], dict[str, Any], dict[str, float]]]) -> pd.DataFrame:
    """Assemble run records into the documented frame (fixed columns, params, metrics; sorted by start time)."""
    param_names = sorted({name for _, params, _ in records for name in params} - set(FIXED_COLUMNS))
    metric_keys = sorted({key for _, _, metrics in records for key in metrics})
    taken = set(FIXED_COLUMNS) | set(param_names)
    columns: dict[str, pd.Series] = {
        name: pd.Series([fixed[name] for fixed, _, _ in records]) for name in FIXED_COLUMNS
    }
    for name in ("start_time", "end_time"):
        columns[name] = pd.Series([fixed[name] for fixed, _, _ in records], dtype="Int64")
    for name in param_names:
        columns[name] = param_column([params.get(name) for _, params, _ in records])
    for key in metric_keys:
        column = f"metrics.{key}" if key in taken else key
        columns[column] = pd.Series([metrics.get(key, math.nan) for _, _, metrics in records], dtype=float)
    frame = pd.DataFrame(columns)
    return frame.sort_values(["start_time", "run_name", "run_id"], na_position="last").reset_index(drop=True)


def param_column(values: list[Any]) -> pd.Series:
    """Parsed values of one param as a column: int64 if all ints, float64 if numbers and None (→ NaN),
    bool if all booleans, otherwise object (strings, None, or a mix such as `auto` and 0.02)."""
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        if len(present) == len(values) and all(isinstance(v, int) for v in present):
            return pd.Series(values, dtype="int64")
        return pd.Series([math.nan if v is None else float(v) for v in values], dtype="float64")
    if present and len(present) == len(values) and all(isinstance(v, bool) for v in present):
        return pd.Series(values, dtype=bool)
    return pd.Series(values, dtype=object)


def _kind_matches(run: Run, kind: str) -> bool:
    """kind="train" also accepts runs without an ncflow.kind tag; other kinds were filtered by the server."""
    return kind != "train" or run.data.tags.get("ncflow.kind", "train") == "train"


def _keep_params(frame: pd.DataFrame, params: Mapping[str, Any]) -> pd.DataFrame:
    keep = pd.Series(True, index=frame.index)
    for name, wanted in params.items():
        if name not in frame.columns:
            return frame.iloc[0:0]
        value = parse_param(str(wanted))
        keep &= frame[name].map(lambda logged, value=value: _same_value(logged, value)).astype(bool)
    return frame[keep]


def load_runs(
    tracking_uri: str | None = None,
    experiment: str | None = "ncflow",
    sweep: str | None = None,
    status: str | None = None,
    params: Mapping[str, str] | None = None,
    kind: str = "train",
) -> pd.DataFrame:
    """One row per run of `experiment` (None: all experiments); see the module docstring for the columns.

    Filters: `sweep` (tag ncflow.sweep), `status` (tag ncflow.status, e.g. `collapsed`; in upper case MLflow's
    run status, e.g. `FINISHED`), `params` (name → value, compared as parsed values so `2e-4` matches `0.0002`),
    `kind` (tag ncflow.kind: `train` keeps training runs and runs without the tag — runs logged before the tag
    existed, or by hand — but not sweep parents or analysis runs; `sweep`/`analysis` keep only those; `any` all).
    Deleted runs are never read. No match gives an empty frame with the fixed columns.
    """
    params = dict(params or {})
    client, uri = make_client(tracking_uri)
    experiment_ids = _experiment_ids(client, experiment, uri)
    filter_string = build_filter(sweep, status, kind, params)
    try:
        found = search_all_runs(client, experiment_ids, filter_string) if experiment_ids else []
    except MlflowException as error:
        raise StoreError(f"cannot search runs at {uri} (filter {filter_string!r}): {_first_line(error)}") from None
    runs = [run for run in found if _kind_matches(run, kind)]
    if not runs:
        return pd.DataFrame({name: pd.Series(dtype=object) for name in FIXED_COLUMNS})
    frame = _keep_params(runs_frame([run_record(run) for run in runs]), params)
    return frame.reset_index(drop=True)


# ----------------------------------------------------------------------------------- load_histories


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
        """From a frame with an `epoch` column and one column per metric (history.csv's layout).

        Non-numeric cells become NaN; a repeated epoch (a resumed run re-logging it) keeps its last row.
        """
        wide = wide.apply(pd.to_numeric, errors="coerce").dropna(subset=["epoch"])
        wide = wide.drop_duplicates("epoch", keep="last").sort_values("epoch")
        metrics = tuple(str(c) for c in wide.columns if c != "epoch")
        values = wide[list(metrics)].to_numpy(dtype=float).reshape(len(wide), len(metrics))
        return cls(wide["epoch"].to_numpy(dtype="int64"), metrics, values)


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
def _quiet_artifact_downloads() -> Iterator[None]:
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


def download_history_csv(artifact_uri: str, tracking_uri: str) -> History | None:
    """The run's history.csv, or None when the run has no such artifact (or it has no `epoch` column)."""
    with tempfile.TemporaryDirectory() as directory:
        try:
            path = mlflow.artifacts.download_artifacts(
                artifact_uri=f"{artifact_uri.rstrip('/')}/{HISTORY_ARTIFACT}", dst_path=directory,
                tracking_uri=tracking_uri,
            )
        except (MlflowException, OSError):
            return None
        wide = pd.read_csv(path)
    return History.from_wide(wide) if "epoch" in wide.columns else None


def history_from_metrics(client: MlflowClient, run_id: str) -> History:
    """The history from `get_metric_history`, one request per per-epoch metric key (the slow path)."""
    keys = sorted(k for k in client.get_run(run_id).data.metrics if not k.startswith(SUMMARY_PREFIXES))
    if not keys:
        return History(np.empty(0, dtype="int64"), (), np.empty((0, 0)))
    columns = {}
    for key in keys:
        points = sorted(client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp))
        columns[key] = pd.Series({m.step: m.value for m in points}, dtype=float)  # last write of a step wins
    return History.from_wide(pd.DataFrame(columns).rename_axis("epoch").reset_index())


def fetch_history(client: MlflowClient, tracking_uri: str, run: Mapping[str, Any]) -> History:
    """One run's history: history.csv if the run has it, else its metric histories."""
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
    return pd.DataFrame({
        "run_id": _string_column(np.concatenate(run_codes)[keep], run_ids),
        "epoch": np.concatenate(epochs)[keep].astype("int64"),
        "metric": _string_column(np.concatenate(metric_codes)[keep], names),
        "value": value[keep],
    })


def load_histories(
    runs: pd.DataFrame,
    tracking_uri: str | None = None,
    cache_dir: Path | None = None,
    progress: bool = False,
    max_workers: int = FETCH_WORKERS,
) -> pd.DataFrame:
    """Every per-epoch metric of every run in `runs` as a long frame `run_id, epoch, metric, value`.

    Cached histories (ended runs, keyed by run id and end time, under `cache_dir` or `default_cache_dir()`)
    are read locally; the others are fetched concurrently (history.csv, else metric histories) and cached.
    Rows follow the order of `runs`, then metric (history.csv column order), then epoch.
    """
    cache = HistoryCache(cache_dir if cache_dir is not None else default_cache_dir())
    records = [
        {name: row.get(name) for name in ("run_id", "end_time", "mlflow_status", "artifact_uri")}
        for row in runs.to_dict("records")
    ]
    found: dict[str, History] = {}
    missing = []
    for run in records:
        key = HistoryCache.key(run)
        cached = cache.read(key) if key else None
        if cached is None:
            missing.append(run)
        else:
            found[run["run_id"]] = cached
    if missing:
        found.update(_fetch_all(missing, tracking_uri, cache, progress, max_workers, done=len(found)))
    run_ids = [str(run["run_id"]) for run in records]
    return to_long(run_ids, [found[run_id] for run_id in run_ids])


def _fetch_all(runs: list[dict[str, Any]], tracking_uri: str | None, cache: HistoryCache, progress: bool,
               max_workers: int, done: int) -> dict[str, History]:
    """Fetch (and cache) the histories of `runs` with a thread pool and an optional progress bar."""
    client, uri = make_client(tracking_uri)
    fetched: dict[str, History] = {}
    bar = tqdm(total=done + len(runs), initial=done, desc="histories", unit="run", disable=not progress)
    with _quiet_artifact_downloads(), bar, ThreadPoolExecutor(max_workers=max_workers) as pool:
        futures = {pool.submit(fetch_history, client, uri, run): run for run in runs}
        for future in as_completed(futures):
            run = futures[future]
            try:
                history = future.result()
            except MlflowException as error:
                raise StoreError(f"cannot read the history of run {run['run_id']} at {uri}: "
                                 f"{_first_line(error)}") from None
            key = HistoryCache.key(run)
            if key:
                cache.write(key, history)
            fetched[run["run_id"]] = history
            bar.update()
    return fetched
