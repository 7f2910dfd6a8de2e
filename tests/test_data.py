"""Data sets as normalised in-memory tensors: sizes, splits, normalisation, torchvision layouts, batching."""

from __future__ import annotations

import socket
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

import ncflow.engine.data
from ncflow.engine.data import DATASETS, InMemoryData, batch_indices, load_dataset


def assert_normalised_per_channel(images: torch.Tensor) -> None:
    """Per-channel mean 0 and (population) std 1 over the whole tensor."""
    values = images.double().transpose(0, 1).reshape(images.shape[1], -1)
    zeros = torch.zeros(images.shape[1], dtype=torch.float64)
    torch.testing.assert_close(values.mean(dim=1), zeros, atol=1e-5, rtol=0)
    torch.testing.assert_close(values.std(dim=1, correction=0), zeros + 1, atol=1e-5, rtol=0)


# --- embedded data sets ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits() -> InMemoryData:
    return load_dataset("digits")


@pytest.fixture(scope="module")
def mnist_5k() -> InMemoryData:
    return load_dataset("mnist-5k")


def test_digits_is_a_stratified_80_20_split_of_1797_images(digits: InMemoryData) -> None:
    # 1,797 images, test_size 0.2 → ceil(359.4) = 360 test, 1,437 train.
    assert digits.train_x.shape == (1437, 1, 8, 8)
    assert digits.test_x.shape == (360, 1, 8, 8)
    assert digits.input_shape == (1, 8, 8)
    assert digits.num_classes == 10
    assert (digits.train_x.dtype, digits.train_y.dtype) == (torch.float32, torch.int64)
    # stratified: each class's test share is 20 % of its count, within one image
    train_counts, test_counts = torch.bincount(digits.train_y), torch.bincount(digits.test_y)
    assert ((test_counts - 0.2 * (train_counts + test_counts)).abs() < 1).all()
    assert_normalised_per_channel(digits.train_x)


def test_digits_split_is_the_same_every_load(digits: InMemoryData) -> None:
    again = load_dataset("digits")
    assert torch.equal(again.train_x, digits.train_x) and torch.equal(again.test_y, digits.test_y)


def test_mnist_5k_has_400_train_and_100_test_images_per_class(mnist_5k: InMemoryData) -> None:
    assert mnist_5k.train_x.shape == (4000, 1, 28, 28)
    assert mnist_5k.test_x.shape == (1000, 1, 28, 28)
    assert torch.bincount(mnist_5k.train_y).tolist() == [400] * 10
    assert torch.bincount(mnist_5k.test_y).tolist() == [100] * 10
    assert_normalised_per_channel(mnist_5k.train_x)
    # the test set uses the training statistics, so its mean is near 0 but not exactly 0
    assert abs(mnist_5k.test_x.mean().item()) < 0.05


def test_synthetic_mixture_is_deterministic_and_shaped_as_asked() -> None:
    first = load_dataset("synthetic", synthetic_classes=4, synthetic_shape=(3, 8, 8), synthetic_per_class=20)
    second = load_dataset("synthetic", synthetic_classes=4, synthetic_shape=(3, 8, 8), synthetic_per_class=20)
    for name in ("train_x", "train_y", "test_x", "test_y"):
        assert torch.equal(getattr(first, name), getattr(second, name))
    assert first.train_x.shape == (80, 3, 8, 8)  # 4 classes × 20
    assert first.test_x.shape == (20, 3, 8, 8)  # 4 classes × 20 // 4
    assert first.train_y.tolist() == [0] * 20 + [1] * 20 + [2] * 20 + [3] * 20
    assert first.num_classes == 4 and first.input_shape == (3, 8, 8)
    assert_normalised_per_channel(first.train_x)


def test_synthetic_defaults_give_10_classes_of_100_train_and_25_test() -> None:
    data = load_dataset("synthetic")
    assert data.train_x.shape == (1000, 1, 8, 8) and data.test_x.shape == (250, 1, 8, 8)
    assert torch.bincount(data.test_y).tolist() == [25] * 10


def test_to_moves_every_tensor_and_keeps_the_rest() -> None:
    data = load_dataset("synthetic", synthetic_classes=2, synthetic_per_class=4)
    moved = data.to("meta")
    assert {t.device.type for t in (moved.train_x, moved.train_y, moved.test_x, moved.test_y)} == {"meta"}
    assert (moved.name, moved.num_classes, moved.input_shape) == ("synthetic", 2, (1, 8, 8))


def test_unknown_dataset_names_the_option_and_the_allowed_values() -> None:
    with pytest.raises(ValueError) as error:
        load_dataset("imagenet")
    assert "dataset" in str(error.value) and "'imagenet'" in str(error.value)
    assert all(name in str(error.value) for name in DATASETS)


