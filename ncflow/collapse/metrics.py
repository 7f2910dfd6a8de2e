"""Neural-collapse metrics of one set of penultimate features: a pure function of tensors.

`collapse_metrics` returns every per-epoch metric ncflow logs (`nc/<name>` in MLflow), computed in two chunked,
vectorised passes over the features (class means, then everything else) with float64 reductions. Formulas and their
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
from dataclasses import dataclass

import torch

from ncshared.schema import COLLAPSE_METRIC_NAMES, LAYER_METRIC_NAMES

METRIC_NAMES = COLLAPSE_METRIC_NAMES  # the keys of collapse_metrics; logged as `nc/<name>`
MINORITY_NAMES = ("minority_collapse", "minority_mean_collapse")  # collapse_metrics' keys given minority_classes

_CHUNK_ELEMENTS = 1 << 18  # rows per chunk × d: 2 MiB of float64, so a chunk stays in cache between its steps
_PINV_RCOND = 1e-15  # Σ_B⁺ keeps eigenvalues above this × the largest: np.linalg.pinv's default, as in Papyan's code
_UNDEFINED_WITHOUT_SPREAD = frozenset({"nc1", "nc1_pinv", "nc2", "nc2_equinorm", "nc3", "ncc", "angle_mean_deg",
                                       "angle_std_deg", "minority_mean_collapse"})  # nan if Tr Σ_B = 0


class NonFiniteFeaturesError(ValueError):
    """The features, weight or bias hold NaN or inf — a diverged model; a training loop catches this to record
    divergence."""


@dataclass(frozen=True)
class _ClassStatistics:
    """First-pass results: per-class counts and means, in coordinates shifted by one sample (see _class_means)."""

    counts: torch.Tensor  # K, float64
    shift: torch.Tensor  # d, float64: the first sample, subtracted from every row before summing
    shifted_means: torch.Tensor  # K×d: μ_c − shift
    shifted_global_mean: torch.Tensor  # d: μ_G − shift
    centred_means: torch.Tensor  # K×d: rows m_c = μ_c − μ_G


@dataclass(frozen=True)
class _Sums:
    """Second-pass float64 accumulators over all samples."""

    within_by_class: torch.Tensor  # K: Σ_{i∈c} ‖h_i − μ_c‖²
    whitened_within: torch.Tensor  # Σ_i ‖diag(1/s) Uᵀ (h_i − μ_{y_i})‖² (the N·nc1_pinv numerator)
    norms: torch.Tensor  # Σ_i ‖h_i‖
    flatness: torch.Tensor  # Σ_i ‖h_i‖² · Var_{p_i}(w)
    nearest_mean_mismatches: torch.Tensor  # samples whose classifier and nearest-class-mean decisions differ

    @classmethod
    def zeros(cls, num_classes: int, device: torch.device) -> _Sums:
        """Fresh accumulators: a K-vector for the per-class sums, 0-dim tensors for the rest."""
        scalars = [torch.zeros((), dtype=torch.float64, device=device) for _ in range(4)]
        return cls(torch.zeros(num_classes, dtype=torch.float64, device=device), *scalars)


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
    centred class means.
    The features are read in row chunks, so memory beyond the input is a few chunk-sized float64 buffers.

    Args:
        features: N×d penultimate features (any floating dtype).
        labels: N integer class labels in range(K).
        weight: K×d classifier weight.
        bias: K classifier bias, or None for a bias-free classifier.
        num_classes: K; defaults to `weight.shape[0]` and must equal it.
        minority_classes: under class imbalance, the minority classes (at least two): the result also holds
            `minority_collapse` and `minority_mean_collapse` (see `_minority_collapse`).

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
    _check_inputs(features, labels, weight, bias, num_classes)
    device = features.device
    labels = labels.to(device=device, dtype=torch.int64)
    weight = weight.to(device=device, dtype=torch.float64)
    bias = None if bias is None else bias.to(device=device, dtype=torch.float64)
    counts = _class_counts(labels, num_classes)
    stats = _class_means(features, labels, counts)
    sums = _accumulate(features, labels, stats, weight, bias)
    values = {**_feature_values(stats, sums, features.shape[0]), **_classifier_values(stats, sums, weight, features.shape[0])}
    names = METRIC_NAMES
    if minority_classes is not None:
        values.update(_minority_collapse(weight, stats.centred_means, minority_classes))
        names = (*METRIC_NAMES, *MINORITY_NAMES)
    return _as_floats(values, names, stats.centred_means)


@torch.no_grad()
def feature_collapse(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict[str, float]:
    """`nc1`, `nc1_pinv`, `nc2` and `fn` of features that have no classifier of their own (a hidden layer's output),
    computed as in `collapse_metrics` (same passes, same float64 reductions; nan where Tr Σ_B = 0)."""
    _check_features(features, labels)
    labels = labels.to(device=features.device, dtype=torch.int64)
    stats = _class_means(features, labels, _class_counts(labels, num_classes))
    sums = _accumulate(features, labels, stats, None, None)
    return _as_floats(_feature_values(stats, sums, features.shape[0]), LAYER_METRIC_NAMES, stats.centred_means)


@torch.no_grad()
def class_nc1(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> list[float]:
    """Per-class NC1: NC1_c = V_c / Tr(Σ_B), V_c = (1/n_c) Σ_{i∈c} ‖h_i − μ_c‖², so that NC1 = Σ_c (n_c/N) NC1_c."""
    _check_features(features, labels)
    labels = labels.to(device=features.device, dtype=torch.int64)
    stats = _class_means(features, labels, _class_counts(labels, num_classes))
    sums = _accumulate(features, labels, stats, None, None)
    between_trace = (stats.centred_means * stats.centred_means).sum() / num_classes
    return (sums.within_by_class / stats.counts / between_trace).tolist()


def _resolve_num_classes(weight: torch.Tensor, num_classes: int | None) -> int:
    """K from the classifier, checked against an explicit `num_classes`."""
    if weight.ndim != 2:
        raise ValueError(f"weight: expected a K×d matrix, got shape {tuple(weight.shape)}")
    if num_classes is not None and num_classes != weight.shape[0]:
        raise ValueError(f"num_classes={num_classes} but weight has {weight.shape[0]} rows")
    if weight.shape[0] < 2:
        raise ValueError(f"need at least 2 classes, got {weight.shape[0]}")
    return weight.shape[0]


def _check_inputs(
    features: torch.Tensor,
    labels: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    num_classes: int,
) -> None:
    """Shapes and dtypes of all inputs, finiteness of the classifier (the features' is checked in _class_means)."""
    _check_features(features, labels)
    if weight.shape[1] != features.shape[1]:
        raise ValueError(f"weight has {weight.shape[1]} columns but features have d={features.shape[1]}")
    if bias is not None and bias.shape != (num_classes,):
        raise ValueError(f"bias: expected shape ({num_classes},), got {tuple(bias.shape)}")
    if not bool(torch.isfinite(weight).all()) or (bias is not None and not bool(torch.isfinite(bias).all())):
        raise NonFiniteFeaturesError("weight or bias contains non-finite values (NaN or inf)")


def _check_features(features: torch.Tensor, labels: torch.Tensor) -> None:
    """An N×d floating matrix with N > 0 and N integer labels."""
    if features.ndim != 2 or not features.is_floating_point():
        raise ValueError(f"features: expected a floating N×d matrix, got {features.dtype} {tuple(features.shape)}")
    if features.shape[0] == 0:
        raise ValueError("features: no samples")
    if labels.shape != (features.shape[0],):
        raise ValueError(f"labels: expected shape ({features.shape[0]},), got {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"labels: expected an integer tensor, got {labels.dtype}")


def _class_counts(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """n_c as float64; every label must lie in range(K) and every class must have a sample."""
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= num_classes:
        raise ValueError(f"labels must lie in range({num_classes}); found values from {low} to {high}")
    counts = torch.bincount(labels, minlength=num_classes)
    empty = (counts == 0).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"class {empty[0]} has no samples (empty classes: {empty}); K={num_classes}")
    return counts.to(torch.float64)


def _row_chunks(num_rows: int, num_cols: int) -> list[slice]:
    """Row slices of about _CHUNK_ELEMENTS elements each."""
    rows = max(1, _CHUNK_ELEMENTS // max(1, num_cols))
    return [slice(start, min(start + rows, num_rows)) for start in range(0, num_rows, rows)]


def _class_means(features: torch.Tensor, labels: torch.Tensor, counts: torch.Tensor) -> _ClassStatistics:
    """First pass: class sums of h_i − h_0 in float64, so constant features give exactly zero spread.

    Shifting by the first sample also removes a common offset before summation, which keeps μ_c − μ_G accurate.
    A non-finite feature makes some class sum non-finite, which is how non-finite input is detected.
    """
    shift = features[0].to(torch.float64)
    sums = torch.zeros(counts.shape[0], features.shape[1], dtype=torch.float64, device=features.device)
    for rows in _row_chunks(*features.shape):
        sums.index_add_(0, labels[rows], features[rows].to(torch.float64, copy=True).sub_(shift))
    if not bool(torch.isfinite(sums).all()):
        raise NonFiniteFeaturesError("features contain non-finite values (NaN or inf)")
    shifted_means = sums / counts[:, None]
    shifted_global_mean = sums.sum(0) / counts.sum()
    return _ClassStatistics(counts, shift, shifted_means, shifted_global_mean, shifted_means - shifted_global_mean)


def _between_class_whitener(centred_means: torch.Tensor) -> torch.Tensor:
    """P = U diag(1/s) (d×r), which turns Papyan's NC1 into a sum over N×r products.

    M = [m_1 … m_K] = U diag(s) Vᵀ (thin SVD, via the K×d matrix Mᵀ), so Σ_B = M Mᵀ / K = U diag(s²/K) Uᵀ and
    Σ_B⁺ = U diag(K/s²) Uᵀ on the eigenvalues s²/K of Σ_B above _PINV_RCOND × the largest (so the direction that
    Σ_c n_c m_c = 0 leaves, with s ≈ 1e-16·s_max from rounding, is dropped). Then
    Tr(Σ_W Σ_B⁺) / K = (1/N) Σ_i ‖diag(1/s) Uᵀ (h_i − μ_{y_i})‖², so P = U diag(1/s); r = 0 when M = 0.
    """
    _, singular_values, right_vectors = torch.linalg.svd(centred_means, full_matrices=False)
    eigenvalues = singular_values.square()
    kept = eigenvalues > _PINV_RCOND * eigenvalues.max()
    return right_vectors[kept].T / singular_values[kept]


def _decision_scores(
    stats: _ClassStatistics, weight: torch.Tensor, bias: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, a) such that x̃ A + a holds the logits (first K columns) and nearest-mean scores (last K) of x̃ = h − h_0.

    logits = x̃ Wᵀ + (W h_0 + b);  argmin_c ‖h − μ_c‖² = argmax_c x̃·m_c − (μ̃_G·m_c + ‖m_c‖²/2) with μ̃ = μ − h_0.
    """
    centred = stats.centred_means
    nearest_offset = -(centred @ stats.shifted_global_mean) - 0.5 * (centred * centred).sum(1)
    logit_offset = weight @ stats.shift
    if bias is not None:
        logit_offset = logit_offset + bias
    return torch.cat([weight, centred]).T.contiguous(), torch.cat([logit_offset, nearest_offset])


def _accumulate(
    features: torch.Tensor,
    labels: torch.Tensor,
    stats: _ClassStatistics,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
) -> _Sums:
    """Second pass: every per-sample quantity, reduced chunk by chunk into float64 sums.

    Without a classifier (`weight` None) the classifier's sums (nc4's mismatches, flatness) stay zero.
    """
    num_classes = stats.counts.shape[0]
    whitener = _between_class_whitener(stats.centred_means)
    if weight is not None:
        projection, offset = _decision_scores(stats, weight, bias)
        half_spread = 0.5 * torch.cdist(weight, weight, compute_mode="donot_use_mm_for_euclid_dist").square()
    sums = _Sums.zeros(num_classes, features.device)
    for rows in _row_chunks(*features.shape):
        x = features[rows].to(torch.float64, copy=True)  # copy: x is overwritten in place below
        norms = torch.linalg.vector_norm(x, dim=1)
        x -= stats.shift
        sums.norms.add_(norms.sum())
        if weight is not None:
            scores = torch.addmm(offset, x, projection)
            logits, nearest_scores = scores[:, :num_classes], scores[:, num_classes:]
            sums.nearest_mean_mismatches.add_((logits.argmax(1) != nearest_scores.argmax(1)).sum())
            sums.flatness.add_((norms.square() * _weight_variance(logits, half_spread)).sum())
        membership = torch.nn.functional.one_hot(labels[rows], num_classes).to(torch.float64)
        deviations = x.addmm_(membership, stats.shifted_means, alpha=-1.0)  # h_i − μ_{y_i}, in place
        sums.within_by_class.addmv_(membership.T, torch.linalg.vector_norm(deviations, dim=1).square())
        sums.whitened_within.add_((deviations @ whitener).square().sum())
    return sums


def _weight_variance(logits: torch.Tensor, half_spread: torch.Tensor) -> torch.Tensor:
    """Var_{p_i}(w) = Σ_j p_ij ‖w_j‖² − ‖Σ_j p_ij w_j‖² = ½ Σ_{j,k} p_ij p_ik ‖w_j − w_k‖², p_i = softmax(logits_i).

    The pairwise form sums non-negative terms, so it stays accurate when p_i is nearly one-hot.
    """
    probabilities = torch.softmax(logits, dim=1)
    return ((probabilities @ half_spread) * probabilities).sum(1)


def _feature_values(stats: _ClassStatistics, sums: _Sums, num_samples: int) -> dict[str, torch.Tensor]:
    """The metrics of the features alone (no classifier), as 0-dim tensors."""
    centred = stats.centred_means
    between_trace = (centred * centred).sum() / centred.shape[0]
    class_variances = sums.within_by_class / stats.counts
    return {
        "nc1": sums.within_by_class.sum() / num_samples / between_trace,
        "nc1_pinv": sums.whitened_within / num_samples,
        "nc2": _equiangularity(centred),
        "nc2_equinorm": _equinorm(centred),
        "fn": sums.norms / num_samples,
        "ncc": _class_distance_variation(stats.shifted_means, class_variances),
        **dict(zip(("angle_mean_deg", "angle_std_deg"), _pair_angles(centred))),
    }


def _classifier_values(
    stats: _ClassStatistics, sums: _Sums, weight: torch.Tensor, num_samples: int
) -> dict[str, torch.Tensor]:
    """The metrics that involve the classifier, as 0-dim tensors."""
    return {
        "nc3": 1.0 - _row_cosines(weight, stats.centred_means).mean(),
        "nc4": sums.nearest_mean_mismatches / num_samples,
        "flatness": sums.flatness / num_samples,
    }


def _as_floats(values: dict[str, torch.Tensor], names: tuple[str, ...], centred_means: torch.Tensor) -> dict[str, float]:
    """`names` of `values` as floats (one host transfer); nan where Tr Σ_B = 0 makes a metric undefined."""
    no_spread = (centred_means * centred_means).sum() == 0
    nan = torch.full((), float("nan"), dtype=torch.float64, device=centred_means.device)
    guarded = [torch.where(no_spread, nan, values[name]) if name in _UNDEFINED_WITHOUT_SPREAD else values[name]
               for name in names]
    return dict(zip(names, torch.stack(guarded).tolist()))


def _minority_collapse(
    weight: torch.Tensor, centred_means: torch.Tensor, minority_classes: Sequence[int]
) -> dict[str, torch.Tensor]:
    """Minority collapse (Fang et al. 2021): the mean pairwise cosine, pairs i < j of the minority classes, of
    their classifier rows (`minority_collapse`) and of their centred class means (`minority_mean_collapse`).
    1 when the minority classes' rows (means) point the same way; −1/(K−1) for a simplex ETF."""
    index = torch.as_tensor(list(minority_classes), device=weight.device)
    if index.numel() < 2:
        raise ValueError(f"minority_classes: need at least two classes, got {list(minority_classes)}")
    return {"minority_collapse": _mean_pair_cosine(weight[index]),
            "minority_mean_collapse": _mean_pair_cosine(centred_means[index])}


def _mean_pair_cosine(rows: torch.Tensor) -> torch.Tensor:
    """Mean of cos(r_i, r_j) over the pairs i < j of `rows`."""
    unit = rows / rows.norm(dim=1, keepdim=True)
    upper = torch.triu_indices(rows.shape[0], rows.shape[0], offset=1, device=rows.device)
    return (unit @ unit.T)[upper[0], upper[1]].mean()


def _equiangularity(centred_means: torch.Tensor) -> torch.Tensor:
    """NC2: mean over ordered pairs i ≠ j of |cos(m_i, m_j) + 1/(K−1)|."""
    num_classes = centred_means.shape[0]
    unit = centred_means / centred_means.norm(dim=1, keepdim=True)
    deviation = (unit @ unit.T + 1.0 / (num_classes - 1)).abs()
    off_diagonal = ~torch.eye(num_classes, dtype=torch.bool, device=unit.device)
    return deviation[off_diagonal].mean()


def _pair_angles(centred_means: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and population std (ddof = 0) of the angles between centred class means, pairs i < j, in degrees."""
    degrees = _angles_between(centred_means)
    return degrees.mean(), degrees.std(correction=0)


def _angles_between(centred_means: torch.Tensor) -> torch.Tensor:
    """∠(m_i, m_j) in degrees for every pair i < j (row-major order)."""
    num_classes = centred_means.shape[0]
    unit = centred_means / centred_means.norm(dim=1, keepdim=True)
    upper = torch.triu_indices(num_classes, num_classes, offset=1, device=unit.device)
    cosines = (unit @ unit.T)[upper[0], upper[1]].clamp(-1.0, 1.0)
    return torch.rad2deg(torch.arccos(cosines))


def class_mean_angles(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> list[float]:
    """The K(K−1)/2 angles between the centred class means of `features`, in degrees (pairs i < j)."""
    labels = labels.to(device=features.device, dtype=torch.int64)
    stats = _class_means(features, labels, _class_counts(labels, num_classes))
    return _angles_between(stats.centred_means).tolist()


def _equinorm(centred_means: torch.Tensor) -> torch.Tensor:
    """NC2 equinorm: population std (ddof = 0) of ‖m_c‖ over its mean."""
    norms = centred_means.norm(dim=1)
    return norms.std(correction=0) / norms.mean()


def _row_cosines(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """cos(left_c, right_c) for each row c."""
    return (left * right).sum(1) / (left.norm(dim=1) * right.norm(dim=1))


def _class_distance_variation(means: torch.Tensor, class_variances: torch.Tensor) -> torch.Tensor:
    """NCC: Σ over ordered pairs c ≠ c' of (V_c + V_c') / (2 ‖μ_c − μ_c'‖²), distances from exact differences."""
    num_classes = means.shape[0]
    squared_distances = torch.cdist(means, means, compute_mode="donot_use_mm_for_euclid_dist").square()
    pair_variances = class_variances[:, None] + class_variances[None, :]
    off_diagonal = ~torch.eye(num_classes, dtype=torch.bool, device=means.device)
    return (pair_variances[off_diagonal] / (2.0 * squared_distances[off_diagonal])).sum()
