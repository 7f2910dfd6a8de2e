"""What a run tells its reader: the Markdown description the MLflow UI shows, and the end-of-run message.

The description (`schema.TAG_NOTE`, MLflow's `mlflow.note.content`) opens the run's Overview tab: status, ε,
T_NC, fn*, the early warning when known, the phase switch, and the dynamics figure inlined through the tracking
server's own artifact endpoint (`get-artifact`, relative to the UI's address, so it works behind any host name).
The end-of-run message says where the run went: run id and name, experiment, store, the figure's artifact URI
and the command that shows it in the MLflow UI.
"""

from __future__ import annotations

import math
import urllib.parse
from dataclasses import dataclass
from typing import Mapping, Sequence

from ncshared import schema
from ncshared.run_config import RunConfig

STATUS_WORDS = {
    schema.STATUS_RUNNING: "training",
    schema.STATUS_COLLAPSED: "collapsed",
    schema.STATUS_NOT_COLLAPSED: "not collapsed",
    schema.STATUS_DIVERGED: "diverged",
    schema.STATUS_FAILED: "failed",
}


def phase_line(config: RunConfig) -> str:
    """`Phase 1 (cross-entropy) epochs 1–50, Phase 2 (MSE) 51–600`, or the one-loss protocol."""
    total = config.total_epochs
    if config.protocol == "ce-only":
        return f"cross-entropy only, epochs 1–{total}"
    if config.protocol == "mse-only":
        return f"MSE only, epochs 1–{total}"
    start = 1 if config.init_from == "none" else config.phase1_epochs + 1
    phase1 = f"Phase 1 (cross-entropy) epochs 1–{config.phase1_epochs}, " if start == 1 else ""
    return f"{phase1}Phase 2 (MSE on one-hot targets) {config.phase1_epochs + 1}–{total}"


def figure_markdown(run_id: str) -> str:
    query = urllib.parse.urlencode({"path": schema.DYNAMICS_FIGURE, "run_uuid": run_id})
    return f"![dynamics](get-artifact?{query})"


def description(
    run_id: str, config: RunConfig, status: str, summary: Mapping[str, float], last_row: Mapping[str, float] | None,
    divergence_reason: str | None = None,
) -> str:
    """The run's Markdown description, for a run starting (`status` running) or ended; a diverged run's says why and
    at which epoch (`divergence_reason`), and that it is complete as it is."""
    eps = summary.get(schema.COLLAPSE_THRESHOLD, math.nan)
    t_nc, fn_star = summary.get(schema.T_NC), summary.get(schema.FN_STAR)
    headline = f"**{STATUS_WORDS.get(status, status)}**"
    if t_nc is not None and fn_star is not None:
        headline += f" at **T_NC = {t_nc:.0f}**, **fn\\* = {fn_star:.4f}**"
    if not math.isnan(eps):
        headline += f" (collapse: NC1 < ε = {eps:g})"
    lines = [headline, "", f"- {phase_line(config)}"]
    if status == schema.STATUS_DIVERGED:
        lines.append(f"- diverged: {divergence_reason or 'reason not recorded'}. Training stopped there: the run is "
                     "complete as it is, and the analysis excludes it as diverged (and counts it)")
    t_cross, predicted = summary.get(schema.T_CROSS), summary.get(schema.T_NC_PRED)
    if t_cross is not None:
        warning = f"- early warning: fn fell below fn_ref = {summary.get(schema.FN_REF, math.nan):.4f} at T_cross = {t_cross:.0f}"
        if predicted is not None:
            warning += f", predicting T_NC ≈ {predicted:.0f} (lead {config.lead})"
        lines.append(warning)
    if last_row:
        lines.append(
            f"- after epoch {last_row[schema.HISTORY_EPOCH]:.0f}: NC1 {last_row[schema.NC1]:.4g}, "
            f"fn {last_row[schema.FN]:.4g}, train acc {last_row[schema.TRAIN_ACC]:.2%}, "
            f"test acc {last_row[schema.TEST_ACC]:.2%}"
        )
    lines.append(
        "- charts: section **NC** of *Model metrics* (log10 NC1, log10 fn, and `under_eps`: 1 where NC1 < ε); "
        f"all metrics under `nc/`; every epoch in `{schema.HISTORY_FILE}`"
    )
    if status != schema.STATUS_RUNNING:
        lines += ["", f"`{schema.DYNAMICS_FIGURE}`:", "", figure_markdown(run_id)]
    return "\n".join(lines)


