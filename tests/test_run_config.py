"""RunConfig's field marks: the field lists derived from them are the lists once written out by hand, the condition
hash is unchanged, and validation and the CLI follow the marks."""

from __future__ import annotations

import dataclasses
import gzip
import json
from pathlib import Path

import pytest

from analysis import selection
from ncflow.cli.options import CHOICES
from ncflow.engine import pack, run_setup
from ncflow.engine.config import MAX_COUNT, ConfigError, build_config, condition_hash
from ncshared import run_config, schema
from ncshared.run_config import RunConfig

ROOT = Path(__file__).resolve().parent.parent
COMMITTED_RUNS = sorted((ROOT / "docs" / "reproduction" / "runs").glob("*.json.gz"))

# The lists as they were written out by hand before the marks (ncflow 87729f1), in their order then.
HAND_WRITTEN = {
    "NON_CONDITION_PARAMS": (
        "seed", "data_dir", "device", "checkpoint_every", "checkpoints", "experiment", "tracking_uri", "fn_ref", "lead",
        "stop_after_collapse", "layerwise", "matmul_precision", "threads", "deterministic", "log_model",
    ),
    "SYNTHETIC_PARAMS": ("synthetic_classes", "synthetic_shape", "synthetic_per_class"),
    "IMBALANCE_PARAMS": ("imbalance_ratio", "imbalance_profile"),
    "REGULARISER_PARAMS": ("reg", "reg_lambda", "unplug_epoch", "unplug_weight_decay", "unplug_lr_factor",
                           "unplug_schedule"),
    "DESIGN_PARAMS": (
        "dataset", "arch", "depth", "width", "activation", "optimizer", "lr", "momentum", "nesterov", "weight_decay",
        "schedule", "milestones", "lr_gamma", "batch_size", "phase1_epochs", "phase2_epochs", "protocol",
        "nc1_threshold", "rescale_alpha", "synthetic_classes", "synthetic_shape", "synthetic_per_class", "classifier",
        "imbalance_ratio", "imbalance_profile",
        # Han et al.'s regulariser (issue 22), after the marks
        "reg", "reg_lambda", "unplug_epoch", "unplug_weight_decay", "unplug_lr_factor", "unplug_schedule",
    ),
    "SHARED_WITH_SOURCE_FIELDS": (
        "dataset", "arch", "depth", "width", "activation", "phase1_epochs", "phase2_epochs", "optimizer", "lr",
        "momentum", "nesterov", "weight_decay", "schedule", "milestones", "lr_gamma", "batch_size",
        "reg", "reg_lambda", "unplug_epoch", "unplug_weight_decay", "unplug_lr_factor", "unplug_schedule",
    ),
    "PACK_SHARED_FIELDS": (
        "dataset", "data_dir", "arch", "depth", "width", "activation", "batch_size", "phase1_epochs", "phase2_epochs",
        "protocol", "optimizer", "schedule", "milestones", "lr_gamma", "imbalance_ratio", "imbalance_profile", "device",
        "matmul_precision", "threads", "deterministic", "synthetic_classes", "synthetic_shape", "synthetic_per_class",
    ),
    "COUNT_FIELDS": ("phase1_epochs", "phase2_epochs", "lead", "batch_size", "checkpoint_every", "synthetic_per_class",
                     "synthetic_classes"),
}
HAND_WRITTEN_ADDED_PARAM_DEFAULTS = {"classifier": "learned", "checkpoints": "all", "layerwise": "false",
                                     "imbalance_ratio": "1.0", "imbalance_profile": "step",
                                     "matmul_precision": "highest", "threads": "0", "deterministic": "false",
                                     "log_model": "false", "reg": "none", "reg_lambda": "0.0", "unplug_epoch": "0",
                                     "unplug_weight_decay": "-1.0", "unplug_lr_factor": "1.0",
                                     "unplug_schedule": "none"}
