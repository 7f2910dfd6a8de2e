"""Collapse detection, fed one epoch at a time: T_NC, fn*, T_cross, the T_NC prediction and divergence.

Rules (Rupa, arXiv:2604.00230, Sections 2.2, 5.3 and 5.6; docs/metrics.md):
- T_NC is the first global epoch (1-based, Phase 1 included) with NC1 < ε; fn* is fn at that epoch. The same is
  recorded for every ε in REPORTED_THRESHOLDS, so fn*'s sensitivity to ε can be checked (the paper's Table 1).
- ε = `nc1_threshold`: a number in (0, 1), or "auto": 0.05 for GELU/Tanh or an MLP of depth ≤ 3, else 0.01.
- Given fn_ref, T_cross is the first Phase-2 epoch with fn < fn_ref, and the prediction is T_cross + lead.
- Diverged: a non-finite loss, NC1, fn or any other metric `update` is given (the training set's: every `nc/*` and
  `layers/*` value; the test set's are not given, as they are NaN by design when it lacks a class), or NC1 > 0.5 at an
  epoch after 300. A NaN NC1 never counts as collapse, and once diverged the detector stays diverged and ignores
  later epochs; `divergence_epoch` is the epoch it diverged at.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from ncshared import schema

# ε under nc1_threshold="auto": "relaxed" for RELAXED_ACTIVATIONS or an MLP of depth ≤ SHALLOW_MLP_DEPTH, else "strict"
AUTO_THRESHOLDS: Mapping[str, float] = MappingProxyType({"relaxed": 0.05, "strict": 0.01})
RELAXED_ACTIVATIONS = frozenset({"gelu", "tanh"})
SHALLOW_MLP_DEPTH = 3
REPORTED_THRESHOLDS = schema.EXTRA_THRESHOLDS

COLLAPSED, CROSSED, DIVERGED = "collapsed", "crossed", "diverged"  # event names returned by update()


def resolve_threshold(nc1_threshold: float | str, arch: str, depth: int, activation: str) -> float:
    """The NC1 collapse threshold ε: "auto" applies the paper's rule, a number (or numeric string) in (0, 1) is kept.

    Raises:
        ValueError: anything else, with a message naming `nc1_threshold`.
    """
    if isinstance(nc1_threshold, str) and nc1_threshold.strip().lower() == "auto":
        return auto_threshold(arch, depth, activation)
    value = _as_number(nc1_threshold)
    if value is None or not 0.0 < value < 1.0:
        raise ValueError(f"nc1_threshold: expected 'auto' or a number in (0, 1), got {nc1_threshold!r}")
    return value


def auto_threshold(arch: str, depth: int, activation: str) -> float:
    """0.05 for GELU/Tanh or an MLP with depth ≤ 3 (their NC1 plateaus at 0.03–0.08), else 0.01."""
    shallow_mlp = arch.lower() == "mlp" and depth <= SHALLOW_MLP_DEPTH
    relaxed = activation.lower() in RELAXED_ACTIVATIONS or shallow_mlp
    return AUTO_THRESHOLDS["relaxed" if relaxed else "strict"]


def _as_number(value: object) -> float | None:
    """A finite float from an int, float or numeric string; None for anything else (bools included)."""
    if isinstance(value, bool):
        return None
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


@dataclass
class CollapseDetector:
    """Tracks one run's NC1/fn trajectory and reports collapse events as they happen.

    Call `update` once per epoch, in increasing global-epoch order; read the results from the attributes, `status`
    and `summary_metrics()`.
    """

    threshold: float  # ε: collapse is NC1 < threshold (resolve it with resolve_threshold)
    fn_ref: float | None = None  # fn* reference for T_cross; None disables T_cross and the prediction
    lead: int = schema.DEFAULT_LEAD  # epochs from T_cross to the predicted T_NC
    divergence_nc1: float = 0.5  # NC1 above this ...
    divergence_after: int = 300  # ... at a global epoch after this one means divergence
    diverged: bool = field(default=False, init=False)
    divergence_reason: str | None = field(default=None, init=False)  # why, ending "at epoch N"
    divergence_epoch: int | None = field(default=None, init=False)
    t_cross: int | None = field(default=None, init=False)  # first Phase-2 epoch with fn < fn_ref
    last_epoch: int | None = field(default=None, init=False)  # the latest epoch passed to update()
    _first_below: dict[float, tuple[int, float]] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold: expected a number in (0, 1), got {self.threshold!r}")
        if self.fn_ref is not None and not (math.isfinite(self.fn_ref) and self.fn_ref > 0):
            raise ValueError(f"fn_ref: expected a positive number or None, got {self.fn_ref!r}")
        if self.lead < 0:
            raise ValueError(f"lead: expected an integer >= 0, got {self.lead!r}")

    @property
    def tracked_thresholds(self) -> tuple[float, ...]:
        """REPORTED_THRESHOLDS plus the run's own threshold."""
        return tuple(sorted({*REPORTED_THRESHOLDS, self.threshold}))

    def update(self, epoch: int, phase: int, metrics: Mapping[str, float], loss: float) -> list[str]:
        """Record one epoch; return the events it produced, in the order collapsed, crossed, diverged.

        Args:
            epoch: 1-based global epoch (Phase 1 included), larger than any earlier one.
            phase: 1 (cross-entropy) or 2 (MSE); only Phase-2 epochs can set T_cross.
            metrics: at least "nc1" and "fn" (as returned by ncflow.collapse.metrics.collapse_metrics); any other
                value given is checked too: a non-finite one is divergence.
            loss: the epoch's training loss.
        """
        nc1, fn = self._check_update(epoch, phase, metrics)
        self.last_epoch = epoch
        if self.diverged:
            return []
        reason = self._divergence(epoch, nc1, fn, loss, metrics)
        if reason is not None:
            self.diverged, self.divergence_reason, self.divergence_epoch = True, reason, epoch
            return [DIVERGED]
        events = []
        if self._record_collapse(epoch, nc1, fn):
            events.append(COLLAPSED)
        if self._record_crossing(epoch, phase, fn):
            events.append(CROSSED)
        return events

    def _check_update(self, epoch: int, phase: int, metrics: Mapping[str, float]) -> tuple[float, float]:
        """Validate update()'s arguments; return (nc1, fn) as floats."""
        if epoch < 1 or (self.last_epoch is not None and epoch <= self.last_epoch):
            raise ValueError(f"epoch: expected a 1-based epoch after {self.last_epoch or 0}, got {epoch}")
        if phase not in (1, 2):
            raise ValueError(f"phase: expected 1 or 2, got {phase!r}")
        missing = [name for name in ("nc1", "fn") if name not in metrics]
        if missing:
            raise ValueError(f"metrics: missing {missing}; got keys {sorted(metrics)}")
        return float(metrics["nc1"]), float(metrics["fn"])

    def _divergence(self, epoch: int, nc1: float, fn: float, loss: float, metrics: Mapping[str, float]) -> str | None:
        """Why this epoch counts as divergence, or None: loss, NC1 and fn first, then the other metrics in order."""
        for name, value in (("loss", loss), ("nc1", nc1), ("fn", fn), *metrics.items()):
            if not math.isfinite(float(value)):
                return f"non-finite {name} ({float(value)}) at epoch {epoch}"
        if nc1 > self.divergence_nc1 and epoch > self.divergence_after:
            return f"nc1={nc1:.4g} > {self.divergence_nc1} at epoch {epoch} (after epoch {self.divergence_after})"
        return None

    def _record_collapse(self, epoch: int, nc1: float, fn: float) -> bool:
        """Note the first epoch below each tracked ε; True when the run's own ε is reached now."""
        for eps in self.tracked_thresholds:
            if eps not in self._first_below and nc1 < eps:
                self._first_below[eps] = (epoch, fn)
        return self.t_nc == epoch

    def _record_crossing(self, epoch: int, phase: int, fn: float) -> bool:
        """Set T_cross at the first Phase-2 epoch with fn < fn_ref; True when that is now."""
        if self.fn_ref is None or self.t_cross is not None or phase != 2 or not fn < self.fn_ref:
            return False
        self.t_cross = epoch
        return True

    def at_threshold(self, eps: float) -> tuple[int | None, float | None]:
        """(T_NC, fn*) at ε = eps, one of tracked_thresholds; (None, None) until NC1 < eps."""
        if eps not in self.tracked_thresholds:
            raise ValueError(f"eps: expected one of {self.tracked_thresholds}, got {eps!r}")
        return self._first_below.get(eps, (None, None))

    @property
    def t_nc(self) -> int | None:
        """T_NC at the run's threshold: the first global epoch with NC1 < threshold."""
        return self.at_threshold(self.threshold)[0]

    @property
    def fn_star(self) -> float | None:
        """fn at T_NC."""
        return self.at_threshold(self.threshold)[1]

    @property
    def t_nc_pred(self) -> int | None:
        """Predicted T_NC = T_cross + lead, once T_cross is known."""
        return None if self.t_cross is None else self.t_cross + self.lead

    @property
    def status(self) -> str:
        """One of "diverged" (takes precedence), "collapsed" or "not_collapsed"."""
        if self.diverged:
            return schema.STATUS_DIVERGED
        return schema.STATUS_COLLAPSED if self.t_nc is not None else schema.STATUS_NOT_COLLAPSED

    def summary_metrics(self) -> dict[str, float]:
        """MLflow summary metrics, only those known: collapse/threshold, collapse/T_NC, collapse/eps_0.02/T_NC, ..."""
        summary = {schema.COLLAPSE_THRESHOLD: float(self.threshold)}
        known = {
            schema.FN_REF: self.fn_ref,
            schema.T_NC: self.t_nc,
            schema.FN_STAR: self.fn_star,
            schema.T_CROSS: self.t_cross,
            schema.T_NC_PRED: self.t_nc_pred,
        }
        for eps in REPORTED_THRESHOLDS:
            known[schema.t_nc_at(eps)], known[schema.fn_star_at(eps)] = self.at_threshold(eps)
        summary.update({key: float(value) for key, value in known.items() if value is not None})
        return summary


def view_metrics(nc1: float, fn: float, threshold: float) -> dict[str, float]:
    """The MLflow UI's per-epoch views of one epoch (`schema.VIEW_METRICS`); non-finite inputs are left out.

    log10 is taken of max(value, 1e-12), so an exact zero charts as -12 rather than -inf.
    """
    views: dict[str, float] = {}
    if math.isfinite(nc1):
        views[schema.VIEW_NC1_LOG10] = math.log10(max(nc1, 1e-12))
        views[schema.VIEW_UNDER_EPS] = float(nc1 < threshold)
    if math.isfinite(fn):
        views[schema.VIEW_FN_LOG10] = math.log10(max(fn, 1e-12))
    return views
