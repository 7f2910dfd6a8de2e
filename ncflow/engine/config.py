"""The run configuration: one typed, frozen dataclass, its presets, and its validation.

Everything a training run depends on is a field of `RunConfig`. Resolution order is
defaults → preset → explicit overrides; `validate` rejects a bad value with one line that names
the parameter and what is allowed, before any data is loaded or any MLflow run exists.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import re
from dataclasses import dataclass, fields
from typing import Any, Mapping

from ncshared import schema

DATASETS = ("digits", "mnist-5k", "synthetic", "mnist", "fashion-mnist", "cifar10")
ARCHS = ("mlp", "resnet20")
ACTIVATIONS = ("relu", "gelu", "tanh")
OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("cosine", "multistep", "constant")
PROTOCOLS = ("two-phase", "ce-only", "mse-only")
CLASSIFIERS = ("learned", "etf")
IMBALANCE_PROFILES = ("step", "exp")
RESNET20_FEATURES = 64  # ResNet-20's pooled feature dimension
DEVICES = ("auto", "cpu", "cuda")
MATMUL_PRECISIONS = ("highest", "high")  # torch.set_float32_matmul_precision


class ConfigError(ValueError):
    """A configuration value is not allowed; the message is one line naming the parameter."""


@dataclass(frozen=True)
class RunConfig:
    """One condition of the paper's protocol plus the seed. Field comments give units and allowed values."""

    dataset: str = "digits"  # digits | mnist-5k | synthetic (embedded, offline) | mnist | fashion-mnist | cifar10
    data_dir: str = "data"  # where torchvision data sets live (mnist, fashion-mnist, cifar10)
    arch: str = "mlp"  # mlp | resnet20
    depth: int = 5  # MLP hidden layers (ignored by resnet20, which is 20 layers deep)
    width: int = 512  # MLP hidden width
    classifier: str = "learned"  # learned | etf (the head fixed to a simplex ETF in a seeded random frame, bias 0, frozen)
    activation: str = "relu"  # relu | gelu | tanh (MLP)
    optimizer: str = "adam"  # adam | sgd
    lr: float = 1e-3  # initial learning rate
    momentum: float = 0.9  # SGD momentum
    nesterov: bool = False  # SGD Nesterov momentum
    weight_decay: float = 2e-4  # λ, coupled L2 as in torch's Adam/SGD weight_decay
    schedule: str = "cosine"  # cosine (over all epochs) | multistep (at `milestones`) | constant
    milestones: tuple[int, ...] = (300, 450)  # global epochs where multistep multiplies lr by lr_gamma
    lr_gamma: float = 0.1  # multistep decay factor
    batch_size: int = 128  # training mini-batch size
    phase1_epochs: int = 50  # Phase 1 (cross-entropy) epochs
    phase2_epochs: int = 550  # Phase 2 (MSE on one-hot targets) epochs
    protocol: str = "two-phase"  # two-phase | ce-only (CE for all epochs) | mse-only (MSE for all epochs)
    imbalance_ratio: float = 1.0  # ρ = n_max / n_min of a seeded training subsample (≥ 1; 1 keeps the training set as it is)
    imbalance_profile: str = "step"  # with ρ > 1: step (the first half of the classes n_max, the rest n_max/ρ) | exp (n_c = n_max ρ^(−c/(K−1)))
    layerwise: bool = False  # also measure NC1, NC1_pinv, NC2 and fn of every hidden layer's output, every epoch
    nc1_threshold: str = "auto"  # ε for T_NC: auto (0.05 for GELU/Tanh or MLP depth ≤ 3, else 0.01) or a number in (0, 1)
    fn_ref: str = "none"  # reference fn* for T_cross: none | a positive number | auto (mean fn* of finished runs of the condition)
    lead: int = schema.DEFAULT_LEAD  # epochs added to T_cross to predict T_NC
    seed: int = 0  # seeds torch and the batch order
    device: str = "auto"  # auto (cuda if available) | cpu | cuda
    matmul_precision: str = "highest"  # float32 matmuls: highest (true float32) | high (TF32 on GPUs that have it: faster, ~1e-3 relative)
    init_from: str = "none"  # an MLflow run id whose checkpoints/phase1_end.pt starts Phase 2 (intervention), or none
    rescale_alpha: float = 1.0  # with init_from: multiply the final hidden layer (weight and bias) by α first
    stop_after_collapse: str = "off"  # off | N: stop N epochs after T_NC
    checkpoint_every: int = 50  # save checkpoints/last.pt every N epochs (and at the end)
    checkpoints: str = "phase"  # which checkpoints MLflow keeps: all | phase (phase1_end + last) | last | none
    synthetic_classes: int = 10  # synthetic data: number of classes K
    synthetic_shape: str = "1x8x8"  # synthetic data: C x H x W of each sample
    synthetic_per_class: int = 100  # synthetic data: training samples per class
    experiment: str = schema.DEFAULT_EXPERIMENT  # MLflow experiment name
    tracking_uri: str = ""  # MLflow tracking URI; empty: MLFLOW_TRACKING_URI, else MLflow's local default

    @property
    def total_epochs(self) -> int:
        return self.phase1_epochs + self.phase2_epochs

    @property
    def synthetic_dims(self) -> tuple[int, int, int]:
        channels, height, width = (int(part) for part in self.synthetic_shape.split("x"))
        return channels, height, width

    def phase_of(self, epoch: int) -> int:
        """Phase (1 = CE, 2 = MSE) of a 1-based global epoch under this protocol."""
        if self.protocol == "ce-only":
            return 1
        if self.protocol == "mse-only":
            return 2
        return 1 if epoch <= self.phase1_epochs else 2

    def as_params(self) -> dict[str, str]:
        """Every field as the string MLflow stores (see docs/tracking.md)."""
        return {field.name: format_value(getattr(self, field.name)) for field in fields(self)}

    def replace(self, **changes: Any) -> "RunConfig":
        return dataclasses.replace(self, **changes)


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

