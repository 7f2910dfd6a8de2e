"""The run configuration's definition: `RunConfig`, whose fields are the MLflow params both sides read.

Torch-free: training (`ncflow.engine.config` adds the presets, parsing and validation) and the names
(`ncshared.schema`, the condition hash) read this one definition. Each field's comment says what it means (units,
allowed values; `field_help` reads the comments for `--help`). Each field's metadata says what it is, as marks from
this vocabulary; a field without a mark is not that:

- `DESIGN`: decides what is trained, so it enters the condition (`ncshared.schema.condition_hash`) by its value.
  No other field does, but `init_from`:
- `INTERVENTION`: enters the condition only as whether the run is an intervention (`init_from`).
- `SYNTHETIC`: describes the synthetic data set; it enters the condition only for dataset `synthetic`.
- `IMBALANCE`: describes the imbalanced subsample; it enters the condition only when `imbalance_ratio` is not 1.
- `REGULARISER`: describes Han et al.'s regulariser and its unplug; it enters the condition only when `reg` is not
  `none`.
- `SOURCE`: an intervention run must share it with its Phase-1 source: the model, and the training settings whose
  state (optimiser moments, schedule position) the Phase-1 checkpoint carries into Phase 2.
- `PACK`: the members of one pack (runs trained together in one process) must share it.
- `COUNT`: a count (epochs, samples, a batch) that validation bounds by `ncflow.engine.config.MAX_COUNT`.

and two valued keys: `ADDED_DEFAULT`, for a param added after runs were already logged, is the canonical string
those older runs trained with (the analysis fills it in for them); `CHOICES` is the tuple of allowed words
(`checkpoints` has none here: its words are the keys of `ncshared.schema.CHECKPOINT_CHOICES`, which says what each
keeps).
The field lists the code needs (`params_marked`, `non_condition_params`, `added_param_defaults`, `field_choices`)
are derived from the marks, so a new field is described once, where it is defined.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from dataclasses import dataclass, fields
from typing import Any

DATASETS = ("digits", "mnist-5k", "synthetic", "mnist", "fashion-mnist", "cifar10")
ARCHS = ("mlp", "resnet20", "resnet18")
ACTIVATIONS = ("relu", "gelu", "tanh")
OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("cosine", "multistep", "constant")
PROTOCOLS = ("two-phase", "ce-only", "mse-only")
CLASSIFIERS = ("learned", "etf")
IMBALANCE_PROFILES = ("step", "exp")
DEVICES = ("auto", "cpu", "cuda")
MATMUL_PRECISIONS = ("highest", "high")  # torch.set_float32_matmul_precision
REGULARISERS = ("none", "ncc", "flatness")  # Han et al.'s loss terms, CE − λ·R (ncflow.collapse.regularisers)
UNPLUG_SCHEDULES = ("none", "cosine")  # what the learning rate does after the regulariser's unplug
DEFAULT_LEAD = 62  # epochs from T_cross to the predicted T_NC (the paper's mean lead)
DEFAULT_EXPERIMENT = "ncflow"

# The marks (metadata keys set to True) and the two valued metadata keys; the module docstring says what each means.
DESIGN, INTERVENTION, SYNTHETIC, IMBALANCE = "design", "intervention", "synthetic", "imbalance"
REGULARISER = "regulariser"
SOURCE, PACK, COUNT = "shared_with_source", "shared_in_pack", "count"
ADDED_DEFAULT, CHOICES = "added_default", "choices"


def param(default: Any, *marks: str, added: str | None = None, choices: tuple[str, ...] = ()) -> Any:
    """A RunConfig field: `dataclasses.field(default=default, metadata=…)`, the metadata holding each mark as True,
    `added` under ADDED_DEFAULT and `choices` under CHOICES (each only when given)."""
    metadata: dict[str, Any] = dict.fromkeys(marks, True)
    if added is not None:
        metadata[ADDED_DEFAULT] = added
    if choices:
        metadata[CHOICES] = choices
    return dataclasses.field(default=default, metadata=metadata)


@dataclass(frozen=True)
class RunConfig:
    """One condition of the paper's protocol plus the seed. Field comments give units and allowed values."""

    dataset: str = param("digits", DESIGN, SOURCE, PACK)  # digits | mnist-5k | synthetic (embedded, offline) | mnist | fashion-mnist | cifar10, or your own: a .npz/.pt file (x_train, y_train, x_test, y_test) or an image folder (train/, test/)
    data_dir: str = param("data", PACK)  # where torchvision data sets live (mnist, fashion-mnist, cifar10)
    arch: str = param("mlp", DESIGN, SOURCE, PACK, choices=ARCHS)  # mlp | resnet20 (He et al.'s CIFAR ResNet-20, 64-d features) | resnet18 (the CIFAR ResNet-18 of Han et al., 512-d features)
    depth: int = param(5, DESIGN, SOURCE, PACK)  # MLP hidden layers (ignored by the ResNets, whose depth is in their name)
    width: int = param(512, DESIGN, SOURCE, PACK)  # MLP hidden width
    classifier: str = param("learned", DESIGN, added="learned", choices=CLASSIFIERS)  # learned | etf (the head fixed to a simplex ETF in a seeded random frame, bias 0, frozen)
    activation: str = param("relu", DESIGN, SOURCE, PACK, choices=ACTIVATIONS)  # relu | gelu | tanh (MLP)
    optimizer: str = param("adam", DESIGN, SOURCE, PACK, choices=OPTIMIZERS)  # adam | sgd
    lr: float = param(1e-3, DESIGN, SOURCE)  # initial learning rate
    momentum: float = param(0.9, DESIGN, SOURCE)  # SGD momentum
    nesterov: bool = param(False, DESIGN, SOURCE)  # SGD Nesterov momentum
    weight_decay: float = param(2e-4, DESIGN, SOURCE)  # λ, coupled L2 as in torch's Adam/SGD weight_decay
    schedule: str = param("cosine", DESIGN, SOURCE, PACK, choices=SCHEDULES)  # cosine (over all epochs) | multistep (at `milestones`) | constant
    milestones: tuple[int, ...] = param((300, 450), DESIGN, SOURCE, PACK)  # global epochs where multistep multiplies lr by lr_gamma
    lr_gamma: float = param(0.1, DESIGN, SOURCE, PACK)  # multistep decay factor
    batch_size: int = param(128, DESIGN, SOURCE, PACK, COUNT)  # training mini-batch size
    phase1_epochs: int = param(50, DESIGN, SOURCE, PACK, COUNT)  # Phase 1 (cross-entropy) epochs
    phase2_epochs: int = param(550, DESIGN, SOURCE, PACK, COUNT)  # Phase 2 (MSE on one-hot targets) epochs
    protocol: str = param("two-phase", DESIGN, PACK, choices=PROTOCOLS)  # two-phase | ce-only (CE for all epochs) | mse-only (MSE for all epochs)
    imbalance_ratio: float = param(1.0, DESIGN, IMBALANCE, PACK, added="1.0")  # ρ = n_max / n_min of a seeded training subsample (≥ 1; 1 keeps the training set as it is)
    imbalance_profile: str = param("step", DESIGN, IMBALANCE, PACK, added="step", choices=IMBALANCE_PROFILES)  # with ρ > 1: step (the first half of the classes n_max, the rest n_max/ρ) | exp (n_c = n_max ρ^(−c/(K−1)))
    reg: str = param("none", DESIGN, SOURCE, REGULARISER, added="none", choices=REGULARISERS)  # Han et al.'s regulariser of the penultimate features: none | ncc (loss − λ·batch NCC) | flatness (loss − λ·relative-flatness bound)
    reg_lambda: float = param(0.0, DESIGN, SOURCE, REGULARISER, added="0.0")  # λ of the regulariser (≥ 0; > 0 needs reg): each batch's loss is CE (or MSE) − λ·R
    unplug_epoch: int = param(0, DESIGN, SOURCE, REGULARISER, added="0")  # the regulariser is in the loss for epochs ≤ this one, then removed (the unplug); 0: never unplugged
    unplug_weight_decay: float = param(-1.0, DESIGN, SOURCE, REGULARISER, added="-1.0")  # at the unplug, switch the weight decay to this (≥ 0); −1: keep it
    unplug_lr_factor: float = param(1.0, DESIGN, SOURCE, REGULARISER, added="1.0")  # at the unplug, multiply the learning rate by this (> 0)
    unplug_schedule: str = param("none", DESIGN, SOURCE, REGULARISER, added="none", choices=UNPLUG_SCHEDULES)  # after the unplug: none (the run's schedule goes on, times the factor) | cosine (from the factored rate to 0 over the remaining epochs)
    layerwise: bool = param(False, added="false")  # also measure NC1, NC1_pinv, NC2 and fn of every hidden layer's output, every epoch
    nc1_threshold: str = param("auto", DESIGN)  # ε for T_NC: auto (0.05 for GELU/Tanh or MLP depth ≤ 3, else 0.01) or a number in (0, 1)
    fn_ref: str = param("none")  # reference fn* for T_cross: none | a positive number | auto (mean fn* of finished runs of the condition)
    lead: int = param(DEFAULT_LEAD, COUNT)  # epochs added to T_cross to predict T_NC
    seed: int = param(0)  # seeds torch and the batch order
    device: str = param("auto", PACK, choices=DEVICES)  # auto (cuda if available) | cpu | cuda
    matmul_precision: str = param("highest", PACK, added="highest", choices=MATMUL_PRECISIONS)  # float32 matmuls: highest (true float32) | high (TF32 on GPUs that have it: faster, ~1e-3 relative)
    threads: int = param(0, PACK, added="0")  # CPU threads torch computes with (torch.set_num_threads); 0: torch's default (one per core, or OMP_NUM_THREADS). Float32 sums, hence results, depend on it
    deterministic: bool = param(False, PACK, added="false")  # bit-for-bit reruns: torch.use_deterministic_algorithms (an op without a deterministic kernel fails) and, on CUDA, CUBLAS_WORKSPACE_CONFIG; pass --threads too
    init_from: str = param("none", INTERVENTION)  # an MLflow run id whose checkpoints/phase1_end.pt starts Phase 2 (intervention), or none
    rescale_alpha: float = param(1.0, DESIGN)  # with init_from: multiply the final hidden layer (weight and bias) by α first
    stop_after_collapse: str = param("off")  # off | N: stop N epochs after T_NC
    checkpoint_every: int = param(50, COUNT)  # save checkpoints/last.pt every N epochs (and at the end)
    checkpoints: str = param("phase", added="all")  # which checkpoints MLflow keeps: all | phase (phase1_end + last) | last | none
    log_model: bool = param(True, added="false")  # log the final network as an MLflow model (runs:/RUN_ID/model, mlflow.pytorch; its forward gives the logits)
    synthetic_classes: int = param(10, DESIGN, SYNTHETIC, PACK, COUNT)  # synthetic data: number of classes K
    synthetic_shape: str = param("1x8x8", DESIGN, SYNTHETIC, PACK)  # synthetic data: C x H x W of each sample
    synthetic_per_class: int = param(100, DESIGN, SYNTHETIC, PACK, COUNT)  # synthetic data: training samples per class
    experiment: str = param(DEFAULT_EXPERIMENT)  # MLflow experiment name
    tracking_uri: str = param("")  # MLflow tracking URI; empty: MLFLOW_TRACKING_URI, else MLflow's local default

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

    def regularised(self, epoch: int) -> bool:
        """Whether the regulariser is in the loss of a 1-based global epoch (a `reg`, and not yet unplugged)."""
        return self.reg != "none" and (self.unplug_epoch == 0 or epoch <= self.unplug_epoch)

    def as_params(self) -> dict[str, str]:
        """Every field as the string MLflow stores (see docs/tracking.md)."""
        return {field.name: format_value(getattr(self, field.name)) for field in fields(self)}

    def as_values(self) -> dict[str, Any]:
        """Every field with its own type (int, float, bool, str; `milestones` a list), as `config.json` and the
        checkpoints keep it: `{"depth": 7, "lr": 0.001, "nesterov": false, "milestones": [300, 450], …}`."""
        return {field.name: _plain(getattr(self, field.name)) for field in fields(self)}

    def replace(self, **changes: Any) -> RunConfig:
        return dataclasses.replace(self, **changes)


