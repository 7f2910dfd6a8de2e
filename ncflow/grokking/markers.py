"""Grokking markers: when a run memorised, when it generalised, and when NCC and flatness fell (docs/metrics.md).

From the measurements (one row per evaluation step):
- `grokking/step_memorised`: the first step with training accuracy ≥ 99 %;
- `grokking/step_generalised`: the first step with validation accuracy ≥ 99 %;
- `grokking/step_ncc_drop`, `grokking/step_flatness_drop`: the first step at which the metric is at or below
  DROP_FRACTION of its memorisation-phase level — its largest value over the evaluations up to and including the
  step of memorisation (the whole run when it never memorised) — counted after that largest value;
- `grokking/delay`: step_generalised − step_memorised.
A marker that never happens is not logged.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from ncshared import schema

ACCURACY_LEVEL = 0.99
DROP_FRACTION = 0.5
PREFIX = "grokking/"


def first_step(rows: Sequence[Mapping[str, float]], holds) -> float | None:
    for row in rows:
        if holds(row):
            return row[schema.HISTORY_EPOCH]
    return None


def drop_step(rows: Sequence[Mapping[str, float]], metric: str, until: float | None) -> float | None:
    """The first step after the metric's memorisation-phase peak at which it is ≤ DROP_FRACTION × that peak."""
    phase = [row for row in rows if until is None or row[schema.HISTORY_EPOCH] <= until]
    finite = [row for row in phase if math.isfinite(row.get(metric, math.nan))]
    if not finite:
        return None
    peak = max(finite, key=lambda row: row[metric])
    level = DROP_FRACTION * peak[metric]
    return first_step([row for row in rows if row[schema.HISTORY_EPOCH] > peak[schema.HISTORY_EPOCH]],
                      lambda row: row.get(metric, math.nan) <= level)


def grokking_markers(rows: Sequence[Mapping[str, float]]) -> dict[str, float]:
    memorised = first_step(rows, lambda row: row.get(schema.TRAIN_ACC, 0.0) >= ACCURACY_LEVEL)
    generalised = first_step(rows, lambda row: row.get(schema.TEST_ACC, 0.0) >= ACCURACY_LEVEL)
    found = {"step_memorised": memorised, "step_generalised": generalised,
             "step_ncc_drop": drop_step(rows, schema.NCC, memorised),
             "step_flatness_drop": drop_step(rows, schema.FLATNESS, memorised),
             "delay": None if memorised is None or generalised is None else generalised - memorised}
    return {PREFIX + name: float(value) for name, value in found.items() if value is not None}
