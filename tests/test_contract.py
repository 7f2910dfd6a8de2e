"""The names-only contract between training and analysis: its docs page, its purity, and its two naming rules."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

from ncflow.engine.config import build_config, condition_hash, run_name
from ncshared import schema
from ncshared.run_config import RunConfig

DOCS = Path(__file__).resolve().parents[1] / "docs" / "tracking.md"


def contract_names() -> set[str]:
    """Every string the contract defines as a module-level name (tags, metrics, artifacts, values)."""
    names: set[str] = set()
    for attribute, value in vars(schema).items():
        if attribute.startswith("_") or attribute in ("annotations",):
            continue
        if isinstance(value, str) and attribute.isupper():
            names.add(value)
        elif isinstance(value, tuple) and attribute.isupper():
            names.update(item for item in value if isinstance(item, str))
    names.update(schema.t_nc_at(eps) for eps in schema.EXTRA_THRESHOLDS)
    names.update(schema.fn_star_at(eps) for eps in schema.EXTRA_THRESHOLDS)
    names.update(schema.checkpoint_path(name) for name in schema.CHECKPOINTS)
    # Per-layer names, as the docs write them (`<l>` the layer).
    names.update(schema.layer_metric("<l>", name) for name in schema.LAYER_METRIC_NAMES)  # type: ignore[arg-type]
    names.add(schema.layer_t_nc("<l>"))  # type: ignore[arg-type]
    # Parts of names, not names: prefixes, the directory, the metric names before their `nc/` prefix.
    parts = {schema.NC_PREFIX, schema.VIEW_PREFIX, *schema.SUMMARY_PREFIXES, schema.CHECKPOINT_DIR,
             *schema.COLLAPSE_METRIC_NAMES, schema.LAYER_PREFIX}
    return names - parts


def test_docs_list_every_contract_name():
    documented = set(re.findall(r"`([^`\s]+)`", DOCS.read_text()))
    missing = sorted(name for name in contract_names() if name not in documented)
    assert not missing, f"docs/tracking.md does not list {missing}"


def test_docs_name_no_metric_or_tag_the_contract_lacks():
    documented = set(re.findall(r"`((?:ncflow\.|mlflow\.|nc/|NC/|train/|test/|time/|collapse/|intervention/|sweep/)[^`\s]*)`", DOCS.read_text()))
    unknown = sorted(documented - contract_names())
    assert not unknown, f"docs/tracking.md names {unknown}, which ncshared/schema.py does not define"


def test_docs_history_columns_in_contract_order():
    text = DOCS.read_text()
    assert "`" + ", ".join(schema.HISTORY_COLUMNS) + "`" in text.replace("`, `", ", ")


def test_params_are_the_run_config_fields():
    fields = {field.name for field in dataclasses.fields(RunConfig)}
    assert set(schema.NON_CONDITION_PARAMS) <= fields
    assert set(schema.SYNTHETIC_PARAMS) <= fields
    documented = DOCS.read_text().split("## Params", 1)[1].split("##", 1)[0]
    assert all(f"{name}," in documented or f"{name}`" in documented for name in fields)


def test_contract_imports_nothing_heavy():
    code = "import sys, ncshared.schema; print(sorted(m for m in ('torch', 'scipy', 'mlflow', 'numpy', 'pandas') if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "[]"


def test_run_name_examples():
    assert run_name(build_config("paper-mnist-mlp", {"dataset": "mnist", "seed": 0})) == "mlp5-relu-w512-wd1e-04-mnist-s0"
    config = build_config(None, {"init_from": "abc", "rescale_alpha": 0.3, "seed": 2, "protocol": "two-phase"})
    assert run_name(config) == "mlp5-relu-w512-wd2e-04-digits-a0.3-s2"
    assert run_name(build_config(None, {"protocol": "ce-only"})).endswith("-digits-ce-only-s0")


def test_condition_hash_leaves_out_seed_and_reporting_fields():
    base = build_config(None, {})
    same = [{"seed": 3}, {"fn_ref": "2.5"}, {"fn_ref": "auto"}, {"lead": 10}, {"stop_after_collapse": "20"},
            {"checkpoint_every": 7}, {"device": "cpu"}, {"experiment": "other"}, {"data_dir": "/elsewhere"}]
    for change in same:
        assert condition_hash(base.replace(**change)) == condition_hash(base), change
    for change in [{"depth": 7}, {"weight_decay": 1e-4}, {"protocol": "ce-only"}, {"lr": 0.01}]:
        assert condition_hash(base.replace(**change)) != condition_hash(base), change
    # An intervention is one condition whatever Phase-1 run it starts from; α still matters.
    alpha = base.replace(init_from="run-a", rescale_alpha=0.3)
    assert condition_hash(alpha.replace(init_from="run-b")) == condition_hash(alpha)
    assert condition_hash(alpha.replace(rescale_alpha=3.0)) != condition_hash(alpha)
    # The hash is a pure function of the canonical params: the contract computes it without RunConfig.
    assert schema.condition_hash(base.as_params()) == condition_hash(base)
    assert re.fullmatch(r"[0-9a-f]{12}", condition_hash(base))


def test_same_number_reads_params_as_numbers():
    assert schema.same_number("1.0", 1) and schema.same_number("2e-4", 0.0002)
    assert not schema.same_number("1", 2) and not schema.same_number("none", 1) and not schema.same_number("", 0)
