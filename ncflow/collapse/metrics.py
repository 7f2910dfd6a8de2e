"""Neural-collapse metrics of one set of penultimate features: a pure function of tensors.

`collapse_metrics` returns every per-epoch metric ncflow logs (`nc/<name>` in MLflow). It feeds the rows of the
in-memory features, in chunks, through the two passes of `ncflow.collapse.statistics.CollapseStatistics` — the one
implementation of these metrics, which the library's monitor feeds batch by batch — with float64 reductions. Formulas and their
relation to the papers are in docs/metrics.md; in short, with H the N×d features, μ_c the class means, μ_G the mean
of all samples, m_c = μ_c − μ_G, W (K×d) and b the classifier:

- nc1          Tr(Σ_W) / Tr(Σ_B)                       (Rupa's NC1, the primary metric)
- nc1_pinv     Tr(Σ_W Σ_B⁺) / K                        (Papyan et al.'s NC1)
- nc2          1/(K(K−1)) Σ_{i≠j} |cos(m_i, m_j) + 1/(K−1)|
- nc2_equinorm std_c ‖m_c‖ / mean_c ‖m_c‖               (population std, ddof = 0)
- nc3          1 − (1/K) Σ_c cos(w_c, m_c)
- nc4          fraction of samples with argmax_c (W h + b)_c ≠ argmin_c ‖h − μ_c‖
- fn           (1/N) Σ_i ‖h_i‖
- ncc          Σ_{c≠c'} (V_c + V_c') / (2 ‖μ_c − μ_c'‖²),  V_c = (1/n_c) Σ_{i∈c} ‖h_i − μ_c‖²
- flatness     (1/N) Σ_i ‖h_i‖² (Σ_j p_ij ‖w_j‖² − ‖Σ_j p_ij w_j‖²),  p_i = softmax(W h_i + b)
- angle_mean_deg, angle_std_deg   mean and population std of the K(K−1)/2 angles ∠(m_i, m_j), i < j, in degrees
                                  (a simplex ETF: all equal to arccos(−1/(K−1)), std 0)
- minority_collapse, minority_mean_collapse   (given the minority classes) mean pairwise cosine of their w_c, of their m_c

`feature_collapse` gives nc1, nc1_pinv, nc2 and fn of features without a classifier (a hidden layer), `class_nc1`
the per-class NC1_c = V_c / Tr Σ_B (so NC1 = Σ_c (n_c/N) NC1_c).

with Σ_W = (1/N) Σ_i (h_i − μ_{y_i})(h_i − μ_{y_i})ᵀ and Σ_B = (1/K) Σ_c m_c m_cᵀ.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ncflow.collapse.statistics import CollapseStatistics, NonFiniteFeaturesError
from ncshared.schema import COLLAPSE_METRIC_NAMES, LAYER_METRIC_NAMES

__all__ = ["METRIC_NAMES", "MINORITY_NAMES", "NonFiniteFeaturesError", "class_mean_angles", "class_nc1",
           "collapse_metrics", "feature_collapse"]

METRIC_NAMES = COLLAPSE_METRIC_NAMES  # the keys of collapse_metrics; logged as `nc/<name>`
MINORITY_NAMES = ("minority_collapse", "minority_mean_collapse")  # collapse_metrics' keys given minority_classes


@torch.no_grad()
def collapse_metrics(
    features: torch.Tensor,
    labels: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    num_classes: int | None = None,
    minority_classes: Sequence[int] | None = None,
) -> dict[str, float]:
    """Every neural-collapse metric of `features` (N×d) with `labels` (N) under the classifier (`weight`, `bias`).

    Computed without autograd on the features' device; `labels`, `weight` and `bias` are moved there. All
    reductions are float64, within-class quantities are centred exactly (class means are subtracted from rows, never
    E‖x‖² − ‖Ex‖²), no per-sample outer product is formed, and Σ_B⁺ is applied in the K-dimensional span of the
    centred class means. The features are read in row chunks, twice (ncflow.collapse.statistics), so memory beyond
    the input is a few chunk-sized float64 buffers and the K×d class means.

    Args:
        features: N×d penultimate features (any floating dtype).
        labels: N integer class labels in range(K).
        weight: K×d classifier weight.
        bias: K classifier bias, or None for a bias-free classifier.
        num_classes: K; defaults to `weight.shape[0]` and must equal it.
        minority_classes: under class imbalance, the minority classes (at least two): the result also holds
            `minority_collapse` and `minority_mean_collapse`.

    Returns:
        A dict with a float for each name in METRIC_NAMES (definitions in the module docstring), and the two
        minority keys when `minority_classes` is given.

    Raises:
        ValueError: mismatched shapes, K < 2, non-integer or out-of-range labels, a class in range(K) with no
            samples (the message names the class).
        NonFiniteFeaturesError: (a ValueError) the features, weight or bias hold NaN or inf.

    Edge cases: d < K is fine (Σ_B⁺ has rank ≤ d). A one-sample class has V_c = 0. If all class means coincide
    (e.g. all features equal, so Tr Σ_B = 0), nc1, nc1_pinv, nc2, nc2_equinorm, nc3 and ncc are nan; two
    coinciding class means alone make ncc inf (or nan if both classes have zero spread). A zero classifier row w_c
    makes nc3 nan. Ties in either argmax/argmin of nc4 go to the lowest class index.
    """
    num_classes = _resolve_num_classes(weight, num_classes)
    _check_features(features, labels)
    statistics = CollapseStatistics(num_classes, weight, bias, minority_classes)
    values = _two_passes(statistics, features, labels)
    names = METRIC_NAMES if minority_classes is None else (*METRIC_NAMES, *MINORITY_NAMES)
    return {name: values[name] for name in names}


@torch.no_grad()
def feature_collapse(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict[str, float]:
    """`nc1`, `nc1_pinv`, `nc2` and `fn` of features that have no classifier of their own (a hidden layer's output),
    computed as in `collapse_metrics` (same passes, same float64 reductions; nan where Tr Σ_B = 0)."""
    _check_features(features, labels)
    values = _two_passes(CollapseStatistics(num_classes), features, labels)
    return {name: values[name] for name in LAYER_METRIC_NAMES}


@torch.no_grad()
def class_nc1(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> list[float]:
    """Per-class NC1: NC1_c = V_c / Tr(Σ_B), V_c = (1/n_c) Σ_{i∈c} ‖h_i − μ_c‖², so that NC1 = Σ_c (n_c/N) NC1_c."""
    _check_features(features, labels)
    return _first_pass(CollapseStatistics(num_classes, passes=1), features, labels).class_nc1()


@torch.no_grad()
def class_mean_angles(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> list[float]:
    """The K(K−1)/2 angles between the centred class means of `features`, in degrees (pairs i < j)."""
    _check_features(features, labels)
    return _first_pass(CollapseStatistics(num_classes, passes=1), features, labels).class_mean_angles()


def _first_pass(statistics: CollapseStatistics, features: torch.Tensor, labels: torch.Tensor) -> CollapseStatistics:
    statistics.update(features, labels)  # (which reads the rows in chunks)
    return statistics


def _two_passes(statistics: CollapseStatistics, features: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    _first_pass(statistics, features, labels)
    statistics.start_second_pass()
    return _first_pass(statistics, features, labels).compute()


def _resolve_num_classes(weight: torch.Tensor, num_classes: int | None) -> int:
    """K from the classifier, checked against an explicit `num_classes`."""
    if weight.ndim != 2:
        raise ValueError(f"weight: expected a K×d matrix, got shape {tuple(weight.shape)}")
    if num_classes is not None and num_classes != weight.shape[0]:
        raise ValueError(f"num_classes={num_classes} but weight has {weight.shape[0]} rows")
    if weight.shape[0] < 2:
        raise ValueError(f"need at least 2 classes, got {weight.shape[0]}")
    if weight.shape[1] < 1:
        raise ValueError("weight: no columns")
    return weight.shape[0]


def _check_features(features: torch.Tensor, labels: torch.Tensor) -> None:
    """An N×d floating matrix with N > 0 and N integer labels."""
    if features.ndim != 2 or not features.is_floating_point():
        raise ValueError(f"features: expected a floating N×d matrix, got {features.dtype} {tuple(features.shape)}")
    if features.shape[0] == 0:
        raise ValueError("features: no samples")
    if labels.shape != (features.shape[0],):
        raise ValueError(f"labels: expected shape ({features.shape[0]},), got {tuple(labels.shape)}")
