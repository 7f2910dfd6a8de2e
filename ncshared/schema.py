"""Every name ncflow writes to MLflow, and the two rules that derive names from a configuration.

This is the contract between training (the writer, `ncflow/tracked/mlflow_run.py`) and the analysis (the reader,
`analysis/store.py`); the test fixtures write through it too, and `tests/test_contract.py` checks that
`docs/tracking.md` lists exactly these names. Names only: no torch, no scipy, no MLflow, so both halves
and any tool can import it cheaply. Params are every `ncshared.run_config.RunConfig` field under its own name,
as the canonical string `RunConfig.as_params` writes (`0.0002`, `true`, `300,450`, `none`); the param lists below
are derived from the fields' marks there.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import PurePath
from typing import Mapping

from ncshared import run_config

# ------------------------------------------------------------------------------------------------ tags

TAG_KIND = "ncflow.kind"  # what the run is: KIND_TRAIN, KIND_SWEEP or KIND_ANALYSIS
TAG_CONDITION = "ncflow.condition"  # `condition_hash` of the run's params
TAG_SWEEP = "ncflow.sweep"  # the sweep's name (children and the parent); absent for a single run
TAG_STATUS = "ncflow.status"  # one of RUN_STATUSES
TAG_FAIL_REASON = "ncflow.fail_reason"  # exception type and message, or `interrupted`
TAG_DIVERGENCE_REASON = "ncflow.divergence_reason"  # why a run counts as diverged
TAG_TRIAL = "ncflow.trial"  # a sweep child's `<optuna study>#<trial number>`
TAG_GIT_COMMIT = "ncflow.git_commit"  # the commit of the code that trained, `unknown` outside a git checkout
TAG_VERSION = "ncflow.version"
TAG_HEARTBEAT = "ncflow.heartbeat"  # `<unix seconds> <host> <pid>`, refreshed every ~30 s while the run trains
TAG_CLASS_COUNTS = "ncflow.class_counts"  # training samples per class, `n_0,n_1,…` (also class_counts.json)
TAG_CARRIED_FROM = "ncflow.carried_from"  # a run imported by tools/carry_runs.py: the original run's id
TAG_ANALYSIS_RUNS = "ncflow.analysis.runs"  # an analysis run: how many training runs the report read
TAG_PARENT_RUN = "mlflow.parentRunId"  # MLflow's own: a sweep child's parent run
TAG_RUN_NAME = "mlflow.runName"  # MLflow's own
TAG_SOURCE = "ncflow.source"  # SOURCE_MONITOR: measured through the library (the user's model), not trained by the engine
TAG_STEP_UNIT = "ncflow.step_unit"  # a library run's metric steps: `epoch` or `step` (optimiser steps)
TAG_NOTE = "mlflow.note.content"  # MLflow's own: the run's description (Markdown) in the UI

# Provenance: what a training run ran on and with, written when it opens (`ncflow/tracked/provenance.py`).
TAG_GIT_DIRTY = "ncflow.git_dirty"  # true when the code differed from its commit (the patch: GIT_DIFF_FILE), else false
TAG_PYTHON = "ncflow.env.python"  # versions: Python, torch, numpy, MLflow, Optuna (`absent` when not installed)
TAG_TORCH = "ncflow.env.torch"
TAG_NUMPY = "ncflow.env.numpy"
TAG_MLFLOW = "ncflow.env.mlflow"
TAG_OPTUNA = "ncflow.env.optuna"
TAG_CUDA = "ncflow.env.cuda"  # the CUDA version torch runs with, `none` on a CPU run
TAG_CUDNN = "ncflow.env.cudnn"  # the cuDNN version, `none` on a CPU run
TAG_DEVICE = "ncflow.env.device"  # `cpu` or `cuda`: where the run computed
TAG_DEVICE_MODEL = "ncflow.env.device_model"  # the CPU's model name, or the GPU's
TAG_THREADS = "ncflow.env.threads"  # torch.get_num_threads() when training started
TAG_MATMUL_PRECISION = "ncflow.env.matmul_precision"  # torch.get_float32_matmul_precision() when training started
TAG_DETERMINISTIC = "ncflow.env.deterministic"  # torch.are_deterministic_algorithms_enabled(): true | false
TAG_RESUMED_WITH = "ncflow.env.resumed_with"  # a resume on other software or numerics: what changed, `threads 2 → 1`
TAG_DATA = "ncflow.data"  # the data as trained on: `mnist-5k: 4000 train / 1000 test, 1x28x28, 10 classes`
TAG_DATA_DIGEST = "ncflow.data_digest"  # sha256 (16 hex) of the two splits' digests (the dataset inputs' own)
# Your own data (`dataset` a .npz/.pt file or an image folder, `ncflow/engine/own_data.py`): which file trained the run.
TAG_DATA_PATH = "ncflow.data_path"  # its absolute path
TAG_DATA_SHA256 = "ncflow.data_sha256"  # sha256 (64 hex) of its bytes; a folder: of its images' relative paths and bytes
TAG_DATA_SIZES = "ncflow.data_sizes"  # `1437 train / 360 test, 1x8x8, 10 classes`, as the file holds them
ENVIRONMENT_TAGS = (TAG_PYTHON, TAG_TORCH, TAG_NUMPY, TAG_MLFLOW, TAG_OPTUNA, TAG_CUDA, TAG_CUDNN, TAG_DEVICE,
                    TAG_DEVICE_MODEL, TAG_THREADS, TAG_MATMUL_PRECISION, TAG_DETERMINISTIC)
PROVENANCE_TAGS = (TAG_VERSION, TAG_GIT_COMMIT, TAG_GIT_DIRTY, *ENVIRONMENT_TAGS, TAG_DATA, TAG_DATA_DIGEST)
# What the analysis requires the runs of one condition to share: the code and the numerics (docs/metrics.md).
SAME_WITHIN_CONDITION_TAGS = (TAG_GIT_COMMIT, TAG_TORCH, TAG_DEVICE, TAG_THREADS)
TAG_DATASET_CONTEXT = "mlflow.data.context"  # MLflow's own: a dataset input's tag saying what the run used it for
DATASET_CONTEXT_TRAIN, DATASET_CONTEXT_TEST = "train", "test"  # the context of a run's two MLflow dataset inputs

KIND_TRAIN, KIND_SWEEP, KIND_ANALYSIS = "train", "sweep", "analysis"
KINDS = (KIND_TRAIN, KIND_SWEEP, KIND_ANALYSIS)
SOURCE_MONITOR = "monitor"  # the TAG_SOURCE of a run measured through ncflow.library

STATUS_RUNNING = "running"
STATUS_COLLAPSED = "collapsed"
STATUS_NOT_COLLAPSED = "not_collapsed"
STATUS_DIVERGED = "diverged"
STATUS_FAILED = "failed"
RUN_STATUSES = (STATUS_RUNNING, STATUS_COLLAPSED, STATUS_NOT_COLLAPSED, STATUS_DIVERGED, STATUS_FAILED)
FAIL_REASON_INTERRUPTED = "interrupted"

# ------------------------------------------------------------------ per-epoch metrics (step = global epoch)

TRAIN_LOSS = "train/loss"
TRAIN_ACC = "train/acc"  # fraction in [0, 1]
TEST_ACC = "test/acc"
LR = "lr"  # the learning rate the epoch trained with
PHASE = "phase"  # 1 (cross-entropy) or 2 (MSE)
EPOCH_TIME = "time/epoch_s"

NC_PREFIX = "nc/"
COLLAPSE_METRIC_NAMES = ("nc1", "nc1_pinv", "nc2", "nc2_equinorm", "nc3", "nc4", "fn", "ncc", "flatness",
                         "angle_mean_deg", "angle_std_deg")
NC1, NC1_PINV, NC2, NC2_EQUINORM, NC3, NC4, FN, NCC, FLATNESS, ANGLE_MEAN, ANGLE_STD = (
    NC_PREFIX + name for name in COLLAPSE_METRIC_NAMES)
COLLAPSE_METRICS = (NC1, NC1_PINV, NC2, NC2_EQUINORM, NC3, NC4, FN, NCC, FLATNESS, ANGLE_MEAN, ANGLE_STD)

# Collapse on the test set: the test features with the test labels (the test set's own class means).
TEST_COLLAPSE_NAMES = ("nc1", "nc2", "fn", "ncc")
TEST_NC1, TEST_NC2, TEST_FN, TEST_NCC = ("test/" + name for name in TEST_COLLAPSE_NAMES)
TEST_COLLAPSE_METRICS = (TEST_NC1, TEST_NC2, TEST_FN, TEST_NCC)

# Per-epoch metrics a run logs only under an option (not in history.csv; their own artifacts below).
# `--layerwise`: the collapse of every hidden layer's output, layer 1 the first; the last equals `nc/*`.
LAYER_PREFIX = "layers/"
LAYER_METRIC_NAMES = ("nc1", "nc1_pinv", "nc2", "fn")
# `--imbalance-ratio` > 1: the minority classes (the half of the classes with the fewest samples) merging.
MINORITY_COLLAPSE = "nc/minority_collapse"  # mean pairwise cosine of the minority classes' classifier rows (→ 1)
MINORITY_MEAN_COLLAPSE = "nc/minority_mean_collapse"  # the same for their centred class means
IMBALANCE_METRICS = (MINORITY_COLLAPSE, MINORITY_MEAN_COLLAPSE)
# `--reg` not none (Han et al.'s regulariser; also each evaluation of `ncflow grok`); in history.csv after its columns.
REG_VALUE = "reg/value"  # the mean of R (the regulariser's value) over the epoch's batches, in the loss or not
REG_ACTIVE = "reg/active"  # 1 in an epoch whose loss had − λ·R, 0 after the unplug
REGULARISER_METRICS = (REG_VALUE, REG_ACTIVE)


def layer_metric(layer: int, name: str) -> str:
    """`layers/3/nc1`: one of LAYER_METRIC_NAMES of hidden layer `layer` (1-based)."""
    return f"{LAYER_PREFIX}{layer}/{name}"


def layer_t_nc(layer: int) -> str:
    """`collapse/layers/3/T_NC`: the first epoch with layer `layer`'s NC1 below the run's ε (summary)."""
    return f"collapse/{LAYER_PREFIX}{layer}/T_NC"


def layer_of(metric: str) -> int | None:
    """The layer of a `layers/<l>/<name>` metric, else None."""
    if not metric.startswith(LAYER_PREFIX):
        return None
    layer = metric[len(LAYER_PREFIX):].split("/", 1)[0]
    return int(layer) if layer.isdigit() else None


# The per-epoch metrics, in `history.csv` column order (after `epoch`).
PER_EPOCH_METRICS = (TRAIN_LOSS, TRAIN_ACC, TEST_ACC, *COLLAPSE_METRICS, *TEST_COLLAPSE_METRICS, LR, PHASE, EPOCH_TIME)
HISTORY_EPOCH = "epoch"
HISTORY_COLUMNS = (HISTORY_EPOCH, *PER_EPOCH_METRICS)

# Per-epoch views for the MLflow UI only (derived from the above; not in history.csv, never read back). The UI
# orders a run's chart sections by code point, so the upper-case section `NC` opens the Model-metrics tab, ahead
# of `collapse` (the single-value summaries) and `nc`; its charts sort in this order.
VIEW_PREFIX = "NC/"
VIEW_NC1_LOG10 = "NC/NC1_log10"  # log10 NC1: the collapse is visible on a linear chart axis
VIEW_UNDER_EPS = "NC/under_eps"  # 1 at an epoch with NC1 < ε (the run's threshold), else 0
VIEW_FN_LOG10 = "NC/fn_log10"  # log10 fn: Phase 1's large norms do not flatten Phase 2's approach to fn*
VIEW_METRICS = (VIEW_NC1_LOG10, VIEW_FN_LOG10, VIEW_UNDER_EPS)  # the order the UI shows them

# --------------------------------------------------------------------- summary metrics (step 0, when known)

SUMMARY_PREFIXES = ("collapse/", "intervention/")
COLLAPSE_THRESHOLD = "collapse/threshold"  # the ε the run's T_NC uses
T_NC = "collapse/T_NC"
FN_STAR = "collapse/fn_star"
T_CROSS = "collapse/T_cross"
T_NC_PRED = "collapse/T_NC_pred"  # T_cross + lead
FN_REF = "collapse/fn_ref"
EXTRA_THRESHOLDS = (0.01, 0.02, 0.05)  # T_NC and fn* are also reported at each of these ε
INTERVENTION_FN_BEFORE = "intervention/fn_before"
INTERVENTION_FN_AFTER = "intervention/fn_after"


def t_nc_at(eps: float) -> str:
    """`collapse/eps_0.01/T_NC`: T_NC at one of EXTRA_THRESHOLDS."""
    return f"collapse/eps_{eps:g}/T_NC"


def fn_star_at(eps: float) -> str:
    """`collapse/eps_0.01/fn_star`: fn* at one of EXTRA_THRESHOLDS."""
    return f"collapse/eps_{eps:g}/fn_star"


SUMMARY_METRICS = (
    COLLAPSE_THRESHOLD, T_NC, FN_STAR, T_CROSS, T_NC_PRED, FN_REF,
    *(name for eps in EXTRA_THRESHOLDS for name in (t_nc_at(eps), fn_star_at(eps))),
    INTERVENTION_FN_BEFORE, INTERVENTION_FN_AFTER,
)

# A sweep parent's progress, one step per change.
SWEEP_DONE, SWEEP_FAILED, SWEEP_RUNNING, SWEEP_REMAINING = "sweep/done", "sweep/failed", "sweep/running", "sweep/remaining"
SWEEP_METRICS = (SWEEP_DONE, SWEEP_FAILED, SWEEP_RUNNING, SWEEP_REMAINING)

# -------------------------------------------------------------------------------------------- artifacts

HISTORY_FILE = "history.csv"  # HISTORY_COLUMNS, one row per epoch
CONFIG_FILE = "config.json"  # the resolved configuration, typed values (`"depth": 7`)
MODEL_NAME = "model"  # the run's MLflow model (`runs:/RUN_ID/model`): the final network, forward → logits
TAG_MODEL_EPOCH = "ncflow.model_epoch"  # on that logged model: the epoch whose network it is
DYNAMICS_FIGURE = "figures/dynamics.png"
LAYERS_FILE = "layers.csv"  # `--layerwise`: `epoch`, then every `layers/<l>/<name>`, one row per epoch
LAYERS_FIGURE = "figures/layers.png"  # `--layerwise`: NC1 of every layer over the epochs
CLASS_COUNTS_FILE = "class_counts.json"  # the training samples per class (the imbalanced subsample's, if any)
CLASS_NC1_FILE = "class_nc1.csv"  # per-class NC1 at the end: `class`, `count`, `minority`, `nc1`
ANGLES_FILE = "class_mean_angles.json"  # pairwise class-mean angles (degrees) at T_NC and at the end, the simplex angle
ANGLES_FIGURE = "figures/class_mean_angles.png"  # their histograms against the simplex angle
CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_PHASE1_END, CHECKPOINT_COLLAPSE, CHECKPOINT_LAST = "phase1_end", "collapse", "last"
CHECKPOINTS = (CHECKPOINT_PHASE1_END, CHECKPOINT_COLLAPSE, CHECKPOINT_LAST)
# `--checkpoints` (the `checkpoints` param): which of CHECKPOINTS a run uploads to MLflow. The local record's
# resume state (`state.pt`) is kept whatever the choice.
CHECKPOINT_CHOICES = {
    "all": CHECKPOINTS,
    "phase": (CHECKPOINT_PHASE1_END, CHECKPOINT_LAST),  # the default: the intervention's start and the resume state
    "last": (CHECKPOINT_LAST,),
    "none": (),
}
GIT_DIFF_FILE = "provenance/git_diff.patch"  # a run whose code differed from its commit: the patch (TAG_GIT_DIRTY)
SWEEP_SPEC_FILE = "sweep.json"  # a sweep parent's definition
SWEEP_SUMMARY_FILE = "sweep_summary.csv"  # a sweep parent's one row per grid point


def checkpoint_path(name: str) -> str:
    """`checkpoints/last.pt`: the artifact path of one of CHECKPOINTS."""
    return f"{CHECKPOINT_DIR}/{name}.pt"


# ------------------------------------------------------------------------------------------------ params

# The params that do not change what is trained: left out of the condition hash.
NON_CONDITION_PARAMS = run_config.non_condition_params()
SYNTHETIC_PARAMS = run_config.params_marked(run_config.SYNTHETIC)  # only for dataset synthetic
# Params added after runs were already logged, with the value those older runs trained with (the reader fills it in).
ADDED_PARAM_DEFAULTS = run_config.added_param_defaults()
IMBALANCE_PARAMS = run_config.params_marked(run_config.IMBALANCE)  # enter a condition only when the ratio is not 1
REGULARISER_PARAMS = run_config.params_marked(run_config.REGULARISER)  # enter a condition only with a regulariser
DEFAULT_LEAD = run_config.DEFAULT_LEAD  # the `lead` param's default: the paper's mean lead
DEFAULT_EXPERIMENT = run_config.DEFAULT_EXPERIMENT


def condition_params(params: Mapping[str, str]) -> dict[str, str]:
    """The params that define a condition: all but the seed and the non-scientific ones.

    `init_from` enters only as whether the run is an intervention: the seeds of one intervention condition
    start from different Phase-1 runs but are the same condition.
    """
    condition = {name: value for name, value in params.items() if name not in NON_CONDITION_PARAMS}
    condition["init_from"] = "none" if params["init_from"] == "none" else "run"
    if condition.get("classifier", "learned") == "learned":  # the default enters not at all: older runs keep their hash
        condition.pop("classifier", None)
    if same_number(condition.get("imbalance_ratio", "1"), 1):  # balanced: likewise
        for name in IMBALANCE_PARAMS:
            condition.pop(name, None)
    if condition.get("reg", "none") == "none":  # unregularised (every run before the regularisers): likewise
        for name in REGULARISER_PARAMS:
            condition.pop(name, None)
    if params["dataset"] != "synthetic":
        for name in SYNTHETIC_PARAMS:
            condition.pop(name, None)
    return condition


def condition_hash(params: Mapping[str, str]) -> str:
    """The 12-hex `ncflow.condition` tag: sha256 of `condition_params` as sorted JSON (canonical strings in)."""
    canonical = json.dumps(condition_params(params), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def run_name(params: Mapping[str, str]) -> str:
    """`mlp5-relu-w512-wd1e-04-mnist-s0`: the condition at a glance, for the MLflow UI.

    MLP `mlp{depth}-{activation}-w{width}` (else the arch), `-wd{λ:.0e}-{dataset}` (your own data: the file's or
    folder's name without its suffix, `my_data` for `./my_data.npz`), `-etf-head` for a fixed ETF
    classifier, `-imb{ρ}-{profile}` for an imbalanced subsample, `-ce-only`/`-mse-only` for a non-default protocol,
    `-ncc1e-03`/`-flatness1e-04` for a regulariser (its λ) and `-u{epoch}` for its unplug, `-a{α}` for an
    intervention run, `-s{seed}`.
    """
    if params["arch"] == "mlp":
        model = f"mlp{params['depth']}-{params['activation']}-w{params['width']}"
    else:
        model = params["arch"]
    parts = [model, f"wd{float(params['weight_decay']):.0e}", dataset_label(params["dataset"])]
    if params.get("classifier", "learned") != "learned":
        parts.append(f"{params['classifier']}-head")
    if not same_number(params.get("imbalance_ratio", "1"), 1):
        parts.append(f"imb{float(params['imbalance_ratio']):g}-{params.get('imbalance_profile', 'step')}")
    if params["protocol"] != "two-phase":
        parts.append(params["protocol"])
    if params.get("reg", "none") != "none":
        parts.append(f"{params['reg']}{float(params['reg_lambda']):.0e}")
        if not same_number(params.get("unplug_epoch", "0"), 0):
            parts.append(f"u{params['unplug_epoch']}")
    if params["init_from"] != "none":
        parts.append(f"a{float(params['rescale_alpha']):g}")
    parts.append(f"s{params['seed']}")
    return "-".join(parts)


def dataset_label(dataset: str) -> str:
    """The data set as a run name says it: a named one as it is, your own file or folder by its name, no suffix."""
    if dataset in run_config.DATASETS:
        return dataset
    return PurePath(dataset.rstrip("/\\")).stem or dataset


def same_number(logged: str, wanted: float | int) -> bool:
    """Whether a logged param string is the number `wanted` (`mlflow run -P seed=1.0` logs `1.0` for seed 1)."""
    try:
        return float(logged) == float(wanted)
    except (TypeError, ValueError):
        return False


# ------------------------------------------------------------------------------------------------ sweeps

# The named sweeps (`ncflow sweep NAME`, `ncflow.sweeps.grids.NAMED_SWEEPS`): the TAG_SWEEP of their runs.
DEPTH_SWEEP, ACTIVATION_SWEEP, WEIGHT_DECAY_SWEEP, WIDTH_SWEEP = "depth", "activation", "weight-decay", "width"
GRID_SWEEP, INTERVENTION_SWEEP, PROTOCOL_SWEEP = "grid", "intervention", "protocol"
ETF_SWEEP, LAYERWISE_SWEEP, IMBALANCE_SWEEP = "etf", "layerwise", "imbalance"  # beyond the paper
# Han et al.'s program: grokking (modular arithmetic) and their two regularisers.
GROKKING_SWEEP, NCC_REGULARISER_SWEEP, FLATNESS_REGULARISER_SWEEP = "grokking", "ncc-regularizer", "flatness-regularizer"
GRID_FAMILY = "grid"  # what the grid sweep varies: arch and dataset together (by preset), not one param
# Every sweep name → its family in the analysis (`analysis.selection.SWEEP_NAMES`): the param its runs vary
# (GRID_FAMILY for the grid; for the layer-wise study, the param its runs turn on). A name is never dropped, so the
# runs of an older ncflow keep reading as their family.
SWEEP_FAMILIES: dict[str, str] = {
    DEPTH_SWEEP: "depth", ACTIVATION_SWEEP: "activation", WEIGHT_DECAY_SWEEP: "weight_decay", WIDTH_SWEEP: "width",
    GRID_SWEEP: GRID_FAMILY, INTERVENTION_SWEEP: "rescale_alpha", PROTOCOL_SWEEP: "protocol",
    ETF_SWEEP: "classifier", LAYERWISE_SWEEP: "layerwise", IMBALANCE_SWEEP: "imbalance_ratio",
    GROKKING_SWEEP: "operation", NCC_REGULARISER_SWEEP: "reg_lambda", FLATNESS_REGULARISER_SWEEP: "reg_lambda",
}
