"""The run configuration's presets, parsing and validation (`RunConfig` itself is `ncshared.run_config`).

Resolution order is defaults → preset → explicit overrides; `validate` rejects a bad value with one line that names
the parameter and what is allowed, before any data is loaded or any MLflow run exists. Han et al.'s regulariser
(`reg`) works on the penultimate features and the head, which every engine architecture has (the MLP's last hidden
activation, the ResNets' pooled vector), so only its values are checked, not the model. One default can come from the
environment: NCFLOW_LOG_MODEL=false makes `log_model` default to false (the test suite sets it: logging a model adds
about a second to a run, most of it the first time in a process).
"""

from __future__ import annotations

import math
import os
from dataclasses import fields
from typing import Any, Mapping

from ncflow.engine import own_data
from ncshared import schema
from ncshared.run_config import COUNT, DATASETS, RunConfig, field_choices, format_value, params_marked

RESNET_FEATURES = {"resnet20": 64, "resnet18": 512}  # each ResNet's pooled (penultimate) feature dimension
LOG_MODEL_VARIABLE = "NCFLOW_LOG_MODEL"  # true | false: the default of `log_model` (RunConfig's is true)


class ConfigError(ValueError):
    """A configuration value is not allowed; the message is one line naming the parameter."""


PRESETS: dict[str, dict[str, Any]] = {
    # The paper's MNIST protocol: MNIST / MLP-5, Adam 1e-3, cosine, λ = 1e-4, 200 CE + 400 MSE epochs.
    "paper-mnist-mlp": dict(
        dataset="mnist", arch="mlp", depth=5, width=512, activation="relu", optimizer="adam", lr=1e-3,
        weight_decay=1e-4, schedule="cosine", phase1_epochs=200, phase2_epochs=400,
    ),
    # The paper's CIFAR protocol: CIFAR-10 / ResNet-20, SGD 0.1 Nesterov, λ = 1e-3, MultiStep at 300/450, 200 + 600 epochs.
    "paper-cifar-resnet20": dict(
        dataset="cifar10", arch="resnet20", optimizer="sgd", lr=0.1, momentum=0.9, nesterov=True,
        weight_decay=1e-3, schedule="multistep", milestones=(300, 450), phase1_epochs=200, phase2_epochs=600,
    ),
}