# Fields that do not change what is trained: excluded from the condition hash, with seed. The early-warning
# settings (fn_ref, lead) and stop_after_collapse only change what is reported or when the run stops.
NON_CONDITION_FIELDS = schema.NON_CONDITION_PARAMS


def format_value(value: Any) -> str:
    """The canonical string of a field value: `0.0002`, `1e-05`, `true`, `300,450`."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ",".join(str(item) for item in value)
    return str(value)


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
            number = float(raw_text)  # MLflow passes `7` from MLproject as `7` or `7.0`
            if not number.is_integer():
                raise ValueError
            return int(number)
        if kind == "float":
            return float(raw_text)
        if kind == "tuple[int, ...]":
            return tuple(int(part) for part in raw_text.replace(" ", "").split(",") if part)
    except ValueError:
        raise ConfigError(f"{name}: expected {kind}, got {raw!r}") from None
    return raw_text


def build_config(preset: str | None = None, overrides: Mapping[str, Any] | None = None) -> RunConfig:
    """Defaults → preset → overrides (raw values are parsed), then validated."""
    values: dict[str, Any] = {}
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


def validate(config: RunConfig) -> None:
    """Raise ConfigError (one line, naming the parameter) for the first value that is not allowed."""
    _choice("dataset", config.dataset, DATASETS)
    _choice("arch", config.arch, ARCHS)
    _choice("activation", config.activation, ACTIVATIONS)
    _choice("optimizer", config.optimizer, OPTIMIZERS)
    _choice("schedule", config.schedule, SCHEDULES)
    _choice("protocol", config.protocol, PROTOCOLS)
    _choice("classifier", config.classifier, CLASSIFIERS)
    _choice("device", config.device, DEVICES)
    _choice("matmul_precision", config.matmul_precision, MATMUL_PRECISIONS)
    _require(1 <= config.depth <= 64, f"depth: expected an integer from 1 to 64, got {config.depth}")
    _require(1 <= config.width <= 65536, f"width: expected a positive integer, got {config.width}")
    _require(config.lr > 0 and math.isfinite(config.lr), f"lr: expected a positive number, got {config.lr}")
    _require(0 <= config.momentum < 1, f"momentum: expected a number in [0, 1), got {config.momentum}")
    _require(
        config.weight_decay >= 0 and math.isfinite(config.weight_decay),
        f"weight_decay: expected a number >= 0, got {config.weight_decay}",
    )
    _require(0 < config.lr_gamma <= 1, f"lr_gamma: expected a number in (0, 1], got {config.lr_gamma}")
    _require(
        all(m > 0 for m in config.milestones) and list(config.milestones) == sorted(set(config.milestones)),
        f"milestones: expected increasing positive epochs like 300,450, got {format_value(config.milestones)}",
    )
    _require(config.batch_size >= 1, f"batch_size: expected a positive integer, got {config.batch_size}")
    _require(config.phase1_epochs >= 0, f"phase1_epochs: expected an integer >= 0, got {config.phase1_epochs}")
    _require(config.phase2_epochs >= 0, f"phase2_epochs: expected an integer >= 0, got {config.phase2_epochs}")
    _require(config.total_epochs >= 1, "phase1_epochs, phase2_epochs: at least one epoch in total is needed")
    _number_or_word("nc1_threshold", config.nc1_threshold, ("auto",), 0.0, 1.0)
    _number_or_word("fn_ref", config.fn_ref, ("none", "auto"), 0.0, math.inf)
    _require(config.lead >= 0, f"lead: expected an integer >= 0, got {config.lead}")
    _require(0 <= config.seed <= MAX_SEED, f"seed: expected an integer from 0 to {MAX_SEED} (2**63 - 1), got {config.seed}")
    for name in ("phase1_epochs", "phase2_epochs", "lead", "batch_size", "checkpoint_every", "synthetic_per_class",
                 "synthetic_classes"):
        value = getattr(config, name)
        _require(value <= MAX_COUNT, f"{name}: expected an integer up to {MAX_COUNT:,}, got {value}")
    _require(
        config.rescale_alpha > 0 and math.isfinite(config.rescale_alpha),
        f"rescale_alpha: expected a positive number, got {config.rescale_alpha}",
    )
    _require(
        config.rescale_alpha == 1.0 or config.init_from != "none",
        "rescale_alpha: only applies with init_from=<run id> (the intervention starts from a Phase-1 checkpoint)",
    )
    _require(
        config.arch == "mlp" or config.activation == "relu",
        f"activation: resnet20 uses relu, got {config.activation!r} (activations apply to arch mlp)",
    )
    _require(
        config.rescale_alpha == 1.0 or config.arch == "mlp",
        "rescale_alpha: the intervention rescales an MLP's final hidden layer; arch resnet20 allows only 1.0",
    )
    _require(
        config.init_from == "none" or config.protocol == "two-phase",
        "init_from: starts Phase 2 of the two-phase protocol; use protocol two-phase",
    )
    _require(
        config.stop_after_collapse == "off" or config.stop_after_collapse.isdigit(),
        f"stop_after_collapse: expected off or a whole number of epochs, got {config.stop_after_collapse!r}",
    )
    _choice("imbalance_profile", config.imbalance_profile, IMBALANCE_PROFILES)
    _require(
        1.0 <= config.imbalance_ratio <= MAX_COUNT,
        f"imbalance_ratio: expected a number from 1 to {MAX_COUNT:,} (n_max / n_min), got {config.imbalance_ratio}",
    )
    classes = config.synthetic_classes if config.dataset == "synthetic" else 10
    features = config.width if config.arch == "mlp" else RESNET20_FEATURES
    _require(
        config.imbalance_ratio == 1 or classes >= 4,
        f"imbalance_ratio: needs at least 4 classes (two minority classes to compare), got {classes}",
    )
    _require(
        config.classifier != "etf" or features >= classes - 1,
        f"classifier: etf needs a feature dimension of at least K − 1 = {classes - 1}, got {features}",
    )
    _require(
        config.checkpoints in schema.CHECKPOINT_CHOICES,
        f"checkpoints: expected one of {' | '.join(schema.CHECKPOINT_CHOICES)}, got {config.checkpoints!r}",
    )
    _require(config.checkpoint_every >= 1, f"checkpoint_every: expected a positive integer, got {config.checkpoint_every}")
    _require(config.synthetic_classes >= 2, f"synthetic_classes: expected at least 2, got {config.synthetic_classes}")
    _require(
        config.synthetic_per_class >= 1, f"synthetic_per_class: expected a positive integer, got {config.synthetic_per_class}"
    )
    shape_parts = config.synthetic_shape.split("x")
    _require(
        len(shape_parts) == 3 and all(part.isdigit() and int(part) > 0 for part in shape_parts),
        f"synthetic_shape: expected CxHxW like 1x8x8, got {config.synthetic_shape!r}",
    )
    _require(bool(config.experiment.strip()), "experiment: expected a non-empty MLflow experiment name")


def condition_hash(config: RunConfig) -> str:
    """The `ncflow.condition` tag of a configuration (the rule is `ncshared.schema.condition_hash`)."""
    return schema.condition_hash(config.as_params())


def run_name(config: RunConfig) -> str:
    """`mlp5-relu-w512-wd1e-04-mnist-s0` (the rule is `ncshared.schema.run_name`)."""
    return schema.run_name(config.as_params())


def field_help() -> dict[str, str]:
    """Each field's comment in `RunConfig`'s source: the one place its meaning is written down."""
    pattern = re.compile(r"^\s+(\w+): [^=]+= .*?  # (.*)$")
    matches = (pattern.match(line) for line in inspect.getsource(RunConfig).splitlines())
    return {match.group(1): match.group(2) for match in matches if match}