def failure_note(run_id: str, last_epoch: int, reason: str, resumable: bool, why: str,
                 divergence_reason: str | None = None) -> str:
    """The description of a run that ended FAILED or KILLED: what stopped it, and whether `ncflow train --resume`
    continues it (`resumable`; `why` says what it lacks when it cannot) — never resume advice for a run that has none.

    A run that had diverged before it failed (`divergence_reason`) failed writing its end-of-run files: a resume
    writes them and trains no further."""
    when = f"after epoch {last_epoch}" if last_epoch else "before its first epoch"
    if not resumable:
        return f"**failed** {when}: {reason}\n\nIt cannot be resumed: it {why}. Train the condition again."
    if divergence_reason:
        return (f"**failed** {when}, writing its end-of-run files: {reason}\n\nIt had diverged ({divergence_reason}); "
                f"`ncflow train --resume {run_id}` writes its files and trains no further.")
    return f"**failed** {when}: {reason}\n\nContinue it with `ncflow train --resume {run_id}`."


@dataclass(frozen=True)
class RunPlace:
    """Where a run is: enough to find it again."""

    run_id: str
    run_name: str
    experiment: str
    experiment_id: str
    tracking_uri: str
    artifact_uri: str


# MLflow 3.17's UI shows an experiment as GenAI work (a traces dashboard, "Evaluation runs") unless its "Model
# training" switch is set, and a link can set it with this URL parameter: checked in headless Chromium, the experiment
# page then opens on the runs table and a run page's breadcrumb reads "Runs" (docs/images/ui_*_page.png).
MODEL_TRAINING_VIEW = "workflowType=machine_learning"


def ui_page(base_url: str, experiment_id: str, run_id: str | None = None) -> str:
    """The MLflow UI page of an experiment's runs, or of one run, in the Model-training view."""
    run = f"/runs/{run_id}" if run_id else ""
    return f"{base_url.rstrip('/')}/#/experiments/{experiment_id}{run}?{MODEL_TRAINING_VIEW}"


def see_it(place: RunPlace) -> str:
    """How to open the run in the MLflow UI: its page on the server, or the `mlflow ui` command and the page."""
    if place.tracking_uri.startswith(("http://", "https://")):
        return ui_page(place.tracking_uri, place.experiment_id, place.run_id)
    return (f"mlflow ui --backend-store-uri {place.tracking_uri}   then "
            + ui_page("http://127.0.0.1:5000", place.experiment_id, place.run_id))


def end_message(place: RunPlace, status: str, t_nc: int | None, fn_star: float | None) -> Sequence[str]:
    """The lines `ncflow train` prints at the end: the outcome, then where the run is."""
    t_text = "never" if t_nc is None else str(t_nc)
    fn_text = "-" if fn_star is None else f"{fn_star:.4f}"
    return [
        f"run {place.run_id}: {status}, T_NC={t_text}, fn*={fn_text}",
        f"  name        {place.run_name}",
        f"  experiment  {place.experiment} (id {place.experiment_id})",
        f"  store       {place.tracking_uri}",
        f"  figure      {place.artifact_uri.rstrip('/')}/{schema.DYNAMICS_FIGURE}",
        f"  see it      {see_it(place)}",
    ]


def sweep_end_message(tracking_uri: str, experiment: str, name: str) -> Sequence[str]:
    """Where a sweep's results are: its parent run (the `mlflow run` run, else the latest `sweep-NAME`) and the
    summary CSV artifact; nothing when the store cannot say (the sweep's own output already gave the counts)."""
    from mlflow.tracking import MlflowClient

    from ncflow.tracked.mlflow_run import sweep_parent_run  # torch loads only at a sweep's end

    try:
        client = MlflowClient(tracking_uri=tracking_uri)
        found = client.get_experiment_by_name(experiment)
        parent = sweep_parent_run(client, None if found is None else found.experiment_id, name)
    except Exception:  # the store went away at the very end: the counts above still stand
        return []
    if parent is None:
        return []
    place = RunPlace(parent.info.run_id, parent.info.run_name or "", experiment, parent.info.experiment_id,
                     tracking_uri, parent.info.artifact_uri)
    return [
        f"  parent run  {place.run_id} ({place.run_name}), experiment {experiment}",
        f"  summary     {place.artifact_uri.rstrip('/')}/{schema.SWEEP_SUMMARY_FILE}",
        f"  see it      {see_it(place)}",
        "  tables      ncflow-analysis report --sweep " + name + (f" --tracking-uri {tracking_uri}"),
    ]
