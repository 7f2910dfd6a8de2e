"""Train one condition as an MLflow run that no crash, signal or tracking-server outage loses.

Reads top to bottom: check the store and build everything (bad input stops here, before a run exists),
open the run, create its local record, train with the engine writing into the record while a background
shipper sends the record to MLflow, then record the results. `ncflow.tracked.resume` continues a run whose
process died through the same `run_recorded`. See docs/reliability.md.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from ncflow.engine import loop, optional_metrics, run_setup
from ncflow.engine.config import ConfigError, run_name
from ncflow.engine.data import InMemoryData
from ncflow.engine.run_setup import Setup
from ncflow.record import logged_model
from ncflow.record.local_record import RecordDiskFull, RunRecord, no_space, record_root
from ncflow.record.shipper import Shipper
from ncflow.record.signals import interruption_reason, note_stopped_run, termination_as_interrupt
from ncflow.record.sink import RecordSink
from ncflow.tracked import artifacts, messages, mlflow_run, provenance, stale_runs
from ncshared import schema
from ncshared.run_config import RunConfig

SHIP_TIMEOUT_S = 60.0  # how long `ncflow train` waits at the end for a server that is down


@dataclass
class TrainResult:
    """What a finished (or stopped) run reports back to its caller, e.g. a sweep trial."""

    run_id: str
    status: str  # collapsed | not_collapsed | diverged
    t_nc: int | None
    fn_star: float | None
    summary: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    unshipped: int = 0  # journal entries MLflow does not have yet (`ncflow sync` sends them)
    record_dir: str = ""
    place: messages.RunPlace | None = None  # where the run is (for the end-of-run message)
    model: bool = False  # the run's final network is kept as its MLflow model (`runs:/RUN_ID/model`)


def resolve_fn_ref(client: MlflowClient, config: RunConfig) -> float | None:
    if config.fn_ref == "none":
        return None
    if config.fn_ref == "auto":
        return mlflow_run.reference_fn_star(client, config)
    return float(config.fn_ref)


def load_phase1_source(client: MlflowClient, run_id: str) -> dict[str, Any]:
    try:
        return mlflow_run.load_checkpoint(client, run_id, schema.CHECKPOINT_PHASE1_END)
    except MlflowException:
        raise ConfigError(
            f"init_from: run {run_id} has no {schema.checkpoint_path(schema.CHECKPOINT_PHASE1_END)} "
            "(train it with protocol two-phase)"
        ) from None
    except ValueError as error:
        raise ConfigError(f"init_from: {error}") from None


def record_results(setup: Setup, record: RunRecord, sink: RecordSink,
                   provenance_tags: Mapping[str, str] | None = None) -> dict[str, float]:
    """Summary metrics, status tags, history.csv, config.json and the dynamics figure, into the record (a diverged
    run's too: every file copes with its non-finite values); the description names the run's provenance."""
    detector = setup.detector
    summary = detector.summary_metrics()
    sink.summary(summary)
    tags = {schema.TAG_STATUS: detector.status}
    if detector.diverged and detector.divergence_reason:
        tags[schema.TAG_DIVERGENCE_REASON] = detector.divergence_reason
    record.tags(tags)
    record.artifact_bytes(schema.HISTORY_FILE, artifacts.history_csv(
        setup.history, optional_metrics.regulariser_names(setup.config)))
    record.artifact_bytes(schema.CONFIG_FILE, artifacts.config_json(setup.config))
    if setup.config.log_model:  # the final network as the run's MLflow model (runs:/RUN_ID/model)
        logged_model.keep(record, setup.config, setup.model, setup.data.train_x, detector.last_epoch)
    figure = artifacts.dynamics_figure_png(record.run_id, setup.history, summary, setup.config, detector.status,
                                           detector.divergence_reason)
    record.artifact_bytes(schema.DYNAMICS_FIGURE, figure)
    end = loop.measure_end_of_run(setup)
    record_angles(setup, record, end.angles)
    record_optional(setup, record, sink, end.class_nc1_table)
    last = setup.history[-1] if setup.history else None
    note = messages.description(record.run_id, setup.config, detector.status, summary, last, detector.divergence_reason,
                                provenance_tags)
    record.tags({schema.TAG_NOTE: note})
    return summary


def record_angles(setup: Setup, record: RunRecord, at_end: list[float] | None) -> None:
    """class_mean_angles.json and its histogram: the pairwise class-mean angles at T_NC and at the end."""
    detector, classes = setup.detector, setup.data.num_classes
    args = (classes, setup.angles_at_collapse, at_end, detector.t_nc, detector.last_epoch)
    record.artifact_bytes(schema.ANGLES_FILE, artifacts.angles_json(*args))
    record.artifact_bytes(schema.ANGLES_FIGURE, artifacts.angles_figure_png(*args, title=run_name(setup.config)))


def record_optional(setup: Setup, record: RunRecord, sink: RecordSink, class_nc1_table: bytes | None) -> None:
    """Under `--layerwise`: each layer's T_NC, layers.csv and its figure; under imbalance: class_nc1.csv."""
    config = setup.config
    if config.layerwise:
        sink.summary(optional_metrics.layer_collapse_epochs(setup.history, config, setup.detector.threshold))
        record.artifact_bytes(schema.LAYERS_FILE, optional_metrics.layers_csv(setup.history, config))
        figure = optional_metrics.layers_figure_png(setup.history, config, run_name(config))
        record.artifact_bytes(schema.LAYERS_FIGURE, figure)
    if class_nc1_table is not None:
        record.artifact_bytes(schema.CLASS_NC1_FILE, class_nc1_table)


def note_start(setup: Setup, record: RunRecord, provenance_tags: Mapping[str, str] | None = None) -> None:
    """The description a run shows while it trains (replaced by the summary at the end)."""
    summary = setup.detector.summary_metrics()
    last = setup.history[-1] if setup.history else None
    record.tags({schema.TAG_NOTE: messages.description(record.run_id, setup.config, schema.STATUS_RUNNING,
                                                       summary, last, provenance_tags=provenance_tags)})


def place_of(client: MlflowClient, run_id: str) -> messages.RunPlace:
    run = client.get_run(run_id)
    experiment = client.get_experiment(run.info.experiment_id)
    return messages.RunPlace(run_id, run.info.run_name or "", experiment.name, experiment.experiment_id,
                             client.tracking_uri, run.info.artifact_uri)


@dataclass
class RecordedRun:
    """One open MLflow run while it trains: its setup, local record, sink and shipper (see `run_recorded`).

    The steps are separate so a pack (ncflow.tracked.pack_train) can hold several at once."""

    setup: Setup
    client: MlflowClient
    record: RunRecord
    place: messages.RunPlace | None
    provenance_tags: Mapping[str, str] = field(default_factory=dict)  # what the description says it ran on
    sink: RecordSink = field(init=False)
    shipper: Shipper = field(init=False)
    summary: dict[str, float] = field(default_factory=dict)
    final_status: str = "FAILED"
    unrecorded: dict[str, str] = field(default_factory=dict)  # end tags a full disk kept out of the record

    def __post_init__(self) -> None:
        config = self.setup.config
        self.sink = RecordSink(self.record, config.checkpoint_every, schema.CHECKPOINT_CHOICES[config.checkpoints])
        self.shipper = Shipper(self.client, self.record)

    def begin(self) -> RecordedRun:
        """The shipper, the state training starts from (saved before the run is described as training: a run that
        trains can always be resumed; RecordDiskFull when the record cannot hold it), the starting description
        (and class counts), the intervention's summary. Call it inside the try whose failure calls `fail`."""
        setup, record, config = self.setup, self.record, self.setup.config
        self.shipper.start()
        self.sink.start(loop.checkpoint_state(setup, setup.start_epoch - 1))
        note_start(setup, record, self.provenance_tags)
        if setup.minority is not None:
            record.tags({schema.TAG_CLASS_COUNTS: ",".join(str(n) for n in setup.class_counts)})
            record.artifact_bytes(schema.CLASS_COUNTS_FILE,
                                  optional_metrics.class_counts_json(setup.class_counts, config, setup.minority))
        self.sink.summary(setup.intervention)
        return self

    def finish(self) -> None:
        """After the last epoch (the sink closed): the summary, the files, FINISHED."""
        self.summary = record_results(self.setup, self.record, self.sink, self.provenance_tags)
        self.final_status = "FINISHED"

    def fail(self, error: BaseException) -> None:
        """FAILED (an exception) or KILLED (Ctrl-C, SIGTERM, SIGHUP), with the reason (the sink closed: the resume
        state of the last finished epoch is kept) and a description that says to resume it only when it can be
        (`stale_runs.resumability`). A full disk's error also gets the run's outcome, for its one-line message."""
        interrupted = isinstance(error, KeyboardInterrupt)
        reason = interruption_reason(error) if interrupted else f"{type(error).__name__}: {error}"
        detector, run_id = self.setup.detector, self.record.run_id
        resume = stale_runs.resumability(self.record)
        note = messages.failure_note(run_id, detector.last_epoch or 0, reason[:2000], resume.resumable, resume.why,
                                     detector.divergence_reason)
        self._record_tags({schema.TAG_STATUS: schema.STATUS_FAILED, schema.TAG_FAIL_REASON: reason[:5000],
                           schema.TAG_NOTE: note})
        self.final_status = "KILLED" if interrupted else "FAILED"
        if isinstance(error, RecordDiskFull):
            error.outcomes.append(disk_full_outcome(run_id, resume.resumable, resume.why))
        note_stopped_run(error, self.record.run_id)  # the command line's last line names it

    def _record_tags(self, tags: Mapping[str, str]) -> None:
        """Tags into the record; kept for `close` to send MLflow itself when the record's disk is full."""
        try:
            self.record.tags(tags)
        except RecordDiskFull:
            self.unrecorded.update(tags)

    def close(self, ship_timeout_s: float | None) -> TrainResult:
        """The MLflow status, the last shipping, the record released; what the run reports back. A record whose
        disk is full gets what it can; MLflow gets the rest from here."""
        record = self.record
        try:
            record.status(self.final_status)
            unrecorded_status = None
        except RecordDiskFull:
            unrecorded_status = self.final_status
        unshipped = self.shipper.close(ship_timeout_s)
        record.close()
        try:
            record.release()
        except OSError:  # a full disk: record.json still names this process, which ends; the claim goes with it
            record.let_go()
        if self.unrecorded or unrecorded_status is not None:  # after the shipper sent everything before it
            mlflow_run.tell_run(self.client, record.run_id, self.unrecorded, unrecorded_status)
        if unshipped:
            print(
                f"ncflow: MLflow at {self.client.tracking_uri} did not take {unshipped} journal entries of run "
                f"{record.run_id}; they are kept in {record.directory} — `ncflow sync` sends them",
                file=sys.stderr,
            )
        detector = self.setup.detector
        model = (record.model_dir / logged_model.NETWORK_FILE).is_file()
        return TrainResult(record.run_id, detector.status, detector.t_nc, detector.fn_star, self.summary,
                           self.setup.history, unshipped, str(record.directory), self.place, model)


def run_recorded(
    setup: Setup, client: MlflowClient, record: RunRecord, progress: bool, ship_timeout_s: float | None,
    place: messages.RunPlace | None = None, provenance_tags: Mapping[str, str] | None = None,
) -> TrainResult:
    """The loop inside an open run. Any exception, Ctrl-C, SIGTERM or SIGHUP leaves the run FAILED/KILLED
    with its reason and a resumable state; what MLflow has not taken yet stays in the record."""
    run = RecordedRun(setup, client, record, place, dict(provenance_tags or {}))
    try:
        with termination_as_interrupt():
            try:
                run.begin()
                loop.run_epochs(setup, run.sink, progress)
            finally:
                run.sink.close()  # the last finished epoch's state and last.pt, also after a crash
            run.finish()
    except BaseException as error:  # KeyboardInterrupt and SystemExit too: the run must not stay RUNNING
        run.fail(error)
        raise
    finally:
        result = run.close(ship_timeout_s)
    return result


def train(
    config: RunConfig,
    *,
    sweep: str | None = None,
    parent_run_id: str | None = None,
    extra_tags: Mapping[str, str] | None = None,
    progress: bool = True,
    record_dir: str | Path | None = None,
    ship_timeout_s: float | None = SHIP_TIMEOUT_S,
) -> TrainResult:
    """Train one condition and track it in MLflow. Bad input raises ConfigError before a run exists."""
    client = mlflow_run.client_for(config)
    config = mlflow_run.with_adopted_experiment(client, config)
    setup = prepared(client, config)
    root = record_root(record_dir)
    stale_runs.sync_in_background(root, client.tracking_uri)  # earlier runs' leftovers for this store
    record, place, found = opened(client, setup, root, sweep, parent_run_id, extra_tags)
    return run_recorded(setup, client, record, progress, ship_timeout_s, place, found.tags)


def prepared(client: MlflowClient, config: RunConfig) -> Setup:
    """The engine's set-up, started from the Phase-1 source for an intervention (ConfigError before any run)."""
    if config.init_from != "none":
        mlflow_run.require_run(client, config.init_from, "init_from")
    setup = run_setup.prepare(config, resolve_fn_ref(client, config))
    if config.init_from != "none":
        run_setup.start_from_phase1(setup, load_phase1_source(client, config.init_from), config.init_from)
    return setup


def opened(
    client: MlflowClient, setup: Setup, root: Path, sweep: str | None, parent_run_id: str | None,
    extra_tags: Mapping[str, str] | None,
) -> tuple[RunRecord, messages.RunPlace, provenance.Provenance]:
    """A new MLflow run (adopted under `mlflow run`) with its provenance, its local record, and the provenance; the
    patch of a work tree that differed from its commit goes into the record (`schema.GIT_DIFF_FILE`)."""
    config = setup.config
    found = provenance.collect(setup)
    run_id = mlflow_run.open_run(client, config, sweep=sweep, parent_run_id=parent_run_id,
                                 extra_tags={**found.tags, **data_file_tags(setup.data), **(extra_tags or {})},
                                 inputs=provenance.dataset_inputs(config, setup.data, found.splits))
    place = place_of(client, run_id)  # read now: the store may be down when the run ends
    try:
        record = RunRecord.create(root, run_id, {"tracking_uri": client.tracking_uri, "experiment": config.experiment})
        if found.diff:
            record.artifact_bytes(schema.GIT_DIFF_FILE, found.diff.encode())
    except OSError as error:  # a full disk: the run just opened must not stay RUNNING, nor be called resumable
        raise failed_without_record(client, run_id, root / run_id, error) from None
    return record, place, found


def data_file_tags(data: InMemoryData) -> dict[str, str]:
    """Your own data's file or folder: its path, sha256 and sizes as tags (none for ncflow's named data sets)."""
    if data.file is None:
        return {}
    return {schema.TAG_DATA_PATH: data.file.path, schema.TAG_DATA_SHA256: data.file.sha256,
            schema.TAG_DATA_SIZES: data.file.sizes}


def failed_without_record(client: MlflowClient, run_id: str, directory: Path, error: OSError) -> OSError:
    """End a run whose record could not be created FAILED in MLflow, with its reason and a description that says it
    cannot be resumed; the error to raise (a full disk as RecordDiskFull, saying what became of the run)."""
    raised = no_space(error, Path(error.filename) if error.filename else directory, None)
    reason = f"{type(raised).__name__}: {raised}"
    why = f"has no resume state: its record {directory} could not be written"
    tags = {schema.TAG_STATUS: schema.STATUS_FAILED, schema.TAG_FAIL_REASON: reason[:5000],
            schema.TAG_NOTE: messages.failure_note(run_id, 0, reason, False, why)}
    mlflow_run.tell_run(client, run_id, tags, "FAILED")
    if isinstance(raised, RecordDiskFull):
        raised.outcomes.append(disk_full_outcome(run_id, False, why))
    return raised


def disk_full_outcome(run_id: str, resumable: bool, why: str) -> str:
    """What a full disk made of a run, for the command line's one line: how to continue it, or why it cannot be."""
    if resumable:
        return f"run {run_id} FAILED: free space, then `ncflow train --resume {run_id}`"
    return f"run {run_id} FAILED and cannot be resumed (it {why})"
