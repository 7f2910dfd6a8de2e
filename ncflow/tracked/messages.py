"""What a run tells its reader: the Markdown description the MLflow UI shows, and the end-of-run message.

The description (`schema.TAG_NOTE`, MLflow's `mlflow.note.content`) opens the run's Overview tab: status, ε,
T_NC, fn*, the early warning when known, the phase switch, what the run ran on (code, software, numerics, data: its
provenance tags), and the dynamics figure inlined through the tracking server's own artifact endpoint
(`get-artifact`, relative to the UI's address, so it works behind any host name).
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


def regulariser_line(config: RunConfig) -> str | None:
    """`regulariser ncc λ=0.001 until epoch 100; then weight decay 0.0002, lr × 10, cosine to 0`, or None without a
    regulariser: the loss term (CE or MSE − λ·R) and exactly what its unplug switches."""
    if config.reg == "none":
        return None
    line = f"regulariser {config.reg} λ={config.reg_lambda:g} (loss − λ·R on each batch's penultimate features)"
    if not config.unplug_epoch:
        return line + f", every epoch; `{schema.REG_VALUE}`, `{schema.REG_ACTIVE}` each epoch"
    keep_decay = config.unplug_weight_decay < 0
    switched = [
        f"weight decay {config.weight_decay:g} kept" if keep_decay else
        f"weight decay {config.weight_decay:g} → {config.unplug_weight_decay:g}",
        f"lr × {config.unplug_lr_factor:g}",
        f"cosine to 0 over epochs {config.unplug_epoch + 1}–{config.total_epochs}" if config.unplug_schedule == "cosine"
        else f"the {config.schedule} schedule goes on",
    ]
    return (line + f" until epoch {config.unplug_epoch}; then (unplugged) " + ", ".join(switched)
            + f"; `{schema.REG_VALUE}`, `{schema.REG_ACTIVE}`, `{schema.LR}` each epoch")


def figure_markdown(run_id: str) -> str:
    query = urllib.parse.urlencode({"path": schema.DYNAMICS_FIGURE, "run_uuid": run_id})
    return f"![dynamics](get-artifact?{query})"


def provenance_lines(tags: Mapping[str, str]) -> list[str]:
    """What the run ran on and with (its provenance tags), as the description's last lines; none without tags."""
    if not tags:
        return []

    def get(key: str) -> str:
        return tags.get(key, "?")

    commit = get(schema.TAG_GIT_COMMIT)
    code = f"commit `{commit[:12]}`"
    if tags.get(schema.TAG_GIT_DIRTY) == "true":
        code += f" with uncommitted changes (`{schema.GIT_DIFF_FILE}`)"
    cuda = "" if get(schema.TAG_CUDA) == "none" else f", CUDA {get(schema.TAG_CUDA)}, cuDNN {get(schema.TAG_CUDNN)}"
    lines = [
        f"- code: ncflow {get(schema.TAG_VERSION)}, {code}",
        f"- software: Python {get(schema.TAG_PYTHON)}, torch {get(schema.TAG_TORCH)}{cuda}, "
        f"numpy {get(schema.TAG_NUMPY)}, MLflow {get(schema.TAG_MLFLOW)}, Optuna {get(schema.TAG_OPTUNA)}",
        f"- numerics: {get(schema.TAG_DEVICE)} ({get(schema.TAG_DEVICE_MODEL)}), {get(schema.TAG_THREADS)} "
        f"thread{'' if get(schema.TAG_THREADS) == '1' else 's'}, "
        f"float32 matmul precision {get(schema.TAG_MATMUL_PRECISION)}, deterministic {get(schema.TAG_DETERMINISTIC)}",
        f"- data: {get(schema.TAG_DATA)}, digest `{get(schema.TAG_DATA_DIGEST)}` (dataset inputs `train`, `test`)",
    ]
    if tags.get(schema.TAG_RESUMED_WITH):
        lines.append(f"- resumed with other software or numerics: {tags[schema.TAG_RESUMED_WITH]}")
    return lines


