"""Read ncflow runs from an MLflow tracking store (local `sqlite:///…` or `http://host:port`) into pandas.

Two tidy frames, read once and cached (`ncshared.schema` names what training writes):

- `load_runs` → one row per run. Columns, in order: `run_id, run_name, experiment_id, experiment` (its name),
  `mlflow_status, start_time, end_time` (ms, nullable Int64), `status, condition, sweep, fail_reason, divergence_reason,
  parent_run_id, kind, git_commit, env_torch, env_device, env_threads` (the tags of `TAG_COLUMNS`; the last four are
  provenance, None for a run logged before it was recorded), `artifact_uri`; then every param under its own name,
  parsed (`7` → int, `2e-4` and `0.0002` → 0.0002, `true`/`false` → bool, `none`/`off`/empty → None/NaN,
  anything else — `auto`, `300,450` — stays a string; a param added after a run was logged takes the value that
  run trained with, `schema.ADDED_PARAM_DEFAULTS`); then every metric key as a float column holding the
  run's latest value (summary metrics such as `schema.T_NC`, and the last epoch of per-epoch metrics such as
  `schema.NC1`). A metric key that is also a param or fixed column name (`schema.LR`: the configured rate
  vs the last epoch's rate) gets the column `metrics.<key>`.
- `load_histories` → long frame `run_id, epoch, metric, value`: every per-epoch metric of every run. It reads
  the runs' histories concurrently (`analysis.run_history`: the history artifact, else the metric
  histories) and caches each ended run's history under `cache_dir` keyed by (run_id, end_time), so a repeated
  report reads only local files. NaN values (a missing cell, or a logged NaN loss) are dropped; divergence is
  in the tags.

The tracking URI is resolved as everywhere in ncflow (`ncshared.mlflow_env.resolve_tracking_uri`). This module
never imports torch (nor `ncflow`), so it runs on a laptop against a remote tracking server.
"""

from __future__ import annotations

import math
import re
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Mapping

import pandas as pd
from mlflow.entities import Run, ViewType
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from tqdm.auto import tqdm

from analysis.run_history import (
    History,
    HistoryCache,
    default_cache_dir,
    fetch_history,
    quiet_artifact_downloads,
    to_long,
)
from ncshared import schema
from ncshared.mlflow_env import resolve_tracking_uri

PROVENANCE_COLUMNS = {  # runs-frame column → the provenance tag it holds: what one condition's runs must share
    "git_commit": schema.TAG_GIT_COMMIT, "env_torch": schema.TAG_TORCH, "env_device": schema.TAG_DEVICE,
    "env_threads": schema.TAG_THREADS,
}
FIXED_COLUMNS = (
    "run_id", "run_name", "experiment_id", "experiment", "mlflow_status", "start_time", "end_time", "status", "condition",
    "sweep", "fail_reason", "divergence_reason", "parent_run_id", "kind", "source", *PROVENANCE_COLUMNS, "artifact_uri",
)
TAG_COLUMNS = {  # runs-frame column → the tag it holds
    "status": schema.TAG_STATUS, "condition": schema.TAG_CONDITION, "sweep": schema.TAG_SWEEP,
    "fail_reason": schema.TAG_FAIL_REASON, "divergence_reason": schema.TAG_DIVERGENCE_REASON,
    "parent_run_id": schema.TAG_PARENT_RUN, "kind": schema.TAG_KIND, "source": schema.TAG_SOURCE, **PROVENANCE_COLUMNS,
}
HISTORY_ARTIFACT = schema.HISTORY_FILE
RunRow = tuple[dict[str, Any], dict[str, Any], dict[str, float]]  # one run's (fixed columns, parsed params, metrics)
SUMMARY_PREFIXES = schema.SUMMARY_PREFIXES
ANY_KIND = "any"  # `load_runs(kind=ANY_KIND)`: runs of every kind
MLFLOW_STATUSES = ("RUNNING", "SCHEDULED", "FINISHED", "FAILED", "KILLED")
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


def same_param_value(logged: Any, wanted: Any) -> bool:
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