HAND_WRITTEN_CHOICES = {  # `dataset` takes a file or folder too: ncflow.engine.config checks it
    "arch": ("mlp", "resnet20", "resnet18"), "reg": ("none", "ncc", "flatness"), "unplug_schedule": ("none", "cosine"),
    "activation": ("relu", "gelu", "tanh"), "optimizer": ("adam", "sgd"), "schedule": ("cosine", "multistep", "constant"),
    "protocol": ("two-phase", "ce-only", "mse-only"), "device": ("auto", "cpu", "cuda"),
    "checkpoints": ("all", "phase", "last", "none"), "classifier": ("learned", "etf"), "imbalance_profile": ("step", "exp"),
    "matmul_precision": ("highest", "high"),
}
# `condition_hash` of these configurations before the marks: a changed rule would re-label every logged condition.
PINNED_HASHES = [
    (None, {}, "ab8f5615ffa3"),
    ("paper-mnist-mlp", {"dataset": "mnist"}, "ba42eda66a76"),
    ("paper-cifar-resnet20", {}, "15a311291a0c"),
    (None, {"classifier": "etf"}, "e81ce95d1758"),
    (None, {"imbalance_ratio": "10", "imbalance_profile": "exp"}, "cc773e639c3e"),
    (None, {"imbalance_ratio": "1", "imbalance_profile": "exp"}, "ab8f5615ffa3"),  # balanced: the profile is no part
    (None, {"dataset": "synthetic", "synthetic_classes": "4"}, "bb8f6583e66a"),
    (None, {"init_from": "abc", "rescale_alpha": "0.3"}, "6fb2e86ccd1e"),
    (None, {"layerwise": "true", "matmul_precision": "high", "checkpoints": "all", "seed": "5"}, "ab8f5615ffa3"),
    (None, {"threads": "2", "deterministic": "true"}, "ab8f5615ffa3"),  # how the machine computes: no part either
    (None, {"reg": "none"}, "ab8f5615ffa3"),  # unregularised: the regulariser's params are no part
    (None, {"reg": "ncc", "reg_lambda": "1e-3"}, "610027bb616e"),  # pinned when the regularisers came (issue 22)
]
VOCABULARY = {run_config.DESIGN, run_config.INTERVENTION, run_config.SYNTHETIC, run_config.IMBALANCE,
              run_config.REGULARISER,
              run_config.SOURCE, run_config.PACK, run_config.COUNT, run_config.ADDED_DEFAULT, run_config.CHOICES}


def test_derived_lists_are_the_hand_written_ones():
    derived = {
        "NON_CONDITION_PARAMS": schema.NON_CONDITION_PARAMS,
        "SYNTHETIC_PARAMS": schema.SYNTHETIC_PARAMS,
        "IMBALANCE_PARAMS": schema.IMBALANCE_PARAMS,
        "REGULARISER_PARAMS": schema.REGULARISER_PARAMS,
        "DESIGN_PARAMS": selection.DESIGN_PARAMS,
        "SHARED_WITH_SOURCE_FIELDS": run_setup.SHARED_WITH_SOURCE_FIELDS,
        "PACK_SHARED_FIELDS": pack.PACK_SHARED_FIELDS,
        "COUNT_FIELDS": run_config.params_marked(run_config.COUNT),
    }
    for name, fields in derived.items():
        assert sorted(fields) == sorted(HAND_WRITTEN[name]), name
        assert len(set(fields)) == len(fields), name
    assert schema.ADDED_PARAM_DEFAULTS == HAND_WRITTEN_ADDED_PARAM_DEFAULTS
    assert CHOICES == HAND_WRITTEN_CHOICES


def test_every_field_is_in_the_condition_or_out_of_it():
    names = [field.name for field in dataclasses.fields(RunConfig)]
    design, non_condition = selection.DESIGN_PARAMS, schema.NON_CONDITION_PARAMS
    assert set(design).isdisjoint(non_condition)
    assert sorted((*design, *non_condition, "init_from")) == sorted(names)
    assert run_config.params_marked(run_config.INTERVENTION) == ("init_from",)


def test_marks_are_the_documented_vocabulary():
    for field in dataclasses.fields(RunConfig):
        assert set(field.metadata) <= VOCABULARY, field.name
        # a part of the condition, sometimes left out
        for mark in (run_config.SYNTHETIC, run_config.IMBALANCE, run_config.REGULARISER):
            assert not field.metadata.get(mark) or field.metadata.get(run_config.DESIGN), field.name
        if run_config.CHOICES in field.metadata:
            assert field.default in field.metadata[run_config.CHOICES], field.name
    assert schema.DEFAULT_LEAD == RunConfig().lead == 62 and schema.DEFAULT_EXPERIMENT == RunConfig().experiment


@pytest.mark.parametrize(("preset", "overrides", "expected"), PINNED_HASHES)
def test_condition_hash_is_unchanged(preset, overrides, expected):
    assert condition_hash(build_config(preset, overrides)) == expected


@pytest.mark.skipif(not COMMITTED_RUNS, reason="no committed runs")
def test_committed_runs_still_hash_to_their_condition_tag():
    assert len(COMMITTED_RUNS) >= 10
    for path in COMMITTED_RUNS:
        run = json.loads(gzip.decompress(path.read_bytes()))
        assert schema.condition_hash(run["params"]) == run["tags"][schema.TAG_CONDITION], path.name


@pytest.mark.parametrize("name", run_config.params_marked(run_config.COUNT))
def test_validate_bounds_every_count(name):
    build_config(None, {name: MAX_COUNT})
    with pytest.raises(ConfigError, match=f"^{name}: expected an integer up to 10,000,000, got {MAX_COUNT + 1}$"):
        build_config(None, {name: MAX_COUNT + 1})


@pytest.mark.parametrize("name", sorted(run_config.field_choices()))
def test_validate_takes_only_a_fields_choices(name):
    allowed = run_config.field_choices()[name]
    with pytest.raises(ConfigError, match=f"^{name}: 'bogus' is not one of {', '.join(allowed)}$"):
        build_config(None, {name: "bogus"})
