"""`CollapseMonitor`: neural collapse of any PyTorch classifier, measured when you ask and logged to MLflow.

    monitor = CollapseMonitor(model, num_classes=10, train_loader=train, test_loader=test, classifier="fc",
                              arch="my-cnn", dataset="cifar10", seed=0)
    for epoch in range(1, epochs + 1):
        ...  # train
        monitor.measure(epoch, train_loss=mean_loss)
    monitor.finish()

Each `measure(step)` runs no-grad eval-mode passes over the training loader (and the test loader) through
`ncflow.library.measurement` — two passes by default, so NC4 and Papyan's NC1 use this measurement's own class
means — then logs in one batch, at that step, the metrics engine runs log under the same names: `nc/*` (every
collapse metric), `train/acc`, `train/loss`, `test/acc`, `test/nc1`, `test/nc2`, `test/fn`, `test/ncc`, the UI
views `NC/*`, and `layers/<i>/*` for the `layers` named (i in the order given). It feeds the collapse detector: T_NC
and fn* at the run's ε and at each reported ε as soon as they happen, T_cross and the predicted T_NC given a
reference `fn_ref` (T_cross needs `phase=2` steps, as in the paper's protocol), and divergence (any non-finite
training metric; the paper's "NC1 > 0.5 after epoch 300" rule is for its own protocol and is not applied). `finish`
logs the summary metrics, `history.csv`, `figures/dynamics.png` and the class-mean angles, and sets the run's status.

The run is the one given by `run_id`, else the active MLflow run, else a new one (`ncflow.library.monitor_run`),
opened after the first measurement succeeded: bad input is a `MonitorInputError` (or ValueError) before any run.
`tags` are set on it as it opens (a sweep's trial and parent run, your own labels).
Unlike engine runs, a monitor keeps no crash-safe local record: its points are in MLflow once `measure` returns
(sent in the background) and `finish` waits for them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Self

from torch import nn

from ncflow.collapse.detector import CollapseDetector, view_metrics
from ncflow.collapse.statistics import NonFiniteFeaturesError
from ncflow.library.capture import MonitorInputError, Unpack, find_module, linear_classifier, model_device
from ncflow.library.measurement import LoaderMeasurement, class_mean_angles_of, measure_loader
from ncflow.library.monitor_run import MonitorRun, code_tags
from ncflow.tracked import artifacts
from ncflow.tracked.messages import figure_markdown
from ncflow.tracked.provenance import environment
from ncshared import schema
from ncshared.run_config import DEFAULT_EXPERIMENT

STEP_UNITS = ("epoch", "step")
MAX_ANGLE_CLASSES = 200  # the class-mean angles (K(K−1)/2 of them) are kept at the end up to this many classes


class CollapseMonitor:
    """Measures a model's collapse on its loaders at the steps you choose and logs it to one MLflow run."""

    def __init__(
        self,
        model: nn.Module,
        num_classes: int,
        train_loader: Iterable[Any],
        test_loader: Iterable[Any] | None = None,
        *,
        classifier: str = "fc",
        layers: Sequence[str] = (),
        arch: str = "custom",
        dataset: str = "custom",
        seed: int | None = None,
        params: Mapping[str, Any] | None = None,
        nc1_threshold: float = 0.01,
        fn_ref: float | None = None,
        lead: int = schema.DEFAULT_LEAD,
        passes: int = 2,
        step_unit: str = "epoch",
        unpack: Unpack | None = None,
        run_id: str | None = None,
        experiment: str = DEFAULT_EXPERIMENT,
        tracking_uri: str | None = None,
        run_name: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        if num_classes < 2:
            raise MonitorInputError(f"num_classes: need at least 2 classes, got {num_classes}")
        if step_unit not in STEP_UNITS:
            raise MonitorInputError(f"step_unit: expected one of {', '.join(STEP_UNITS)}, got {step_unit!r}")
        if passes not in (1, 2):
            raise MonitorInputError(f"passes: expected 1 or 2, got {passes!r}")
        if not (isinstance(nc1_threshold, (int, float)) and 0.0 < nc1_threshold < 1.0):
            raise MonitorInputError(f"nc1_threshold: expected a number in (0, 1), got {nc1_threshold!r}")
        for loader, name in ((train_loader, "train_loader"), (test_loader, "test_loader")):
            if loader is not None and not hasattr(loader, "__iter__"):
                raise MonitorInputError(f"{name}: expected an iterable of batches, got {type(loader).__name__}")
        self.model, self.num_classes = model, num_classes
        self.classifier_name = classifier
        self.classifier = linear_classifier(model, classifier, num_classes)
        for name in layers:
            find_module(model, name, "layers")
        self.layers = tuple(layers)
        self.train_loader, self.test_loader = train_loader, test_loader
        self.passes, self.step_unit, self.unpack = passes, step_unit, unpack
        self.detector = CollapseDetector(nc1_threshold, fn_ref, lead, divergence_after=2**62)
        self.params = self._params(arch, dataset, seed, params, nc1_threshold, fn_ref, lead)
        name = run_name or "-".join(str(part) for part in (arch, dataset, f"s{seed}" if seed is not None else None)
                                    if part)
        self.run = MonitorRun(tracking_uri, experiment, run_id, name)
        self.tags = {name: str(value) for name, value in (tags or {}).items()}  # more tags for the run when it opens
        self.history: list[dict[str, float]] = []
        self.angles_at_collapse: list[float] | None = None
        self.finished = False

    # ---- public -----------------------------------------------------------------------------------------------

    @property
    def run_id(self) -> str | None:
        """The MLflow run's id, once the first measurement has opened it."""
        return self.run.run_id

    def measure(self, step: int, *, phase: int = 1, train_loss: float | None = None,
                extra: Mapping[str, float] | None = None) -> dict[str, float]:
        """Measure now and log the row at `step` (an epoch, or an optimiser step with step_unit="step").

        Args:
            step: increasing; ≥ 1 enters the collapse detector (step 0, before training, is only logged).
            phase: 1, or 2 for steps of a second training phase (the paper's MSE phase; T_cross counts only these).
            train_loss: the step's training loss as your loop computed it; otherwise `train/loss` is the
                classifier's cross-entropy on the training loader in eval mode.
            extra: more metrics to log in the same batch (e.g. {"lr": ...}).

        Returns:
            The logged row.
        """
        if self.finished:
            raise MonitorInputError("measure: the monitor has finished")
        if self.history and step <= self.history[-1][schema.HISTORY_EPOCH]:
            raise MonitorInputError(f"step: expected a step after {self.history[-1][schema.HISTORY_EPOCH]:.0f}, "
                                    f"got {step}")
        started = time.perf_counter()
        train = self._measure(self.train_loader)
        row = {schema.HISTORY_EPOCH: float(step), **self._train_values(train, train_loss)}
        if self.test_loader is not None:
            row.update(self._test_values(self._measure(self.test_loader, test=True)))
        row[schema.PHASE] = float(phase)
        row.update({key: float(value) for key, value in (extra or {}).items()})
        row[schema.EPOCH_TIME] = time.perf_counter() - started
        if self.run.run_id is None:
            self._open_run()
        self.history.append(row)
        events = self._detect(step, phase, row)
        views = view_metrics(row[schema.NC1], row[schema.FN], self.detector.threshold)
        now = int(time.time() * 1000)
        self.run.log_step(step, {**{k: v for k, v in row.items() if k != schema.HISTORY_EPOCH}, **views}, now)
        if events:
            self.run.log_summary(self.detector.summary_metrics(), now)
        if "collapsed" in events and self.num_classes <= MAX_ANGLE_CLASSES:
            self.angles_at_collapse = self._angles()
        return row

    def resume(self, run_id: str, history: Sequence[Mapping[str, float]],
               angles_at_collapse: list[float] | None = None) -> None:
        """Continue an interrupted run of this monitor's configuration: the run `run_id` reopened (RUNNING again, its
        params checked, ended by this monitor's `finish`) and the rows it logged (`history`) replayed through the
        collapse detector without being logged again; the next `measure` continues after the last of them."""
        if self.run.run_id is not None or self.history:
            raise MonitorInputError("resume: only before the first measurement")
        self.run.requested_run_id = run_id
        self._open_run()
        self.run.owned = True
        self.run.client.update_run(run_id, status="RUNNING")
        self.run.set_tags({schema.TAG_STATUS: schema.STATUS_RUNNING, schema.TAG_FAIL_REASON: ""})
        for row in history:
            self.history.append(dict(row))
            self._detect(int(row[schema.HISTORY_EPOCH]), int(row.get(schema.PHASE, 1)), row)
        self.angles_at_collapse = angles_at_collapse

    def finish(self, failed: bool = False) -> dict[str, float]:
        """Summary metrics, history, figures and status; ends the run if the monitor created it. Idempotent."""
        if self.finished or self.run.run_id is None:
            self.finished = True
            return {}
        self.finished = True
        summary = self.detector.summary_metrics()
        status = schema.STATUS_FAILED if failed else self.detector.status
        try:
            self.run.log_summary(summary, int(time.time() * 1000))
            self.run.artifact(schema.HISTORY_FILE, artifacts.history_csv(self.history))
            self.run.artifact(schema.DYNAMICS_FIGURE, self._figure(summary, status))
            if self.num_classes <= MAX_ANGLE_CLASSES and not failed:
                self._write_angles()
            tags = {schema.TAG_STATUS: status}
            if self.run.owned or not self.run.client.get_run(self.run.run_id).data.tags.get(schema.TAG_NOTE):
                tags[schema.TAG_NOTE] = self._description(status)
            if self.detector.divergence_reason:
                tags[schema.TAG_DIVERGENCE_REASON] = self.detector.divergence_reason
            self.run.set_tags(tags)
        finally:
            self.run.close(failed)
        return summary

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> None:
        self.finish(failed=kind is not None)

    # ---- internals --------------------------------------------------------------------------------------------

    def _params(self, arch: str, dataset: str, seed: int | None, extra: Mapping[str, Any] | None,
                nc1_threshold: float, fn_ref: float | None, lead: int) -> dict[str, str]:
        return monitor_params(self.num_classes, self.classifier_name, arch, dataset, seed, extra, nc1_threshold,
                              fn_ref, lead, self.passes, self.step_unit, self.layers)

    def _measure(self, loader: Iterable[Any], test: bool = False) -> LoaderMeasurement | None:
        """The loader's measurement; for the test loader None when it cannot give collapse metrics (a class with
        no test sample, non-finite features), for the training loader such errors propagate."""
        try:
            return measure_loader(self.model, loader, self.classifier_name, self.classifier, self.num_classes,
                                  () if test else self.layers, self.passes, self.unpack)
        except NonFiniteFeaturesError:
            if self.run.run_id is None:  # bad input before any run: say so
                raise
            return None
        except ValueError as error:
            if test and "has no samples" in str(error):
                return None
            raise

    def _train_values(self, measured: LoaderMeasurement | None, train_loss: float | None) -> dict[str, float]:
        if measured is None:  # the features went non-finite mid-run: record NaN, the detector calls it divergence
            nan = dict.fromkeys(schema.COLLAPSE_METRICS, math.nan)
            return {schema.TRAIN_LOSS: math.nan if train_loss is None else train_loss, schema.TRAIN_ACC: math.nan,
                    **nan}
        values = {schema.TRAIN_LOSS: measured.loss if train_loss is None else float(train_loss),
                  schema.TRAIN_ACC: measured.accuracy,
                  **{schema.NC_PREFIX + name: value for name, value in measured.metrics.items()}}
        for index, name in enumerate(self.layers, start=1):
            values.update({schema.layer_metric(index, metric): value
                           for metric, value in measured.layers[name].items() if metric in schema.LAYER_METRIC_NAMES})
        return values

    def _test_values(self, measured: LoaderMeasurement | None) -> dict[str, float]:
        if measured is None:
            return {schema.TEST_ACC: math.nan, **dict.fromkeys(schema.TEST_COLLAPSE_METRICS, math.nan)}
        return {schema.TEST_ACC: measured.accuracy,
                **{f"test/{name}": measured.metrics[name] for name in schema.TEST_COLLAPSE_NAMES}}

    def _open_run(self) -> None:
        self.run.open(self.params, {**code_tags(), **environment(model_device(self.model)),
                                    schema.TAG_STEP_UNIT: self.step_unit, schema.TAG_SOURCE: schema.SOURCE_MONITOR,
                                    **self.tags})

    def _detect(self, step: int, phase: int, row: Mapping[str, float]) -> list[str]:
        if step < 1:
            return []
        watched = {k: v for k, v in row.items() if k.startswith((schema.NC_PREFIX, schema.LAYER_PREFIX))}
        return self.detector.update(step, phase, {"nc1": row[schema.NC1], "fn": row[schema.FN], **watched},
                                    row[schema.TRAIN_LOSS])

    def _angles(self) -> list[float] | None:
        """The training set's class-mean angles now (one more pass), or None when not finite."""
        angles = class_mean_angles_of(self.model, self.train_loader, self.classifier_name, self.num_classes,
                                      self.unpack)
        return angles if angles and all(math.isfinite(a) for a in angles) else None

    def _write_angles(self) -> None:
        at_end = self._angles()
        t_nc = self.detector.t_nc
        last = int(self.history[-1][schema.HISTORY_EPOCH])
        self.run.artifact(schema.ANGLES_FILE, artifacts.angles_json(self.num_classes, self.angles_at_collapse, at_end,
                                                                    t_nc, last))
        title = f"{self.run.run_name}: class-mean angles"
        self.run.artifact(schema.ANGLES_FIGURE, artifacts.angles_figure_png(
            self.num_classes, self.angles_at_collapse, at_end, t_nc, last, title))

    def _description(self, status: str) -> str:
        """The run's Markdown description in the UI: what was measured, what a step is, the results."""
        last, detector = self.history[-1], self.detector
        unit = "epochs" if self.step_unit == "epoch" else "optimiser steps"

        def value(key: str, spec: str) -> str:
            number = last.get(key, math.nan)
            return "—" if not math.isfinite(number) else format(number, spec)

        collapse = (f"T_NC = {detector.t_nc} (ε = {detector.threshold:g}), fn* = {detector.fn_star:.4g}"
                    if detector.t_nc is not None else f"no collapse (NC1 never below ε = {detector.threshold:g})")
        what = (f"**{self.run.run_name}**: {self.params['arch']} on {self.params['dataset']}, measured through "
                f"ncflow's CollapseMonitor. Metric steps count **{unit}**: {len(self.history)} measurements, the "
                f"last at step {last[schema.HISTORY_EPOCH]:.0f}.")
        results = (f"Status: {status}. {collapse}. Last measurement: NC1 {value(schema.NC1, '.4g')}, NCC "
                   f"{value(schema.NCC, '.4g')}, flatness {value(schema.FLATNESS, '.4g')}, train accuracy "
                   f"{value(schema.TRAIN_ACC, '.2%')}, test accuracy {value(schema.TEST_ACC, '.2%')}.")
        return "\n\n".join([what, results, figure_markdown(self.run.run_id)])

    def _figure(self, summary: Mapping[str, float], status: str) -> bytes:
        import io

        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import pandas as pd

        from ncshared.dynamics_figure import plot_dynamics

        run = {**summary, **self.params, "run_id": self.run.run_id, "run_name": self.run.run_name, "status": status,
               "divergence_reason": self.detector.divergence_reason, "step_unit": self.step_unit}
        axes = plot_dynamics(pd.DataFrame(self.history), run)
        for ax in axes[:4]:
            ax.set_xlabel(self.step_unit)
        buffer = io.BytesIO()
        axes[0].figure.savefig(buffer, format="png")
        plt.close(axes[0].figure)
        return buffer.getvalue()


def monitor_params(num_classes: int, classifier: str, arch: str, dataset: str, seed: int | None,
                   extra: Mapping[str, Any] | None, nc1_threshold: float, fn_ref: float | None, lead: int,
                   passes: int, step_unit: str, layers: Sequence[str] = ()) -> dict[str, str]:
    """The params a monitor logs (its own settings, then `extra`), as strings; what its `ncflow.condition` hashes
    (`ncflow.library.monitor_run.condition_tag`), so a caller can know a run's condition before training it."""
    params: dict[str, Any] = {"arch": arch, "dataset": dataset, "num_classes": num_classes,
                              "nc1_threshold": nc1_threshold, "fn_ref": "none" if fn_ref is None else fn_ref,
                              "lead": lead, "classifier_module": classifier, "monitor_passes": passes,
                              "step_unit": step_unit}
    if seed is not None:
        params["seed"] = seed
    if layers:
        params["monitor_layers"] = ",".join(layers)
    for name, value in (extra or {}).items():
        if name in params:
            raise MonitorInputError(f"params: {name!r} is set by the monitor itself (pass it as an argument)")
        params[name] = value
    return {name: str(value) for name, value in params.items()}