# --- torchvision data sets ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist", "cifar10"])
def test_missing_data_dir_without_download_fails_at_once_naming_the_files(name: str, tmp_path: Path) -> None:
    started = time.perf_counter()
    with pytest.raises(ncflow.engine.data.DataUnavailable) as error:
        load_dataset(name, tmp_path / "nowhere", download=False)
    assert time.perf_counter() - started < 1.0
    message = str(error.value)
    assert "data_dir" in message and str(tmp_path / "nowhere") in message
    expected_file = "t10k-images-idx3-ubyte" if name != "cifar10" else "data_batch_1"
    assert expected_file in message


@pytest.fixture
def unreachable_mirrors(monkeypatch: pytest.MonkeyPatch) -> None:
    """Point torchvision's downloads at a closed local port: the download fails at once, offline or not."""
    monkeypatch.setattr(torchvision.datasets.MNIST, "mirrors", ["http://127.0.0.1:9/"])
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "url", "http://127.0.0.1:9/cifar-10-python.tar.gz")


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_failed_download_becomes_one_clear_error(name: str, tmp_path: Path, unreachable_mirrors: None) -> None:
    with pytest.raises(RuntimeError) as error:
        load_dataset(name, tmp_path, download=True)
    message = str(error.value)
    assert "download failed" in message and "data_dir" in message and "Expected layout" in message


def test_download_from_a_silent_server_times_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A listening socket that never answers: without a socket timeout urllib would wait forever.
    with socket.socket() as silent_server:
        silent_server.bind(("127.0.0.1", 0))
        silent_server.listen(8)
        port = silent_server.getsockname()[1]
        monkeypatch.setattr(torchvision.datasets.MNIST, "mirrors", [f"http://127.0.0.1:{port}/"])
        monkeypatch.setattr(ncflow.engine.data, "DOWNLOAD_TIMEOUT_S", 0.3)
        started = time.perf_counter()
        with pytest.raises(RuntimeError, match="download failed"):
            load_dataset("mnist", tmp_path, download=True)
    assert time.perf_counter() - started < 5.0
    assert socket.getdefaulttimeout() is None  # restored


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array in the IDX format of the MNIST files: magic 0x0000_08_<ndim>, big-endian sizes, bytes."""
    header = struct.pack(">I", 0x0800 + array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_tiny_mnist(raw_folder: Path, train_count: int = 20, test_count: int = 10) -> dict[str, np.ndarray]:
    """A tiny MNIST in torchvision's raw layout; returns the arrays written."""
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (train_count, 28, 28)),
        "train-labels-idx1-ubyte": np.arange(train_count) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (test_count, 28, 28)),
        "t10k-labels-idx1-ubyte": (np.arange(test_count) * 3) % 10,
    }
    raw_folder.mkdir(parents=True)
    for file_name, array in arrays.items():
        write_idx(raw_folder / file_name, array)
    return arrays


@pytest.mark.parametrize(("name", "folder"), [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
def test_mnist_layout_loads_through_torchvision(name: str, folder: str, tmp_path: Path) -> None:
    arrays = write_tiny_mnist(tmp_path / folder / "raw")
    data = load_dataset(name, tmp_path, download=False)
    assert data.train_x.shape == (20, 1, 28, 28) and data.test_x.shape == (10, 1, 28, 28)
    assert data.train_y.tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    assert data.test_y.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()
    assert data.num_classes == 10 and data.train_y.dtype == torch.int64
    assert_normalised_per_channel(data.train_x)
    train_pixels = arrays["train-images-idx3-ubyte"].astype(np.float64)
    expected_test = (arrays["t10k-images-idx3-ubyte"] - train_pixels.mean()) / train_pixels.std()
    np.testing.assert_allclose(data.test_x[:, 0].numpy(), expected_test, atol=1e-5)


# CIFAR-10's python-pickle layout is not tested with generated files: torchvision's CIFAR10 checks the md5 of every
# batch file, so only the real files load. Its missing-file and failed-download errors are tested above.


# --- batching ----------------------------------------------------------------------------------------------------


def test_batch_indices_cover_every_index_once_and_keep_the_last_partial_batch() -> None:
    batches = batch_indices(23, 5, torch.Generator().manual_seed(0))
    assert [len(batch) for batch in batches] == [5, 5, 5, 5, 3]
    assert torch.cat(batches).sort().values.tolist() == list(range(23))
    assert batches[0].dtype == torch.int64


def test_batch_indices_follow_the_generator() -> None:
    first = batch_indices(10, 4, torch.Generator().manual_seed(1))
    second = batch_indices(10, 4, torch.Generator().manual_seed(1))
    other = batch_indices(10, 4, torch.Generator().manual_seed(2))
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert not torch.equal(torch.cat(first), torch.cat(other))


def test_batch_indices_reject_an_empty_batch() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        batch_indices(10, 0, torch.Generator())
