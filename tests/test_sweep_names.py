"""Writer and reader of the sweep tag agree: every sweep `ncflow sweep` runs is read by the analysis as its family,
and every family the analysis looks a sweep name up for is one that a sweep writes (`schema.SWEEP_FAMILIES`)."""

from __future__ import annotations

import pandas as pd

from analysis.selection import SWEEP_NAMES, family, is_layerwise
from ncflow.sweeps.grids import MAIN, NAMED_SWEEPS, Sweep, resolve_points
from ncshared import schema

# The families the analysis selects by sweep name (`Estimates.family(param)`, and the grid's cells).
FAMILIES_THE_ANALYSIS_READS = ("depth", "activation", "weight_decay", "width", schema.GRID_FAMILY, "rescale_alpha",
                               "protocol", "imbalance_ratio", "classifier")


def sweep_runs(sweep: Sweep) -> pd.DataFrame:
    """One finished training run per main-stage point of `sweep`, as `analysis.store` reads runs (params as strings)."""
    rows = [
        {**point.config.as_params(), "sweep": sweep.name, "status": schema.STATUS_COLLAPSED,
         "kind": schema.KIND_TRAIN, "condition": point.condition}
        for point in resolve_points(sweep, {}) if point.stage == MAIN
    ]
    return pd.DataFrame(rows, index=[f"{sweep.name}-{number}" for number in range(len(rows))])


def test_the_sweeps_that_run_are_the_sweeps_the_schema_names():
    assert list(NAMED_SWEEPS) == list(schema.SWEEP_FAMILIES)
    assert all(name == sweep.name for name, sweep in NAMED_SWEEPS.items())


def test_every_named_sweep_reads_as_its_family():
    every_run = pd.concat([sweep_runs(sweep) for sweep in NAMED_SWEEPS.values()])
    for name in NAMED_SWEEPS:
        own = every_run[every_run["sweep"] == name]
        varied = schema.SWEEP_FAMILIES[name]
        assert name in SWEEP_NAMES[varied], name
        if varied == "layerwise":  # the layer-wise study: the runs that turn the param on
            assert is_layerwise(own).all() and not is_layerwise(every_run.drop(own.index)).any()
            continue
        params = ["arch", "dataset"] if varied == schema.GRID_FAMILY else [varied]
        assert len(own[params].drop_duplicates()) >= 2, name  # the sweep varies what its family compares
        found = family(every_run, params, SWEEP_NAMES[varied])
        assert set(own.index) <= set(found.index), name  # other sweeps' runs of the same design may join


def test_every_family_the_analysis_reads_is_written_by_a_sweep():
    assert set(FAMILIES_THE_ANALYSIS_READS) <= set(SWEEP_NAMES)
    for varied, names in SWEEP_NAMES.items():
        assert names and set(names) <= set(NAMED_SWEEPS), varied
        assert all(schema.SWEEP_FAMILIES[name] == varied for name in names)