def first_line(error: BaseException) -> str:
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


def build_filter(sweep: str | None, status: str | None, kind: str, params: Mapping[str, Any],
                 strict_kind: bool = False) -> str:
    """The server-side part of the filters (exact strings only; numbers are compared after parsing).

    `status` in upper case (FINISHED, FAILED, …) filters MLflow's run status, otherwise the status tag.
    A training kind is applied client-side (runs without the tag count as training runs) unless `strict_kind`
    (every experiment is read: only runs tagged as ncflow's); `ANY_KIND` not at all.
    """
    clauses = []
    if sweep is not None:
        clauses.append(f"tags.`{schema.TAG_SWEEP}` = {_quote(sweep)}")
    if status is not None:
        if status in MLFLOW_STATUSES:
            clauses.append(f"attributes.status = {_quote(status)}")
        else:
            clauses.append(f"tags.`{schema.TAG_STATUS}` = {_quote(status)}")
    if kind != ANY_KIND and (strict_kind or kind != schema.KIND_TRAIN):
        clauses.append(f"tags.`{schema.TAG_KIND}` = {_quote(kind)}")
    for name, wanted in params.items():
        value = parse_param(str(wanted))
        if isinstance(value, str) and "`" not in name and not ("'" in value and '"' in value):
            clauses.append(f"params.`{name}` = {_quote(value)}")
    return " and ".join(clauses)


def experiment_names(client: MlflowClient, experiment: str | None, uri: str) -> dict[str, str]:
    """Id → name of the named experiment (None: of every active experiment)."""
    try:
        if experiment is None:
            return {e.experiment_id: e.name for e in client.search_experiments(view_type=ViewType.ACTIVE_ONLY)}
        found = client.get_experiment_by_name(experiment)
    except MlflowException as error:
        raise StoreError(f"cannot read the tracking store at {uri}: {first_line(error)}") from None
    if found is None:
        raise StoreError(f"no experiment named {experiment!r} in the tracking store at {uri}")
    return {found.experiment_id: found.name}


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


def run_row(run: Run, experiments: Mapping[str, str] | None = None) -> RunRow:
    """One run's row of the runs frame, unassembled: (fixed columns, parsed params, metrics); `experiments` maps
    experiment ids to names."""
    info, tags = run.info, run.data.tags
    fixed = {
        "run_id": info.run_id, "run_name": info.run_name or tags.get(schema.TAG_RUN_NAME),
        "experiment_id": info.experiment_id, "experiment": (experiments or {}).get(info.experiment_id),
        "mlflow_status": info.status,
        "start_time": info.start_time, "end_time": info.end_time, "artifact_uri": info.artifact_uri,
    }
    fixed.update({column: tags.get(tag) for column, tag in TAG_COLUMNS.items()})
    params = {key: parse_param(value) for key, value in run.data.params.items()}
    return fixed, params, dict(run.data.metrics)


def runs_frame(rows: list[RunRow]) -> pd.DataFrame:
    """Assemble run rows (`run_row`) into the documented frame (fixed columns, params, metrics; sorted by start
    time)."""
    param_names = sorted({name for _, params, _ in rows for name in params} - set(FIXED_COLUMNS))
    metric_keys = sorted({key for _, _, metrics in rows for key in metrics})
    taken = set(FIXED_COLUMNS) | set(param_names)
    columns: dict[str, pd.Series] = {
        name: pd.Series([fixed[name] for fixed, _, _ in rows]) for name in FIXED_COLUMNS
    }
    for name in ("start_time", "end_time"):
        columns[name] = pd.Series([fixed[name] for fixed, _, _ in rows], dtype="Int64")
    for name in param_names:
        columns[name] = param_column([params.get(name) for _, params, _ in rows])
    for key in metric_keys:
        column = f"metrics.{key}" if key in taken else key
        columns[column] = pd.Series([metrics.get(key, math.nan) for _, _, metrics in rows], dtype=float)
    frame = pd.DataFrame(columns)
    for name, default in schema.ADDED_PARAM_DEFAULTS.items():  # a run from before the param trained with this
        if name in frame.columns:
            frame[name] = frame[name].where(frame[name].notna(), parse_param(default))
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
    """The training kind also accepts runs without a kind tag; other kinds were filtered by the server."""
    train = schema.KIND_TRAIN
    return kind != train or run.data.tags.get(schema.TAG_KIND, train) == train


