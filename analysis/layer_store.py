"""The layer-wise runs' `schema.LAYERS_FILE` artifacts, as the long per-epoch frame of `store.load_histories`.

A run trained with `--layerwise` logs `layers/<l>/<name>` (`schema.layer_metric`) every epoch but keeps them out
of `history.csv`: they come in an artifact of their own, `layers.csv` (`epoch`, then every `layers/<l>/<name>`).
`load_layer_histories` reads it for each layer-wise run (`selection.is_layerwise`; a run without the artifact
falls back to its `layers/…` metric histories) and caches each ended run's under `<cache dir>/layers/`, keyed by
(run id, end time) as the histories are. `analysis.report` appends the frame to the histories, so a layer-wise
run's wide history (`Estimates.lookup`) holds its layers' columns beside `nc/*`. Never imports torch.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Mapping

import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from analysis.run_history import (
    History,
    HistoryCache,
    default_cache_dir,
    download_history_csv,
    history_from_metrics,
    quiet_artifact_downloads,
    to_long,
)
from analysis.selection import is_layerwise
from analysis.store import StoreError, first_line, make_client
from ncshared import schema

LAYERS_CACHE = "layers"  # the subdirectory of the history cache holding the layer histories
FETCH_WORKERS = 8


def fetch_layer_history(client: MlflowClient, tracking_uri: str, run: Mapping[str, Any]) -> History:
    """One layer-wise run's `layers/<l>/<name>` per epoch: its `layers.csv`, else its metric histories."""
    artifact_uri = run.get("artifact_uri")
    if isinstance(artifact_uri, str) and artifact_uri:
        history = download_history_csv(artifact_uri, tracking_uri, schema.LAYERS_FILE)
        if history is not None:
            return history
    return history_from_metrics(client, str(run["run_id"]), prefix=schema.LAYER_PREFIX)


def load_layer_histories(
    runs: pd.DataFrame,
    tracking_uri: str | None = None,
    cache_dir: Path | None = None,
    max_workers: int = FETCH_WORKERS,
) -> pd.DataFrame:
    """The layer-wise runs' layer metrics as a long frame `run_id, epoch, metric, value` (no rows when `runs` has
    no layer-wise run); cached under `cache_dir` (default `run_history.default_cache_dir()`) / `layers`."""
    chosen = runs[is_layerwise(runs)] if len(runs) else runs
    records = [{name: row.get(name) for name in ("run_id", "end_time", "mlflow_status", "artifact_uri")}
               for row in chosen.to_dict("records")]
    cache = HistoryCache((cache_dir if cache_dir is not None else default_cache_dir()) / LAYERS_CACHE)
    found: dict[str, History] = {}
    for run in records:
        key = HistoryCache.key(run)
        cached = cache.read(key) if key else None
        if cached is not None:
            found[str(run["run_id"])] = cached
    missing = [run for run in records if str(run["run_id"]) not in found]
    if missing:
        client, uri = make_client(tracking_uri)
        with quiet_artifact_downloads(), ThreadPoolExecutor(max_workers=max_workers) as pool:
            fetched = list(pool.map(lambda run: _fetch(client, uri, run), missing))
        for run, history in zip(missing, fetched):
            if isinstance(history, MlflowException):
                raise StoreError(f"cannot read the layer history of run {run['run_id']} at {uri}: "
                                 f"{first_line(history)}") from None
            key = HistoryCache.key(run)
            if key:
                cache.write(key, history)
            found[str(run["run_id"])] = history
    run_ids = [str(run["run_id"]) for run in records]
    return to_long(run_ids, [found[run_id] for run_id in run_ids])


def _fetch(client: MlflowClient, uri: str, run: Mapping[str, Any]) -> History | MlflowException:
    try:
        return fetch_layer_history(client, uri, run)
    except MlflowException as error:  # raised in the caller's thread, with the run named
        return error
