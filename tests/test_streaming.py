"""Streaming statistics (ncflow.collapse.statistics) equal the in-memory path for any chunking, class order,
imbalance and classes absent from a chunk; their large-K forms equal the small-K ones; bad batches are named."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ncflow.collapse import class_pairs, statistics
from ncflow.collapse.metrics import METRIC_NAMES, collapse_metrics
from ncflow.collapse.statistics import CollapseStatistics, NonFiniteFeaturesError


def clustered(num_classes: int, dim: int, counts: list[int], spread: float, seed: int) -> tuple[torch.Tensor, ...]:
    """Features around separated class centres with a common offset, labels, and a random classifier."""
    generator = torch.Generator().manual_seed(seed)
    centres = 3.0 * torch.randn(num_classes, dim, generator=generator, dtype=torch.float64)
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    labels = labels[torch.randperm(len(labels), generator=generator)]
    features = centres[labels] + spread * torch.randn(len(labels), dim, generator=generator, dtype=torch.float64) + 7.0
    weight = torch.randn(num_classes, dim, generator=generator, dtype=torch.float64)
    bias = torch.randn(num_classes, generator=generator, dtype=torch.float64)
    return features, labels, weight, bias


def streamed(features, labels, weight, bias, batch_sizes, order=None, passes=2, minority=None) -> dict[str, float]:
    """Feed the samples in batches of the given sizes (cycled), in `order` for the second pass."""
    stats = CollapseStatistics(weight.shape[0], weight, bias, minority_classes=minority, passes=passes)
    for rows in batches(len(labels), batch_sizes):
        stats.update(features[rows], labels[rows])
    if passes == 2:
        stats.start_second_pass()
        index = torch.arange(len(labels)) if order is None else order
        for rows in batches(len(labels), batch_sizes[::-1]):
            stats.update(features[index[rows]], labels[index[rows]])
    return stats.compute()


def batches(total: int, sizes: list[int]) -> list[slice]:
    out, start, turn = [], 0, 0
    while start < total:
        size = sizes[turn % len(sizes)]
        out.append(slice(start, min(start + size, total)))
        start, turn = start + size, turn + 1
    return out


def assert_close(found: dict[str, float], expected: dict[str, float], names, rel: float = 1e-9) -> None:
    for name in names:
        assert found[name] == pytest.approx(expected[name], rel=rel, abs=1e-300), name


@pytest.mark.parametrize("sizes", [[1], [7], [3, 50, 1, 200], [10_000]])
def test_any_chunking_equals_the_in_memory_path(sizes):
    features, labels, weight, bias = clustered(6, 9, [40, 3, 120, 17, 1, 60], spread=0.3, seed=1)
    expected = collapse_metrics(features, labels, weight, bias)
    found = streamed(features, labels, weight, bias, sizes, order=torch.randperm(len(labels)))
    assert_close(found, expected, METRIC_NAMES)


def test_class_order_and_classes_missing_from_batches():
    """Samples sorted by class: most batches hold one class, every other class is absent from them."""
    features, labels, weight, bias = clustered(5, 4, [30, 5, 50, 2, 13], spread=0.05, seed=2)
    order = torch.argsort(labels, stable=True)
    expected = collapse_metrics(features, labels, weight, bias)
    found = streamed(features[order], labels[order], weight, bias, [8])
    assert_close(found, expected, METRIC_NAMES)
    relabel = torch.tensor([3, 0, 4, 1, 2])  # the same data with the classes renamed
    renamed = streamed(features, relabel[labels], weight[torch.argsort(relabel)], bias[torch.argsort(relabel)], [16])
    assert_close(renamed, expected, METRIC_NAMES)


def test_float32_features_and_minority_classes():
    features, labels, weight, bias = clustered(4, 6, [100, 100, 5, 5], spread=0.5, seed=3)
    features = features.float()
    expected = collapse_metrics(features, labels, weight, bias, minority_classes=[2, 3])
    found = streamed(features, labels, weight, bias, [33], minority=[2, 3])
    assert_close(found, expected, [*METRIC_NAMES, "minority_collapse", "minority_mean_collapse"])


def test_one_pass_gives_every_metric_but_the_two_that_need_final_means():
    features, labels, weight, bias = clustered(5, 7, [20, 30, 40, 50, 60], spread=0.4, seed=4)
    expected = collapse_metrics(features, labels, weight, bias)
    found = streamed(features, labels, weight, bias, [11], passes=1)
    assert set(found) == (set(METRIC_NAMES) - {"nc4", "nc1_pinv"}) | {"flatness_bound"}
    assert_close(found, expected, set(found) - {"flatness_bound"})


def test_predictions_are_the_classifiers_accuracy_and_cross_entropy():
    features, labels, weight, bias = clustered(3, 5, [10, 20, 30], spread=1.0, seed=5)
    stats = CollapseStatistics(3, weight, bias, passes=1)
    for rows in batches(len(labels), [7]):
        stats.update(features[rows], labels[rows])
    logits = features @ weight.T + bias
    found = stats.predictions()
    assert found["accuracy"] == pytest.approx((logits.argmax(1) == labels).double().mean().item(), rel=1e-12)
    assert found["loss"] == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-12)


def test_flatness_bound_is_hans_closed_form_and_bounds_the_exact_value():
    features, labels, weight, bias = clustered(4, 5, [30, 30, 30, 30], spread=0.7, seed=8)
    found = streamed(features, labels, weight, bias, [17])
    probabilities = torch.softmax(features @ weight.T + bias, dim=1)
    bound = (weight ** 2).sum() * ((probabilities * (1 - probabilities)).sum(1) * (features ** 2).sum(1)).mean()
    assert found["flatness_bound"] == pytest.approx(bound.item(), rel=1e-12)
    assert found["flatness"] <= found["flatness_bound"]


def test_simplex_etf_has_zero_nc1_nc2_nc3_through_the_stream():
    num_classes = 4
    etf = torch.eye(num_classes, dtype=torch.float64) - 1.0 / num_classes
    labels = torch.arange(num_classes).repeat(5)
    found = streamed(etf[labels], labels, etf, None, [3])
    assert found["nc1"] == 0.0 and found["nc1_pinv"] == 0.0 and found["nc4"] == 0.0
    assert abs(found["nc2"]) < 1e-12 and abs(found["nc3"]) < 1e-12 and found["angle_std_deg"] < 1e-5


def test_many_class_forms_equal_the_small_class_forms(monkeypatch):
    """The gather form of x − μ_y, the anchored form of flatness and tiled class pairs, forced at small K."""
    features, labels, weight, bias = clustered(12, 5, [9] * 12, spread=0.8, seed=6)
    expected = streamed(features, labels, weight, bias, [25])
    monkeypatch.setattr(statistics, "_ONE_HOT_MAX_CLASSES", 2)
    monkeypatch.setattr(statistics, "PAIRWISE_FLATNESS_MAX_CLASSES", 2)
    monkeypatch.setattr(class_pairs, "_TILE_ELEMENTS", 30)  # blocks of 2 rows of 12 classes
    found = streamed(features, labels, weight, bias, [25])
    assert_close(found, expected, METRIC_NAMES)


def test_nearly_one_hot_predictions_keep_flatness_accurate(monkeypatch):
    """Logits far apart: Var_p(w) is ~1e-55; both forms agree to 1e-9 where E‖w‖² − ‖Ew‖² gives exactly 0."""
    features, labels, _, _ = clustered(5, 3, [20] * 5, spread=0.01, seed=7)
    means = torch.stack([features[labels == c].mean(0) for c in range(5)])
    weight = 100.0 * (means - means.mean(0))
    pairwise = streamed(features, labels, weight, None, [13])["flatness"]
    monkeypatch.setattr(statistics, "PAIRWISE_FLATNESS_MAX_CLASSES", 2)
    anchored = streamed(features, labels, weight, None, [13])["flatness"]
    probabilities = torch.softmax(features @ weight.T, dim=1)
    naive = (probabilities * (weight * weight).sum(1)).sum(1) - ((probabilities @ weight) ** 2).sum(1)
    assert bool((naive <= 0).all()) and 0.0 < pairwise < 1e-50
    assert anchored == pytest.approx(pairwise, rel=1e-9)


def test_coinciding_class_means_make_ncc_infinite_through_tiles(monkeypatch):
    monkeypatch.setattr(class_pairs, "_TILE_ELEMENTS", 3)
    features = torch.tensor([[0.0, 0.0], [2.0, 0.0], [1.0, 1.0], [1.0, -1.0], [5.0, 5.0], [5.0, 6.0]])
    labels = torch.tensor([0, 0, 1, 1, 2, 2])  # classes 0 and 1 share the mean (1, 0)
    stats = CollapseStatistics(3, passes=1)
    stats.update(features, labels)
    assert math.isinf(stats.compute()["ncc"])


def test_bad_batches_are_named_when_computing():
    weight = torch.randn(3, 2)
    stats = CollapseStatistics(3, weight, passes=1)
    stats.update(torch.randn(4, 2), torch.tensor([0, 1, 2, 0]))
    stats.update(torch.randn(4, 2), torch.tensor([0, 1, 5, 0]))
    with pytest.raises(ValueError, match=r"range\(3\); batch 1 has label 5"):
        stats.compute()
    stats = CollapseStatistics(3, weight, passes=1)
    stats.update(torch.randn(4, 2), torch.tensor([0, 1, 2, 0]))
    stats.update(torch.randn(4, 2), torch.tensor([0, 1, 2, 0]))
    bad = torch.randn(4, 2)
    bad[2, 1] = math.nan
    stats.update(bad, torch.tensor([0, 1, 2, 0]))
    with pytest.raises(NonFiniteFeaturesError, match="first in batch 2"):
        stats.compute()


def test_passes_are_checked():
    stats = CollapseStatistics(2, torch.randn(2, 3))
    stats.update(torch.randn(6, 3), torch.tensor([0, 1] * 3))
    with pytest.raises(ValueError, match="second pass has not been made"):
        stats.compute()
    stats.start_second_pass()
    stats.update(torch.randn(4, 3), torch.tensor([0, 1] * 2))
    with pytest.raises(ValueError, match="different samples"):
        stats.compute()
    with pytest.raises(ValueError, match="class 1 has no samples"):
        one_class = CollapseStatistics(2, passes=1)
        one_class.update(torch.randn(3, 2), torch.tensor([0, 0, 0]))
        one_class.compute()
    with pytest.raises(ValueError, match="weight: expected a 3×d"):
        CollapseStatistics(3, torch.randn(2, 4))
