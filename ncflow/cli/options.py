"""`ncflow train`'s options, one per RunConfig field, and its `--help` grouped by what the options are about.

Values stay strings until `ncflow.engine.config.build_config` parses and validates them, so a bad value gets ncflow's
one-line error (exit 2) instead of click's usage block; the metavars still say the type (INTEGER, FLOAT,
[relu|gelu|tanh]). A boolean field is a flag pair (`--nesterov/--no-nesterov`); the MLproject, which can only
substitute values, passes it as `--nesterov-value true|false` (hidden from the help). The command lines' own number
options (`--workers`, `--ship-timeout`) are `CheckedNumber`s, refused the same way (nan and inf included).
"""

from __future__ import annotations

import math
from dataclasses import fields
from typing import Any, Callable

import click

from ncshared import schema
from ncshared.bad_input import BadInput
from ncshared.run_config import RunConfig, field_choices, field_help, format_value

# The fields that take one of a few words: their CHOICES marks, and `checkpoints`, whose words the schema defines.
CHOICES: dict[str, tuple[str, ...]] = {**field_choices(), "checkpoints": tuple(schema.CHECKPOINT_CHOICES)}
METAVARS = {  # fields whose values are not a plain type
    "milestones": "INTEGER,…", "nc1_threshold": "auto|FLOAT", "fn_ref": "none|auto|FLOAT",
    "stop_after_collapse": "off|INTEGER", "init_from": "RUN_ID|none", "synthetic_shape": "CxHxW",
    "experiment": "NAME", "tracking_uri": "URI", "data_dir": "DIR", "dataset": "NAME|FILE|DIR",
}
TYPE_METAVARS = {"int": "INTEGER", "float": "FLOAT", "str": "TEXT"}
VALUE_SUFFIX = "-value"  # `--nesterov-value true`: a boolean field as a value, for the MLproject

# The help's sections, in order: (title, option names). Options in none of them go under "Other options".
TRAIN_GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Start", ("preset", "resume_run_id", "force")),
    ("Model", ("arch", "depth", "width", "activation", "classifier")),
    ("Optimisation", ("optimizer", "lr", "momentum", "nesterov", "weight_decay", "schedule", "milestones",
                      "lr_gamma", "batch_size", "seed")),
    ("Protocol", ("protocol", "phase1_epochs", "phase2_epochs", "init_from", "rescale_alpha", "stop_after_collapse")),
    ("Regulariser (Han et al.)", ("reg", "reg_lambda", "unplug_epoch", "unplug_weight_decay", "unplug_lr_factor",
                                  "unplug_schedule")),
    ("Collapse", ("nc1_threshold", "fn_ref", "lead", "layerwise")),
    ("Data", ("dataset", "data_dir", "imbalance_ratio", "imbalance_profile", "synthetic_classes", "synthetic_shape",
              "synthetic_per_class", "device", "matmul_precision", "threads", "deterministic")),
    ("Tracking", ("experiment", "tracking_uri", "checkpoints", "checkpoint_every", "log_model", "record_dir",
                  "ship_timeout", "quiet")),
)


def option_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def metavar_of(name: str, annotation: str) -> str:
    if name in CHOICES:
        return "[" + "|".join(CHOICES[name]) + "]"
    return METAVARS.get(name, TYPE_METAVARS.get(annotation, "VALUE"))


def bool_flag(name: str, help_text: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """`--name/--no-name`, giving the option "true"/"false" (None when absent), plus the hidden value form."""
    def to_text(ctx: click.Context, param: click.Parameter, value: bool | None) -> str | None:
        return None if value is None else format_value(value)

    flag = click.option(f"{option_name(name)}/--no-{name.replace('_', '-')}", name, default=None,
                        callback=to_text, help=help_text)
    value = click.option(option_name(name) + VALUE_SUFFIX, name + "_value", type=str, default=None, hidden=True,
                         metavar="true|false")
    return lambda command: flag(value(command))


def config_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """One option per RunConfig field, help text from the field's comment; every option defaults to None (unset),
    so the resolution defaults → preset → given options holds."""
    help_texts = field_help()
    for config_field in reversed(fields(RunConfig)):
        default_text = format_value(config_field.default) or "''"
        text = f"{help_texts[config_field.name]} [default: {default_text}]"
        if config_field.type == "bool":
            command = bool_flag(config_field.name, text)(command)
            continue
        command = click.option(option_name(config_field.name), config_field.name, type=str, default=None,
                               metavar=metavar_of(config_field.name, str(config_field.type)), help=text)(command)
    return command


def merge_value_forms(options: dict[str, str | None]) -> dict[str, str | None]:
    """Fold `--nesterov-value X` into `nesterov` (the flag wins when both are given)."""
    merged = dict(options)
    for key in [k for k in merged if k.endswith("_value")]:
        value = merged.pop(key)
        base = key[: -len("_value")]
        if merged.get(base) is None and value is not None:
            merged[base] = value
    return merged


class GroupedCommand(click.Command):
    """A command whose `--help` lists its options in sections (`option_groups`: title → param names)."""

    option_groups: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        records = {param.name: param.get_help_record(ctx) for param in self.get_params(ctx)}
        placed: set[str | None] = set()
        for title, names in self.option_groups:
            rows = [records[name] for name in names if records.get(name)]
            placed.update(names)
            if rows:
                with formatter.section(f"{title} options"):
                    formatter.write_dl(rows)  # type: ignore[arg-type]
        rest = [record for name, record in records.items() if name not in placed and record]
        if rest:
            with formatter.section("Other options"):
                formatter.write_dl(rest)


class TrainCommand(GroupedCommand):
    option_groups = TRAIN_GROUPS


InputError = BadInput  # bad input: one line `Error: …` and exit code 2, before any work or run starts


class CheckedNumber(click.ParamType):
    """A number option that is refused like a RunConfig value: one line naming it and what it takes (exit 2)."""

    expected = "a number"

    def accepts(self, number: float) -> bool:
        return math.isfinite(number)

    def result(self, number: float) -> Any:
        return number

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        if not self.accepts(number):
            name = param.name if param is not None else "value"
            raise InputError(f"{name}: expected {self.expected}, got {value!r}")
        return self.result(number)


class WholeNumber(CheckedNumber):
    """A positive whole number that also takes MLflow's float form (`-P workers=2` arrives as `2.0`)."""

    name = "integer"
    expected = "a whole number >= 1"

    def accepts(self, number: float) -> bool:
        return number.is_integer() and number >= 1

    def result(self, number: float) -> int:
        return int(number)


class Seconds(CheckedNumber):
    """A finite number of seconds >= 0 (click's FloatRange lets nan and inf through)."""

    name = "seconds"
    expected = "a finite number of seconds >= 0"

    def accepts(self, number: float) -> bool:
        return math.isfinite(number) and number >= 0
