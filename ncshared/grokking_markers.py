"""Grokking markers: when a run memorised, when it generalised, and when NCC and flatness fell (docs/metrics.md).

From the measurements (one row per evaluation step; torch-free, so the training loop logs them and the analysis
recomputes them from any run's history under this one definition):
- `grokking/step_memorised`: the first step with training accuracy ≥ 99 %;
- `grokking/step_generalised`: the first step with validation accuracy ≥ 99 %;
- `grokking/step_ncc_drop`, `grokking/step_flatness_drop`: the first step after memorisation at which the metric is at
  or below DROP_FRACTION of its memorisation-phase level — its value at the step of memorisation, when the network
  has just fit its training set (the phase that follows is the one the markers time). Not the largest value up to
  memorisation: with memorisation a few evaluations in, that is the first evaluation's value, a transient of the
  initialisation rather than a level of the memorisation phase;
- `grokking/delay`: step_generalised − step_memorised.
A marker that never happens is not logged; the drops need a memorisation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

from ncshared import schema

ACCURACY_LEVEL = 0.99
DROP_FRACTION = 0.5
PREFIX = "grokking/"
Row = Mapping[str, float]


def first_step(rows: Sequence[Row], holds: Callable[[Row], bool]) -> float | None:
    for row in rows:
        if holds(row):
            return row[schema.HISTORY_EPOCH]
    return None


def drop_step(rows: Sequence[Row], metric: str, memorised: float | None) -> float | None:
    """The first step after `memorised` at which the metric is ≤ DROP_FRACTION × its value at `memorised`."""
    if memorised is None:
        return None
    at = [row.get(metric, math.nan) for row in rows if row[schema.HISTORY_EPOCH] == memorised]
    if not at or not math.isfinite(at[0]):
        return None
    level = DROP_FRACTION * at[0]
    return first_step([row for row in rows if row[schema.HISTORY_EPOCH] > memorised],
                      lambda row: row.get(metric, math.nan) <= level)


def grokking_markers(rows: Sequence[Row]) -> dict[str, float]:
    memorised = first_step(rows, lambda row: row.get(schema.TRAIN_ACC, 0.0) >= ACCURACY_LEVEL)
    generalised = first_step(rows, lambda row: row.get(schema.TEST_ACC, 0.0) >= ACCURACY_LEVEL)
    found = {"step_memorised": memorised, "step_generalised": generalised,
             "step_ncc_drop": drop_step(rows, schema.NCC, memorised),
             "step_flatness_drop": drop_step(rows, schema.FLATNESS, memorised),
             "delay": None if memorised is None or generalised is None else generalised - memorised}
    return {PREFIX + name: float(value) for name, value in found.items() if value is not None}
