"""collapse_metrics against hand-worked values, a plain numpy reference, the explicit Hessian, and invariances."""

from __future__ import annotations

import math
import warnings
from fractions import Fraction

import numpy as np
import pytest
import torch

from ncflow.collapse.metrics import METRIC_NAMES, NonFiniteFeaturesError, collapse_metrics

SCALE_FREE = ("nc1", "nc1_pinv", "nc2", "nc2_equinorm", "nc3", "ncc")


def clustered_problem(
    num_samples: int, dim: int, num_classes: int, seed: int, dtype: torch.dtype = torch.float64
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gaussian clusters around random class centres (every class present), a random classifier and bias."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(num_samples) % num_classes
    centres = 2.0 * torch.randn(num_classes, dim, generator=generator, dtype=torch.float64)
    offset = torch.randn(dim, generator=generator, dtype=torch.float64)
    features = centres[labels] + offset + torch.randn(num_samples, dim, generator=generator, dtype=torch.float64)
    weight = torch.randn(num_classes, dim, generator=generator, dtype=torch.float64)
    bias = torch.randn(num_classes, generator=generator, dtype=torch.float64)
    return features.to(dtype), labels, weight.to(dtype), bias.to(dtype)


def numpy_reference(features: np.ndarray, labels: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> dict:
    """The textbook computation: explicit loops over samples, per-sample outer products, np.linalg.pinv."""
    num_samples, dim = features.shape
    num_classes = weight.shape[0]
    sums, counts = np.zeros((num_classes, dim)), np.zeros(num_classes)
    for h, c in zip(features, labels):
        sums[c] += h
        counts[c] += 1
    means = sums / counts[:, None]
    global_mean = features.mean(axis=0)
    within, spread = np.zeros((dim, dim)), np.zeros(num_classes)
    for h, c in zip(features, labels):
        within += np.outer(h - means[c], h - means[c])
        spread[c] += (h - means[c]) @ (h - means[c])
    within /= num_samples
    between = sum(np.outer(m - global_mean, m - global_mean) for m in means) / num_classes
    # rcond 1e-12 (not numpy's 1e-15): Σ_B's null direction (Σ_c n_c m_c = 0) holds rounding noise of ~1e-16.
    between_pinv = np.linalg.pinv(between, rcond=1e-12, hermitian=True)
    variances = spread / counts
    ncc = sum(
        (variances[c] + variances[k]) / (2 * np.sum((means[c] - means[k]) ** 2))
        for c in range(num_classes) for k in range(num_classes) if c != k
    )
    mismatches = sum(
        np.argmax(weight @ h + bias) != np.argmin([np.linalg.norm(h - mu) for mu in means]) for h in features
    )
    return {
        "nc1": np.trace(within) / np.trace(between),
        "nc1_pinv": np.trace(within @ between_pinv) / num_classes,
        "ncc": ncc,
        "fn": np.mean([np.linalg.norm(h) for h in features]),
        "nc4": mismatches / num_samples,
    }


def simplex_etf(num_classes: int, dim: int, seed: int) -> torch.Tensor:
    """K×d rows at the vertices of a unit simplex ETF, embedded in ℝ^d by a random orthonormal map."""
    generator = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.randn(dim, num_classes, generator=generator, dtype=torch.float64))
    centring = torch.eye(num_classes, dtype=torch.float64) - 1.0 / num_classes
    return math.sqrt(num_classes / (num_classes - 1)) * centring @ basis.T


def test_perfect_simplex_etf_is_fully_collapsed() -> None:
    vertices = simplex_etf(num_classes=5, dim=8, seed=0)
    labels = torch.arange(5).repeat_interleave(4)  # four samples exactly at each vertex
    metrics = collapse_metrics(vertices[labels], labels, 2.5 * vertices, torch.zeros(5, dtype=torch.float64))
    for name in ("nc1", "nc1_pinv", "nc2", "nc2_equinorm", "nc3", "ncc"):
        assert abs(metrics[name]) < 1e-10, name
    assert metrics["nc4"] == 0.0
    assert metrics["fn"] == pytest.approx(1.0, rel=1e-12)  # unit vertices
    assert metrics["angle_mean_deg"] == pytest.approx(math.degrees(math.acos(-1 / 4)), rel=1e-12)  # 104.48°
    assert metrics["angle_std_deg"] == pytest.approx(0.0, abs=1e-6)


def test_simplex_angle_for_ten_classes() -> None:
    vertices = simplex_etf(num_classes=10, dim=12, seed=1)
    labels = torch.arange(10)
    metrics = collapse_metrics(vertices[labels], labels, vertices, None)
    assert metrics["angle_mean_deg"] == pytest.approx(96.37937, abs=1e-5)  # arccos(−1/9)


def test_hand_worked_three_classes_in_two_dimensions() -> None:
    # Class 0: (3,0), (5,0)    μ0 = (4,0)    V0 = 1   ‖h‖ = 3, 5
    # Class 1: (-8,0), (0,6)   μ1 = (-4,3)   V1 = 25  ‖h‖ = 8, 6   (deviations ±(4,3))
    # Class 2: (0,-1), (0,-5)  μ2 = (0,-3)   V2 = 4   ‖h‖ = 1, 5
    # μG = 0, so m_c = μ_c with ‖m‖ = 4, 5, 3.
    # nc1:  Tr Σ_W = (2·1 + 2·25 + 2·4)/6 = 10;  Tr Σ_B = (16 + 25 + 9)/3 = 50/3;  nc1 = 3/5.
    # nc1_pinv: Σ_W = [[17/3, 4], [4, 13/3]], Σ_B = [[32/3, -4], [-4, 6]] (det 48),
    #   Σ_B⁻¹ = [[6, 4], [4, 32/3]]/48, Tr(Σ_W Σ_B⁻¹) = (34 + 16 + 16 + 416/9)/48 = 505/216;  /K → 505/648.
    # nc2:  cos01 = -16/20 = -4/5, cos02 = 0, cos12 = -9/15 = -3/5; |cos + 1/2| = 3/10, 1/2, 1/10;
    #   ordered pairs: 2·(9/10)/6 = 3/10.
    # nc2_equinorm: norms 4, 5, 3 → population std √(2/3) over mean 4 = √6/12.
    # nc3:  w = (1,0), (0,1), (0,-1): cos(w_c, m_c) = 1, 3/5, 1 → 1 - (13/5)/3 = 2/15.
    # nc4:  with b = (0, 5/2, 0), sample (0,-1) has logits (0, 3/2, 1) → class 1, but its nearest mean is μ2
    #   (distance² 4 vs 17 and 32); the five others agree (e.g. (3,0): logits (3, 5/2, 0) → 0 = nearest).  1/6.
    # fn:   (3 + 5 + 8 + 6 + 1 + 5)/6 = 14/3.
    # ncc:  ‖μ0-μ1‖² = 73, ‖μ0-μ2‖² = 25, ‖μ1-μ2‖² = 52;
    #   2·[(1+25)/146 + (1+4)/50 + (25+4)/104] = 26/73 + 1/5 + 29/52 = 21141/18980.
    features = torch.tensor([[3, 0], [5, 0], [-8, 0], [0, 6], [0, -1], [0, -5]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    weight = torch.tensor([[1, 0], [0, 1], [0, -1]], dtype=torch.float64)
    bias = torch.tensor([0, 2.5, 0], dtype=torch.float64)
    metrics = collapse_metrics(features, labels, weight, bias)
    expected = {
        "nc1": Fraction(3, 5), "nc1_pinv": Fraction(505, 648), "nc2": Fraction(3, 10), "nc3": Fraction(2, 15),
        "nc4": Fraction(1, 6), "fn": Fraction(14, 3), "ncc": Fraction(21141, 18980),
    }
    for name, value in expected.items():
        assert metrics[name] == pytest.approx(float(value), rel=1e-12, abs=1e-15), name
    assert metrics["nc2_equinorm"] == pytest.approx(math.sqrt(6) / 12, rel=1e-12)
    # angles: arccos(−4/5) = 143.13°, arccos(0) = 90°, arccos(−3/5) = 126.87°; the first and last sum to 270°,
    # so the mean is exactly 120°; population std from the three.
    angles = [math.degrees(math.acos(-4 / 5)), 90.0, math.degrees(math.acos(-3 / 5))]
    assert metrics["angle_mean_deg"] == pytest.approx(120.0, rel=1e-12)
    assert metrics["angle_std_deg"] == pytest.approx(float(np.std(angles)), rel=1e-10)


def test_returns_exactly_the_metric_names_as_floats() -> None:
    metrics = collapse_metrics(*clustered_problem(40, 6, 3, seed=1))
    assert tuple(metrics) == METRIC_NAMES
    assert all(type(value) is float for value in metrics.values())


@pytest.mark.parametrize(("num_samples", "dim", "num_classes"), [(120, 9, 4), (90, 3, 6), (50, 2, 5)])
def test_matches_plain_numpy_reference(num_samples: int, dim: int, num_classes: int) -> None:
    features, labels, weight, bias = clustered_problem(num_samples, dim, num_classes, seed=dim)
    metrics = collapse_metrics(features, labels, weight, bias)
    reference = numpy_reference(features.numpy(), labels.numpy(), weight.numpy(), bias.numpy())
    for name in ("nc1", "nc1_pinv", "ncc", "fn"):
        assert metrics[name] == pytest.approx(reference[name], rel=1e-8), name
    assert metrics["nc4"] == reference["nc4"]


def test_unequal_class_sizes_and_a_single_sample_class_match_reference() -> None:
    features, labels, weight, bias = clustered_problem(60, 5, 4, seed=3)
    labels = torch.tensor([0] * 30 + [1] * 20 + [2] * 9 + [3])  # class 3 has one sample, so V_3 = 0
    metrics = collapse_metrics(features, labels, weight, bias)
    reference = numpy_reference(features.numpy(), labels.numpy(), weight.numpy(), bias.numpy())
    for name in ("nc1", "nc1_pinv", "ncc", "fn"):
        assert metrics[name] == pytest.approx(reference[name], rel=1e-8), name


def test_flatness_equals_petzka_kappa_from_the_explicit_hessian() -> None:
    # For mean CE over samples, ∂²L/∂W² = (1/N) Σ_i (diag(p_i) − p_i p_iᵀ) ⊗ h_i h_iᵀ, so its (s, s') d×d block has
    # trace (1/N) Σ_i (δ_ss' p_is − p_is p_is') ‖h_i‖², and Petzka's κ_Tr = Σ_{s,s'} ⟨w_s, w_s'⟩ Tr(H_ss') equals
    # (1/N) Σ_i ‖h_i‖² (Σ_j p_ij ‖w_j‖² − ‖Σ_j p_ij w_j‖²): the flatness κ of docs/metrics.md.
    features, labels, weight, bias = clustered_problem(7, 3, 4, seed=5)

    def mean_cross_entropy(flat_weight: torch.Tensor) -> torch.Tensor:
        logits = features @ flat_weight.reshape(weight.shape).T + bias
        return torch.nn.functional.cross_entropy(logits, labels)

    hessian = torch.autograd.functional.hessian(mean_cross_entropy, weight.flatten()).reshape(4, 3, 4, 3)
    probabilities = torch.softmax(features @ weight.T + bias, dim=1)
    curvature = torch.diag_embed(probabilities) - probabilities[:, :, None] * probabilities[:, None, :]
    kronecker = torch.einsum("nst,na,nb->satb", curvature, features, features) / len(features)
    assert torch.allclose(hessian, kronecker, rtol=1e-10, atol=1e-12)
    block_traces = torch.einsum("sata->st", hessian)
    kappa = (weight @ weight.T * block_traces).sum().item()
    assert collapse_metrics(features, labels, weight, bias)["flatness"] == pytest.approx(kappa, rel=1e-8)
    # Han et al.'s computable proxy (their Lemma A.2, after Walter et al.) bounds it: κ_Tr ≤ ‖W‖_F² Tr(H).
    assert kappa <= weight.square().sum().item() * hessian.reshape(12, 12).trace().item()


def test_common_rotation_of_features_and_classifier_changes_nothing() -> None:
    features, labels, weight, bias = clustered_problem(150, 12, 5, seed=7)
    generator = torch.Generator().manual_seed(8)
    rotation, _ = torch.linalg.qr(torch.randn(12, 12, generator=generator, dtype=torch.float64))
    before = collapse_metrics(features, labels, weight, bias)
    after = collapse_metrics(features @ rotation, labels, weight @ rotation, bias)
    for name in METRIC_NAMES:
        assert after[name] == pytest.approx(before[name], rel=1e-9, abs=1e-12), name


def test_scaling_features_keeps_ratios_and_scales_fn() -> None:
    features, labels, weight, bias = clustered_problem(150, 12, 5, seed=9)
    before = collapse_metrics(features, labels, weight, bias)
    after = collapse_metrics(3.7 * features, labels, weight, bias)
    for name in SCALE_FREE:
        assert after[name] == pytest.approx(before[name], rel=1e-9), name
    assert after["fn"] == pytest.approx(3.7 * before["fn"], rel=1e-12)


def test_bias_none_is_a_zero_bias_and_inputs_are_not_modified() -> None:
    features, labels, weight, _ = clustered_problem(80, 6, 4, seed=11)
    original = features.clone()
    without = collapse_metrics(features, labels, weight, None)
    assert without == collapse_metrics(features, labels, weight, torch.zeros(4, dtype=torch.float64))
    assert torch.equal(features, original)


def test_parameters_that_require_grad_are_accepted() -> None:
    features, labels, weight, bias = clustered_problem(40, 5, 3, seed=20)
    head = torch.nn.Linear(5, 3).double()
    with torch.no_grad():
        head.weight.copy_(weight)
        head.bias.copy_(bias)
    expected = collapse_metrics(features, labels, weight, bias)
    assert collapse_metrics(features, labels, head.weight, head.bias) == expected


def test_float32_features_are_reduced_in_float64() -> None:
    features, labels, weight, bias = clustered_problem(200, 16, 4, seed=12)
    single = collapse_metrics(features.float(), labels, weight.float(), bias.float())
    exact = collapse_metrics(features.float().double(), labels, weight.float().double(), bias.float().double())
    for name in METRIC_NAMES:
        assert single[name] == pytest.approx(exact[name], rel=1e-12), name


def test_empty_class_is_named() -> None:
    features, _, weight, bias = clustered_problem(12, 4, 4, seed=13)
    labels = torch.tensor([0, 1, 3] * 4)
    with pytest.raises(ValueError, match="class 2 has no samples"):
        collapse_metrics(features, labels, weight, bias)


@pytest.mark.parametrize("bad_value", [float("nan"), float("inf")])
def test_non_finite_features_are_rejected(bad_value: float) -> None:
    features, labels, weight, bias = clustered_problem(12, 4, 3, seed=14)
    features[5, 2] = bad_value
    with pytest.raises(NonFiniteFeaturesError, match="non-finite"):
        collapse_metrics(features, labels, weight, bias)


@pytest.mark.parametrize("bad_label", [-1, 3])
def test_labels_out_of_range_are_rejected(bad_label: int) -> None:
    features, labels, weight, bias = clustered_problem(12, 4, 3, seed=15)
    labels[4] = bad_label
    with pytest.raises(ValueError, match=r"range\(3\)"):
        collapse_metrics(features, labels, weight, bias)


def test_num_classes_must_match_the_classifier() -> None:
    features, labels, weight, bias = clustered_problem(12, 4, 3, seed=16)
    assert collapse_metrics(features, labels, weight, bias, num_classes=3)["nc1"] > 0
    with pytest.raises(ValueError, match="num_classes=4"):
        collapse_metrics(features, labels, weight, bias, num_classes=4)


def test_all_features_equal_gives_nan_without_warnings() -> None:
    features = torch.full((9, 4), 1.5)
    labels = torch.tensor([0, 1, 2] * 3)
    weight = torch.randn(3, 4, generator=torch.Generator().manual_seed(17))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        metrics = collapse_metrics(features, labels, weight, None)
    for name in ("nc1", "nc1_pinv", "nc2", "nc2_equinorm", "nc3", "ncc", "angle_mean_deg", "angle_std_deg"):
        assert math.isnan(metrics[name]), name
    assert metrics["fn"] == pytest.approx(3.0)  # ‖(1.5, 1.5, 1.5, 1.5)‖
    assert math.isfinite(metrics["flatness"]) and math.isfinite(metrics["nc4"])


def test_fewer_dimensions_than_classes() -> None:
    features, labels, weight, bias = clustered_problem(70, 2, 7, seed=18)
    metrics = collapse_metrics(features, labels, weight, bias)
    assert all(math.isfinite(value) for value in metrics.values())
    # Σ_B has rank 2 = d, so Tr(Σ_W Σ_B⁺) is a full-space quantity here.
    reference = numpy_reference(features.numpy(), labels.numpy(), weight.numpy(), bias.numpy())
    assert metrics["nc1_pinv"] == pytest.approx(reference["nc1_pinv"], rel=1e-8)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu() -> None:
    features, labels, weight, bias = clustered_problem(3000, 32, 10, seed=19, dtype=torch.float32)
    on_cpu = collapse_metrics(features, labels, weight, bias)
    on_gpu = collapse_metrics(features.cuda(), labels.cuda(), weight.cuda(), bias.cuda())
    for name in METRIC_NAMES:
        assert on_gpu[name] == pytest.approx(on_cpu[name], rel=1e-9), name


def test_test_set_collapse_uses_the_test_labels_and_is_nan_without_a_class() -> None:
    from ncflow.engine.loop import test_collapse

    vertices = simplex_etf(num_classes=4, dim=6, seed=2)
    head = torch.nn.Linear(6, 4, dtype=torch.float64)
    labels = torch.arange(4).repeat(3)
    found = test_collapse(vertices[labels], labels, head, 4)
    assert list(found) == ["test/nc1", "test/nc2", "test/fn", "test/ncc"]
    assert abs(found["test/nc1"]) < 1e-10 and abs(found["test/nc2"]) < 1e-10 and found["test/fn"] == pytest.approx(1.0)
    missing = test_collapse(vertices[labels[labels < 3]], labels[labels < 3], head, 4)  # class 3 not in the test set
    assert all(math.isnan(value) for value in missing.values())
