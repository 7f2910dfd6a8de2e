"""Class imbalance: a seeded per-class subsample of the training set with n_max / n_min = ρ.

Profiles (K classes, n_max = the smallest class's size in the full training set, so every class can supply it):
- step: the first K − ⌊K/2⌋ classes keep n_max samples, the last ⌊K/2⌋ (the minority) round(n_max / ρ);
- exp:  n_c = round(n_max ρ^(−c/(K−1))), c = 0 … K−1 (class 0 n_max, class K−1 n_max / ρ).
The minority classes are the ⌊K/2⌋ with the fewest samples — the last ⌊K/2⌋ in both profiles. The test set stays
balanced, and the normalisation statistics stay those of the full training set (the subsample changes which
images are trained on, not how an image is scaled).
"""

from __future__ import annotations

import dataclasses

import torch

from ncflow.engine.config import ConfigError
from ncflow.engine.data import InMemoryData


def class_counts(available: list[int], ratio: float, profile: str) -> list[int]:
    """Training samples per class for imbalance ratio `ratio` (≥ 1) and `profile` (step | exp).

    Raises ConfigError naming imbalance_ratio when n_min = n_max / ρ would be below one sample.
    """
    classes, n_max = len(available), min(available)
    if ratio == 1:
        return list(available)  # balanced: the training set as it is
    if ratio > n_max:
        raise ConfigError(f"imbalance_ratio: {ratio:g} leaves the minority classes under one training sample "
                          f"(n_max = {n_max}, the smallest class); expected at most {n_max}")
    if profile == "step":
        minority = classes // 2
        counts = [n_max] * (classes - minority) + [round(n_max / ratio)] * minority
    else:
        counts = [round(n_max * ratio ** (-c / (classes - 1))) for c in range(classes)]
    return counts


def minority_classes(num_classes: int) -> list[int]:
    """The ⌊K/2⌋ classes with the fewest samples under either profile: the last ones."""
    return list(range(num_classes - num_classes // 2, num_classes))


def subsample(data: InMemoryData, ratio: float, profile: str, seed: int) -> tuple[InMemoryData, list[int]]:
    """The data with its training set cut to `class_counts` (the first samples of a seeded permutation of each
    class, kept in their original order), and the counts. Balanced (ρ = 1): the data unchanged."""
    labels = data.train_y.cpu()
    available = torch.bincount(labels, minlength=data.num_classes).tolist()
    counts = class_counts(available, ratio, profile)
    if ratio == 1:
        return data, counts
    generator = torch.Generator().manual_seed(seed)
    kept = []
    for label, count in enumerate(counts):
        members = torch.nonzero(labels == label).flatten()
        kept.append(members[torch.randperm(len(members), generator=generator)[:count]])
    index = torch.cat(kept).sort().values.to(data.train_y.device)
    return dataclasses.replace(data, train_x=data.train_x[index], train_y=data.train_y[index]), counts
