"""The modular-arithmetic task: every equation `a ∘ b = c (mod p)` of one operation, as tokens `[a, ∘, b, =]` with
answer class c ∈ [0, p), split into training and validation sets by a seeded permutation.

Tokens: 0 … p−1 are the numbers, p + i is operation i of OPERATIONS, p + len(OPERATIONS) is `=`. Every pair (a, b)
with a, b ∈ [0, p) is one sample, except b = 0 for division (÷ is a · b^(p−2), the inverse modulo the prime p).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ncflow.grokking.config import OPERATIONS, is_prime

SYMBOLS = {"add": "+", "subtract": "−", "multiply": "×", "divide": "÷", "squares": "x²+y²"}
SEQUENCE_LENGTH = 4


def vocabulary_size(p: int) -> int:
    return p + len(OPERATIONS) + 1


@dataclass(frozen=True)
class ModularTask:
    """Training and validation equations as tensors: inputs N×4 token ids, labels N answers."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    p: int
    operation: str


def answers(a: torch.Tensor, b: torch.Tensor, p: int, operation: str) -> torch.Tensor:
    """c = a ∘ b mod p, elementwise."""
    if operation == "add":
        return (a + b) % p
    if operation == "subtract":
        return (a - b) % p
    if operation == "multiply":
        return (a * b) % p
    if operation == "divide":
        inverse = torch.tensor([pow(int(v), p - 2, p) for v in range(p)])
        return (a * inverse[b]) % p
    if operation == "squares":
        return (a * a + b * b) % p
    raise ValueError(f"operation: expected one of {', '.join(OPERATIONS)}, got {operation!r}")


def modular_task(p: int, operation: str, train_fraction: float, seed: int) -> ModularTask:
    """All equations of `operation` mod p, `train_fraction` of them (rounded, at least one each side) for training."""
    if not is_prime(p):
        raise ValueError(f"p: expected a prime, got {p}")
    a, b = torch.cartesian_prod(torch.arange(p), torch.arange(p)).T
    if operation == "divide":
        a, b = a[b != 0], b[b != 0]
    labels = answers(a, b, p, operation)
    tokens = torch.stack([a, torch.full_like(a, p + OPERATIONS.index(operation)), b,
                          torch.full_like(a, p + len(OPERATIONS))], dim=1)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    n_train = min(max(1, round(train_fraction * len(labels))), len(labels) - 1)
    train, val = order[:n_train], order[n_train:]
    return ModularTask(tokens[train], labels[train], tokens[val], labels[val], p, operation)