def description(
    run_id: str, config: RunConfig, status: str, summary: Mapping[str, float], last_row: Mapping[str, float] | None,
    divergence_reason: str | None = None, provenance_tags: Mapping[str, str] | None = None,
) -> str:
    """The run's Markdown description, for a run starting (`status` running) or ended; a diverged run's says why and
    at which epoch (`divergence_reason`), and that it is complete as it is; then what it ran on (`provenance_tags`)."""
    eps = summary.get(schema.COLLAPSE_THRESHOLD, math.nan)
    t_nc, fn_star = summary.get(schema.T_NC), summary.get(schema.FN_STAR)
    headline = f"**{STATUS_WORDS.get(status, status)}**"
    if t_nc is not None and fn_star is not None:
        headline += f" at **T_NC = {t_nc:.0f}**, **fn\\* = {fn_star:.4f}**"
    if not math.isnan(eps):
        headline += f" (collapse: NC1 < ε = {eps:g})"
    lines = [headline, "", f"- {phase_line(config)}"]
    if (regulariser := regulariser_line(config)) is not None:
        lines.append(f"- {regulariser}")
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
    lines += rounded_metric_lines(summary, last_row)
    lines.append(
        "- charts: section **NC** of *Model metrics* (log10 NC1, log10 fn, and `under_eps`: 1 where NC1 < ε); "
        f"all metrics under `nc/`; every epoch in `{schema.HISTORY_FILE}`"
    )
    lines += provenance_lines(provenance_tags or {})
    if status != schema.STATUS_RUNNING:
        lines += ["", f"`{schema.DYNAMICS_FIGURE}`:", "", figure_markdown(run_id)]
    return "\n".join(lines)


def rounded_metric_lines(summary: Mapping[str, float], last_row: Mapping[str, float] | None) -> list[str]:
    """What the MLflow UI's metrics table shows to 17 digits, to 4 significant ones: T_NC and fn* at every logged ε,
    and the last epoch's other collapse metrics (the table and history.csv keep every digit)."""
    def number(value: float | None) -> str:
        return "—" if value is None or not math.isfinite(value) else f"{value:.4g}"

    at_eps = [f"ε = {eps:g}: " + (f"T_NC {summary[t_nc]:.0f}, fn\\* {number(summary.get(schema.fn_star_at(eps)))}"
                                  if (t_nc := schema.t_nc_at(eps)) in summary else "not reached")
              for eps in schema.EXTRA_THRESHOLDS]
    lines = [f"- at every logged ε: {'; '.join(at_eps)}"]
    if last_row:
        named = (("NC2", schema.NC2), ("NC3", schema.NC3), ("NC4", schema.NC4), ("NCC", schema.NCC),
                 ("test NC1", schema.TEST_NC1), ("class-mean angle", schema.ANGLE_MEAN))
        values = [f"{label} {number(last_row.get(key))}" + ("°" if key == schema.ANGLE_MEAN else "")
                  for label, key in named if key in last_row]
        lines.append(f"- last epoch, 4 significant digits (the metrics table has them in full): {', '.join(values)}")
    return lines


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


def end_message(place: RunPlace, status: str, t_nc: int | None, fn_star: float | None,
                model: bool = False) -> Sequence[str]:
    """The lines `ncflow train` prints at the end: the outcome, then where the run is (and its model, when logged)."""
    t_text = "never" if t_nc is None else str(t_nc)
    fn_text = "-" if fn_star is None else f"{fn_star:.4f}"
    lines = [
        f"run {place.run_id}: {status}, T_NC={t_text}, fn*={fn_text}",
        f"  name        {place.run_name}",
        f"  experiment  {place.experiment} (id {place.experiment_id})",
        f"  store       {place.tracking_uri}",
        f"  figure      {place.artifact_uri.rstrip('/')}/{schema.DYNAMICS_FIGURE}",
    ]
    if model:
        lines.append(f"  model       {load_model_line(place)}")
    return [*lines, f"  see it      {see_it(place)}"]


def load_model_line(place: RunPlace) -> str:
    """The one line that loads the run's final network (its forward gives the logits), with the store it needs."""
    return (f'mlflow.pytorch.load_model("runs:/{place.run_id}/{schema.MODEL_NAME}")   '
            f"(forward → logits; with MLFLOW_TRACKING_URI={place.tracking_uri})")


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
