"""The metrics built from pairs of classes (NC2, the class-mean angles, NCC), tiled over blocks of classes.

A K×K matrix of class pairs is never held: rows of classes are taken a block at a time (`_TILE_ELEMENTS` pair
entries per block), so K = 32,000 classes need a few tens of MB beyond the K×d class means. Each block's pairs are
reduced to float64 sums (and, for the angles, a count, mean and sum of squared deviations merged with Chan et al.'s
update, so the population std stays exact to rounding however many blocks there are).

Squared distances between class means (NCC's denominators) come from the Gram form ‖a‖² + ‖b‖² − 2a·b of the
centred means, which is one matrix product per block; a pair whose distance is small next to the means' norms (where
that form loses digits) is recomputed from the exact difference a − b.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

_TILE_ELEMENTS = 1 << 22  # pair entries per block of rows: 32 MiB of float64
_EXACT_BELOW = 1e-6  # a pair with ‖a − b‖² < this × (‖a‖² + ‖b‖²) gets its distance from the exact difference


@dataclass(frozen=True)
class ClassPairTerms:
    """The pairwise reductions, as 0-dim float64 tensors."""

    nc2: torch.Tensor  # mean over ordered pairs i ≠ j of |cos(m_i, m_j) + 1/(K−1)|
    angle_mean_deg: torch.Tensor  # mean angle ∠(m_i, m_j) over pairs i < j, in degrees
    angle_std_deg: torch.Tensor  # its population std
    ncc: torch.Tensor  # Σ_{c≠c'} (V_c + V_c') / (2 ‖μ_c − μ_c'‖²)


def class_pair_terms(centred_means: torch.Tensor, class_variances: torch.Tensor) -> ClassPairTerms:
    """NC2, the angle mean and std and NCC of the centred class means m_c (K×d, float64) and the class variances V_c.

    A zero mean makes its cosines (and so NC2 and the angles) nan; two equal means make NCC inf (nan when both
    classes have zero spread), as the definitions say.
    """
    num_classes = centred_means.shape[0]
    norms_squared = (centred_means * centred_means).sum(1)
    unit = centred_means / norms_squared.sqrt()[:, None]
    nc2_sum = torch.zeros((), dtype=torch.float64, device=centred_means.device)
    ncc_sum = torch.zeros_like(nc2_sum)
    angles = _RunningMoments.empty(centred_means.device)
    block = max(1, _TILE_ELEMENTS // num_classes)
    for start in range(0, num_classes, block):
        rows = slice(start, min(start + block, num_classes))
        index = torch.arange(rows.start, rows.stop, device=centred_means.device)
        columns = torch.arange(num_classes, device=centred_means.device)
        off_diagonal = index[:, None] != columns[None, :]
        cosines = unit[rows] @ unit.T
        nc2_sum += (cosines + 1.0 / (num_classes - 1)).abs()[off_diagonal].sum()
        upper = index[:, None] < columns[None, :]
        angles.merge(torch.rad2deg(torch.arccos(cosines[upper].clamp(-1.0, 1.0))))
        distances = _squared_distances(centred_means, norms_squared, rows)
        pair_variances = class_variances[rows, None] + class_variances[None, :]
        ncc_sum += (pair_variances[off_diagonal] / (2.0 * distances[off_diagonal])).sum()
    nc2 = nc2_sum / (num_classes * (num_classes - 1))
    return ClassPairTerms(nc2, angles.mean, angles.population_std(), ncc_sum)


def pair_angles(centred_means: torch.Tensor) -> torch.Tensor:
    """∠(m_i, m_j) in degrees for every pair i < j, row-major: K(K−1)/2 values, so only for moderate K."""
    num_classes = centred_means.shape[0]
    unit = centred_means / centred_means.norm(dim=1, keepdim=True)
    upper = torch.triu_indices(num_classes, num_classes, offset=1, device=unit.device)
    cosines = (unit @ unit.T)[upper[0], upper[1]].clamp(-1.0, 1.0)
    return torch.rad2deg(torch.arccos(cosines))


def _squared_distances(means: torch.Tensor, norms_squared: torch.Tensor, rows: slice) -> torch.Tensor:
    """‖m_i − m_j‖² for the block's rows i and every j; exact differences where the Gram form would lose digits."""
    scale = norms_squared[rows, None] + norms_squared[None, :]
    distances = (scale - 2.0 * (means[rows] @ means.T)).clamp_min_(0.0)
    close = (distances < _EXACT_BELOW * scale).nonzero()
    if close.numel():  # (an edge case: a handful of pairs, or every pair when all means coincide)
        for pairs in close.split(max(1, _TILE_ELEMENTS // means.shape[1])):
            left, right = pairs[:, 0] + rows.start, pairs[:, 1]
            difference = means[left] - means[right]
            distances[pairs[:, 0], pairs[:, 1]] = (difference * difference).sum(1)
    return distances


@dataclass
class _RunningMoments:
    """Count, mean and sum of squared deviations of a stream of values, merged block by block (Chan et al.)."""

    count: torch.Tensor
    mean: torch.Tensor
    squared_deviations: torch.Tensor

    @classmethod
    def empty(cls, device: torch.device) -> _RunningMoments:
        zero = torch.zeros((), dtype=torch.float64, device=device)
        return cls(zero.clone(), zero.clone(), zero.clone())

    def merge(self, values: torch.Tensor) -> None:
        if values.numel() == 0:
            return
        count = torch.tensor(float(values.numel()), dtype=torch.float64, device=values.device)
        mean = values.mean()
        squared_deviations = ((values - mean) ** 2).sum()
        total = self.count + count
        delta = mean - self.mean
        self.mean = self.mean + delta * count / total
        self.squared_deviations = self.squared_deviations + squared_deviations + delta * delta * self.count * count / total
        self.count = total

    def population_std(self) -> torch.Tensor:
        return (self.squared_deviations / self.count).sqrt()