def format_value(value: Any) -> str:
    """The canonical string of a field value: `0.0002`, `1e-05`, `true`, `300,450`."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (tuple, list)):
        return ",".join(str(item) for item in value)
    return str(value)


def _plain(value: Any) -> Any:
    """A field value as JSON and `torch.load(weights_only=True)` read it back: a tuple becomes a list."""
    return list(value) if isinstance(value, tuple) else value


def field_help() -> dict[str, str]:
    """Each field's comment in `RunConfig`'s source: the one place its meaning is written down."""
    pattern = re.compile(r"^\s+(\w+): [^=]+= .*?  # (.*)$")
    matches = (pattern.match(line) for line in inspect.getsource(RunConfig).splitlines())
    return {match.group(1): match.group(2) for match in matches if match}


# ------------------------------------------------------------------------ field lists, derived from the marks


def params_marked(mark: str) -> tuple[str, ...]:
    """The fields with `mark` (one of the marks above), in field order."""
    return tuple(field.name for field in fields(RunConfig) if field.metadata.get(mark))


def non_condition_params() -> tuple[str, ...]:
    """The fields that do not enter the condition: neither DESIGN nor INTERVENTION (the seed, where the run is kept,
    how the machine computes, what the run reports and when it stops)."""
    return tuple(field.name for field in fields(RunConfig)
                 if not (field.metadata.get(DESIGN) or field.metadata.get(INTERVENTION)))


def added_param_defaults() -> dict[str, str]:
    """Param → the value runs logged before it existed trained with (ADDED_DEFAULT)."""
    return {field.name: field.metadata[ADDED_DEFAULT] for field in fields(RunConfig) if ADDED_DEFAULT in field.metadata}


def field_choices() -> dict[str, tuple[str, ...]]:
    """Field → its allowed words (CHOICES), for the fields that take one of a few."""
    return {field.name: field.metadata[CHOICES] for field in fields(RunConfig) if CHOICES in field.metadata}
