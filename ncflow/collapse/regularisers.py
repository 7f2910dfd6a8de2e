"""Han et al.'s two regularisers, differentiable, on one batch's penultimate features: `loss = CE − λ·R`.

- `ncc_regulariser` (R = the batch's NCC): the mean over ordered pairs c ≠ c' of the classes present in the batch of
  (V_c + V_c') / (2 ‖μ_c − μ_c'‖²), V_c = (1/n_c) Σ_{i∈c} ‖h_i − μ_c‖² — Galanti's CDNV as the monitored `nc/ncc`
  defines it, averaged over pairs instead of summed (as Han et al.'s code does), so λ does not scale with K² or with
  how many classes a batch happens to hold. Subtracting it from the loss pushes class means together and spreads
  each class: it suppresses collapse.
- `flatness_regulariser` (R = the relative-flatness bound Han et al. regularise): the batch mean of
  ‖W‖²_F · Σ_k p_ik (1 − p_ik) · ‖h_i‖², p_i = softmax(W h_i + b) — the closed-form upper bound of the last layer's
  relative flatness κ_Tr (Walter et al.; Han et al., Lemma A.2). Subtracting it drives training towards sharp
  solutions. The exact κ (`nc/flatness`) and this bound (`nc/flatness_bound`) are both measured at evaluation.

Both are zero-safe: a batch with fewer than two classes gives R = 0 (no pair to compare).
"""

from __future__ import annotations

import torch

from ncshared.run_config import REGULARISERS


def ncc_regulariser(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The batch's mean pairwise class-distance-normalised variance (a 0-dim tensor with gradient).

    Computed over all K classes with the absent ones masked out, never by selecting the present ones: a boolean
    selection would wait for the device on every training step."""
    one_hot = torch.nn.functional.one_hot(labels, num_classes).to(features.dtype)  # B×K
    counts = one_hot.sum(0)
    present = counts > 0
    sizes = counts.clamp(min=1.0)
    means = (one_hot.T @ features) / sizes[:, None]  # K×d (zero for an absent class)
    deviations = features - one_hot @ means
    variances = (one_hot.T @ deviations.square().sum(1)) / sizes  # V_c
    distances = (means[:, None, :] - means[None, :, :]).square().sum(-1)  # K×K, exact differences
    eye = torch.eye(num_classes, dtype=torch.bool, device=features.device)
    pair = present[:, None] & present[None, :] & ~eye  # ordered pairs of present classes
    safe = torch.where(pair, distances, torch.ones_like(distances))  # no 0/0 even in the branch not taken
    terms = torch.where(pair, (variances[:, None] + variances[None, :]) / (2.0 * safe), torch.zeros_like(safe))
    return terms.sum() / pair.sum().clamp(min=1)  # 0 when fewer than two classes are present


def flatness_regulariser(features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """The batch mean of ‖W‖²_F · Σ_k p_k(1 − p_k) · ‖h‖² (a 0-dim tensor with gradient)."""
    logits = features @ weight.T
    if bias is not None:
        logits = logits + bias
    probabilities = torch.softmax(logits, dim=1)
    spread = (probabilities * (1.0 - probabilities)).sum(1)
    return weight.square().sum() * (spread * features.square().sum(1)).mean()


def regulariser_value(name: str, features: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor,
                      bias: torch.Tensor | None) -> torch.Tensor:
    """R for `name` in REGULARISERS (0 for "none")."""
    if name == "ncc":
        return ncc_regulariser(features, labels, weight.shape[0])
    if name == "flatness":
        return flatness_regulariser(features, weight, bias)
    if name == "none":
        return features.sum() * 0.0
    raise ValueError(f"regulariser: expected one of {', '.join(REGULARISERS)}, got {name!r}")
