"""The data every example trains on: scikit-learn's 8×8 digits (1,797 images, 10 classes, shipped with
scikit-learn — nothing is downloaded), split 80/20 with a fixed seed and scaled to [0, 1]."""

from __future__ import annotations

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, TensorDataset

NUM_CLASSES = 10


def digits_tensors() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_train, y_train, x_test, y_test): images as N×1×8×8 float32 in [0, 1], labels int64."""
    images, labels = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(images, labels, test_size=0.2, random_state=0,
                                                        stratify=labels)
    return _images(x_train), torch.tensor(y_train), _images(x_test), torch.tensor(y_test)


def _images(pixels) -> torch.Tensor:
    return torch.tensor(pixels, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0


def digits_loaders(batch_size: int = 128, seed: int = 0) -> tuple[DataLoader, DataLoader, DataLoader]:
    """(shuffled training loader, training loader in order for measuring, test loader)."""
    x_train, y_train, x_test, y_test = digits_tensors()
    train = TensorDataset(x_train, y_train)
    shuffled = DataLoader(train, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed))
    return (shuffled, DataLoader(train, batch_size=512),
            DataLoader(TensorDataset(x_test, y_test), batch_size=512))