def _keep_params(frame: pd.DataFrame, params: Mapping[str, Any]) -> pd.DataFrame:
    keep = pd.Series(True, index=frame.index)
    for name, wanted in params.items():
        if name not in frame.columns:
            return frame.iloc[0:0]
        value = parse_param(str(wanted))
        keep &= frame[name].map(lambda logged, value=value: same_param_value(logged, value)).astype(bool)
    return frame[keep]


def load_runs(
    tracking_uri: str | None = None,
    experiment: str | None = None,
    sweep: str | None = None,
    status: str | None = None,
    params: Mapping[str, str] | None = None,
    kind: str = schema.KIND_TRAIN,
) -> pd.DataFrame:
    """One row per run of `experiment` (None: every experiment); see the module docstring for the columns.

    Runs are found wherever they were logged: `mlflow run .` puts them in MLflow's `Default` experiment (or
    its `--experiment-name`), `ncflow train` in `ncflow`. Reading every experiment keeps only runs that carry
    ncflow's kind tag, so other projects' runs in a shared store stay out. Filters: `sweep` (the sweep tag), `status` (the status tag, e.g. `collapsed`; in upper case MLflow's run
    status, e.g. `FINISHED`), `params` (name → value, compared as parsed values so `2e-4` matches `0.0002`),
    `kind` (the kind tag: `train` keeps training runs and, in a named experiment, runs without the tag —
    runs logged before the tag existed, or by hand — but not sweep parents or analysis runs; `sweep`/`analysis` keep only those; `any` all).
    Deleted runs are never read. No match gives an empty frame with the fixed columns.
    """
    params = dict(params or {})
    client, uri = make_client(tracking_uri)
    experiments = experiment_names(client, experiment, uri)
    experiment_ids = list(experiments)
    filter_string = build_filter(sweep, status, kind, params, strict_kind=experiment is None)
    try:
        found = search_all_runs(client, experiment_ids, filter_string) if experiment_ids else []
    except MlflowException as error:
        raise StoreError(f"cannot search runs at {uri} (filter {filter_string!r}): {first_line(error)}") from None
    runs = [run for run in found if _kind_matches(run, kind)]
    if not runs:
        return pd.DataFrame({name: pd.Series(dtype=object) for name in FIXED_COLUMNS})
    frame = _keep_params(runs_frame([run_row(run, experiments) for run in runs]), params)
    return frame.reset_index(drop=True)


# ----------------------------------------------------------------------------------- load_histories


def load_histories(
    runs: pd.DataFrame,
    tracking_uri: str | None = None,
    cache_dir: Path | None = None,
    progress: bool = False,
    max_workers: int = FETCH_WORKERS,
) -> pd.DataFrame:
    """Every per-epoch metric of every run in `runs` as a long frame `run_id, epoch, metric, value`.

    Cached histories (ended runs, keyed by run id and end time, under `cache_dir` or `default_cache_dir()`)
    are read locally; the others are fetched concurrently (the history artifact, else metric histories) and
    cached. Rows follow the order of `runs`, then metric (the artifact's column order), then epoch.
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
    with quiet_artifact_downloads(), bar, ThreadPoolExecutor(max_workers=max_workers) as pool:
        futures = {pool.submit(fetch_history, client, uri, run): run for run in runs}
        for future in as_completed(futures):
            run = futures[future]
            try:
                history = future.result()
            except MlflowException as error:
                raise StoreError(f"cannot read the history of run {run['run_id']} at {uri}: "
                                 f"{first_line(error)}") from None
            key = HistoryCache.key(run)
            if key:
                cache.write(key, history)
            fetched[run["run_id"]] = history
            bar.update()
    return fetched