def _parse_bool(name: str, raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise ConfigError(f"{name}: expected true or false, got {raw!r}")


def parse_field(name: str, raw: Any) -> Any:
    """Convert a raw value (a string from the CLI, MLproject or a sweep spec) to the field's type."""
    types = {field.name: field.type for field in fields(RunConfig)}
    if name not in types:
        allowed = ", ".join(sorted(types))
        raise ConfigError(f"unknown parameter {name!r}; allowed: {allowed}")
    kind = types[name]
    if not isinstance(raw, str):
        raw_text = format_value(raw)
    else:
        raw_text = raw.strip()
    try:
        if kind == "bool":
            return raw if isinstance(raw, bool) else _parse_bool(name, raw_text)
        if kind == "int":
            return _whole_number(raw_text)
        if kind == "float":
            return float(raw_text)
        if kind == "tuple[int, ...]":
            return tuple(_whole_number(part) for part in raw_text.replace(" ", "").split(",") if part)
    except ValueError:
        raise ConfigError(f"{name}: expected {KIND_WORDS.get(str(kind), kind)}, got {raw!r}") from None
    return raw_text


KIND_WORDS = {  # what a field's type is called in an error message
    "int": "a whole number", "float": "a number", "tuple[int, ...]": "comma-separated whole numbers like 300,450",
}


def _whole_number(text: str) -> int:
    """`7`, and MLflow's float forms `7.0` and `1e3` (MLproject passes integers either way); ValueError otherwise."""
    try:
        return int(text)  # exact, also beyond 2**53
    except ValueError:
        number = float(text)
        if not number.is_integer():  # also nan and ±inf
            raise ValueError(text) from None
        return int(number)


def build_config(preset: str | None = None, overrides: Mapping[str, Any] | None = None) -> RunConfig:
    """Defaults (NCFLOW_LOG_MODEL for `log_model`) → preset → overrides (raw values are parsed), then validated."""
    values: dict[str, Any] = {}
    if os.environ.get(LOG_MODEL_VARIABLE, "").strip():
        try:
            values["log_model"] = _parse_bool(LOG_MODEL_VARIABLE, os.environ[LOG_MODEL_VARIABLE])
        except ConfigError as error:
            raise ConfigError(f"{error} (the environment's default of log_model)") from None
    if preset not in (None, "", "none"):
        if preset not in PRESETS:
            raise ConfigError(f"preset: unknown preset {preset!r}; allowed: {', '.join(PRESETS)}")
        values.update(PRESETS[preset])
    for name, raw in (overrides or {}).items():
        values[name] = parse_field(name, raw)
    config = RunConfig(**values)
    validate(config)
    return config


MAX_SEED = 2**63 - 1  # torch.manual_seed takes a signed 64-bit integer
MAX_COUNT = 10**7  # epochs, batch sizes, samples: far beyond any real run, well inside every integer type
MAX_THREADS = 1024  # CPU threads: more than any machine torch runs on has cores


def _shown(number: int) -> str:
    """An integer for a message: as it is, or as `1.000e+300` when it has more than 20 digits."""
    digits = str(abs(number))
    if len(digits) <= 20:
        return str(number)
    return f"{'-' if number < 0 else ''}{digits[0]}.{digits[1:4]}e+{len(digits) - 1}"


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    _require(value in allowed, f"{name}: {value!r} is not one of {', '.join(allowed)}")


def _number_or_word(name: str, value: str, words: tuple[str, ...], low: float, high: float) -> None:
    if value in words:
        return
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    words_text = " or ".join(words)
    _require(low < number < high, f"{name}: expected {words_text} or a number in ({low:g}, {high:g}), got {value!r}")


def _dataset(name: str) -> None:
    """One of DATASETS, or a path that may be your own data (`ncflow.engine.own_data` reads and checks it later)."""
    if name in DATASETS:
        return
    if not own_data.looks_like_path(name):
        raise ConfigError(f"dataset: {name!r} is not one of {', '.join(DATASETS)}, nor a file or folder "
                          f"({own_data.ACCEPTED})")
    problem = own_data.source_problem(name)
    _require(problem is None, f"dataset: {problem}")


def validate(config: RunConfig) -> None:
    """Raise ConfigError (one line, naming the parameter) for the first value that is not allowed."""
    for name, allowed in field_choices().items():
        _choice(name, getattr(config, name), allowed)
    _dataset(config.dataset)
    _require(1 <= config.depth <= 64, f"depth: expected an integer from 1 to 64, got {_shown(config.depth)}")
    _require(1 <= config.width <= 65536, f"width: expected a positive integer, got {_shown(config.width)}")
    _require(config.lr > 0 and math.isfinite(config.lr), f"lr: expected a finite positive number, got {config.lr}")
    _require(0 <= config.momentum < 1, f"momentum: expected a number in [0, 1), got {config.momentum}")
    _require(
        config.weight_decay >= 0 and math.isfinite(config.weight_decay),
        f"weight_decay: expected a finite number >= 0, got {config.weight_decay}",
    )
    _require(0 < config.lr_gamma <= 1, f"lr_gamma: expected a number in (0, 1], got {config.lr_gamma}")
    _require(
        all(m > 0 for m in config.milestones) and list(config.milestones) == sorted(set(config.milestones)),
        f"milestones: expected increasing positive epochs like 300,450, got {format_value(config.milestones)}",
    )
    _require(config.batch_size >= 1, f"batch_size: expected a positive integer, got {_shown(config.batch_size)}")
    _require(config.phase1_epochs >= 0, f"phase1_epochs: expected an integer >= 0, got {_shown(config.phase1_epochs)}")
    _require(config.phase2_epochs >= 0, f"phase2_epochs: expected an integer >= 0, got {_shown(config.phase2_epochs)}")
    _require(config.total_epochs >= 1, "phase1_epochs, phase2_epochs: at least one epoch in total is needed")
    _number_or_word("nc1_threshold", config.nc1_threshold, ("auto",), 0.0, 1.0)
    _number_or_word("fn_ref", config.fn_ref, ("none", "auto"), 0.0, math.inf)
    _require(config.lead >= 0, f"lead: expected an integer >= 0, got {_shown(config.lead)}")
    _require(0 <= config.threads <= MAX_THREADS,
             f"threads: expected 0 (torch's default) or a whole number up to {MAX_THREADS}, got {_shown(config.threads)}")
    _require(0 <= config.seed <= MAX_SEED,
             f"seed: expected an integer from 0 to {MAX_SEED} (2**63 - 1), got {_shown(config.seed)}")
    for name in params_marked(COUNT):
        value = getattr(config, name)
        _require(value <= MAX_COUNT, f"{name}: expected an integer up to {MAX_COUNT:,}, got {_shown(value)}")
    _require(
        config.rescale_alpha > 0 and math.isfinite(config.rescale_alpha),
        f"rescale_alpha: expected a finite positive number, got {config.rescale_alpha}",
    )
    _require(
        config.rescale_alpha == 1.0 or config.init_from != "none",
        "rescale_alpha: only applies with init_from=<run id> (the intervention starts from a Phase-1 checkpoint)",
    )
    _require(
        config.arch == "mlp" or config.activation == "relu",
        f"activation: {config.arch} uses relu, got {config.activation!r} (activations apply to arch mlp)",
    )
    _require(
        config.rescale_alpha == 1.0 or config.arch == "mlp",
        f"rescale_alpha: the intervention rescales an MLP's final hidden layer; arch {config.arch} allows only 1.0",
    )
    _require(
        config.init_from == "none" or config.protocol == "two-phase",
        "init_from: starts Phase 2 of the two-phase protocol; use protocol two-phase",
    )
    _require(
        config.stop_after_collapse == "off" or config.stop_after_collapse.isdigit(),
        f"stop_after_collapse: expected off or a whole number of epochs, got {config.stop_after_collapse!r}",
    )
    _require(
        1.0 <= config.imbalance_ratio <= MAX_COUNT,
        f"imbalance_ratio: expected a number from 1 to {MAX_COUNT:,} (n_max / n_min), got {config.imbalance_ratio}",
    )
    validate_regulariser(config)
    if config.dataset in DATASETS:  # your own data's classes are known once it is read (`validate_classes` then)
        validate_classes(config, config.synthetic_classes if config.dataset == "synthetic" else 10)
    _require(
        config.checkpoints in schema.CHECKPOINT_CHOICES,
        f"checkpoints: expected one of {' | '.join(schema.CHECKPOINT_CHOICES)}, got {config.checkpoints!r}",
    )
    _require(config.checkpoint_every >= 1,
             f"checkpoint_every: expected a positive integer, got {_shown(config.checkpoint_every)}")
    _require(config.synthetic_classes >= 2,
             f"synthetic_classes: expected at least 2, got {_shown(config.synthetic_classes)}")
    _require(
        config.synthetic_per_class >= 1,
        f"synthetic_per_class: expected a positive integer, got {_shown(config.synthetic_per_class)}",
    )
    shape_parts = config.synthetic_shape.split("x")
    _require(
        len(shape_parts) == 3 and all(part.isdigit() and int(part) > 0 for part in shape_parts),
        f"synthetic_shape: expected CxHxW like 1x8x8, got {config.synthetic_shape!r}",
    )
    _require(bool(config.experiment.strip()), "experiment: expected a non-empty MLflow experiment name")


def validate_regulariser(config: RunConfig) -> None:
    """Han et al.'s regulariser and its unplug: λ finite and ≥ 0, > 0 only with a regulariser; the unplug inside the
    run, and its options only with an unplug (which needs a regulariser)."""
    _require(config.reg_lambda >= 0 and math.isfinite(config.reg_lambda),
             f"reg_lambda: expected a finite number >= 0, got {config.reg_lambda}")
    _require(config.reg != "none" or config.reg_lambda == 0,
             f"reg_lambda: {config.reg_lambda} needs a regulariser (reg ncc or flatness); reg is none")
    past_the_end = " (past the end)" if config.unplug_epoch >= config.total_epochs else ""
    _require(0 <= config.unplug_epoch < config.total_epochs,
             f"unplug_epoch: expected 0 (never) or an epoch before the last ({config.total_epochs}), got "
             f"{_shown(config.unplug_epoch)}{past_the_end}")
    _require(config.unplug_epoch == 0 or config.reg != "none",
             f"unplug_epoch: {config.unplug_epoch} unplugs a regulariser, but reg is none")
    _require(config.unplug_lr_factor > 0 and math.isfinite(config.unplug_lr_factor),
             f"unplug_lr_factor: expected a finite number > 0, got {config.unplug_lr_factor}")
    _require(config.unplug_weight_decay == -1 or (config.unplug_weight_decay >= 0
                                                  and math.isfinite(config.unplug_weight_decay)),
             f"unplug_weight_decay: expected a finite number >= 0, or -1 to keep the weight decay, got "
             f"{config.unplug_weight_decay}")
    changed = {"unplug_weight_decay": config.unplug_weight_decay != -1,
               "unplug_lr_factor": config.unplug_lr_factor != 1, "unplug_schedule": config.unplug_schedule != "none"}
    for name, is_set in changed.items():
        _require(not is_set or config.unplug_epoch > 0,
                 f"{name}: applies at the unplug; set unplug_epoch (and reg)" if config.reg == "none"
                 else f"{name}: applies at the unplug; set unplug_epoch")


def penultimate_features(config: RunConfig) -> int:
    """The dimension of the penultimate features (the head's input): the MLP's width, a ResNet's pooled vector."""
    return config.width if config.arch == "mlp" else RESNET_FEATURES[config.arch]


def validate_classes(config: RunConfig, classes: int) -> None:
    """What depends on the number of classes K: ConfigError (one line) when the configuration cannot train K."""
    features = penultimate_features(config)
    _require(
        config.imbalance_ratio == 1 or classes >= 4,
        f"imbalance_ratio: needs at least 4 classes (two minority classes to compare), got {classes}",
    )
    _require(
        config.classifier != "etf" or features >= classes - 1,
        f"classifier: etf needs a feature dimension of at least K − 1 = {classes - 1}, got {features}",
    )


def typed_values(values: Mapping[str, Any]) -> dict[str, Any]:
    """A configuration's values with their own types, as `RunConfig.as_values` gives them, from typed values or from
    the strings MLflow params (and older checkpoints) hold; names no field has are left out. Not validated."""
    typed = {name: parse_field(name, value) for name, value in values.items() if name in RunConfig.__dataclass_fields__}
    return {name: list(value) if isinstance(value, tuple) else value for name, value in typed.items()}


def config_from_values(values: Mapping[str, Any], check: bool = True) -> RunConfig:
    """The RunConfig a checkpoint or `config.json` keeps: typed values (`RunConfig.as_values`), or the strings older
    ones hold (`'depth': '7'`); fields added later take RunConfig's defaults, names no field has are ignored.
    `check`: validate it (a file `dataset` must exist then); without, it is taken as it trained."""
    typed = {name: tuple(value) if isinstance(value, list) else value for name, value in typed_values(values).items()}
    config = RunConfig(**typed)
    if check:
        validate(config)
    return config


def condition_hash(config: RunConfig) -> str:
    """The `ncflow.condition` tag of a configuration (the rule is `ncshared.schema.condition_hash`)."""
    return schema.condition_hash(config.as_params())


def run_name(config: RunConfig) -> str:
    """`mlp5-relu-w512-wd1e-04-mnist-s0` (the rule is `ncshared.schema.run_name`)."""
    return schema.run_name(config.as_params())
