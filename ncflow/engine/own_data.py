"""Your own data set as `--dataset PATH`: a `.npz` or `.pt` file, or an image folder, checked and read into tensors.

What is accepted (docs/data.md says the same for users):

- a `.npz` file (`numpy.savez(path, x_train=…, y_train=…, x_test=…, y_test=…)`, read without pickle) or a `.pt` file
  (`torch.save({"x_train": tensor, …}, path)`, read with `weights_only=True`: tensors only) holding four arrays:
  `x_train`, `x_test`: real numbers of any integer or float dtype (read as float32), all finite, shaped (N, d)
  features, (N, H, W) one-channel images or (N, C, H, W) images, the same after N in both; `y_train`, `y_test`: integer
  labels of any integer dtype, shaped (N,) like their x, in [0, K) with K = max(y_train) + 1 >= 2 and every class in
  `y_train`. Features (N, d) become d channels of 1×1, so that the per-channel normalisation every data set gets
  (`ncflow.engine.data`: the training set's mean and std) normalises each feature on its own.
- an image folder with `train/<class>/<image>` and `test/<class>/<image>` (torchvision's `ImageFolder`: classes are
  the folder names in sorted order, test/'s among train/'s), every image the same size; grayscale images stay one
  channel, every other mode is read as RGB.

Every problem is a one-line `OwnDataError` naming the file and what is wrong (a missing file or array, a label out of
range, a shape mismatch), raised before any MLflow run exists. `DataFile` says which data trained a run: its absolute
path, the sha256 of its bytes (a folder: of its images' relative paths and bytes) and its sizes. Torch is imported
only to read data, so the configuration's check of a path (`source_problem`) works without it.
"""

from __future__ import annotations

import hashlib
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch
    from torch import Tensor

ARRAYS = ("x_train", "y_train", "x_test", "y_test")
FILE_SUFFIXES = (".npz", ".pt")
SPLIT_FOLDERS = ("train", "test")
ACCEPTED = (f"a .npz or .pt file holding {', '.join(ARRAYS)}, or an image folder with "
            f"{' and '.join(folder + '/' for folder in SPLIT_FOLDERS)}")


class OwnDataError(ValueError):
    """Your data set cannot be used; the message is one line naming the file and what is wrong."""


@dataclass(frozen=True)
class DataFile:
    """Which data trained a run: a user's file or folder, as the run records it (docs/tracking.md)."""

    path: str  # absolute
    sha256: str  # 64 hex digits of the file's bytes (a folder: its images' relative paths and bytes, in order)
    sizes: str  # `1437 train / 360 test, 1x8x8, 10 classes`, as the file holds it


@dataclass(frozen=True)
class OwnData:
    """Your data set as tensors, before normalisation: images (N, C, H, W) float32, labels int64 in [0, K)."""

    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    num_classes: int
    file: DataFile


def looks_like_path(name: str) -> bool:
    """Whether `dataset` names a file or folder rather than one of ncflow's data sets."""
    return "/" in name or "\\" in name or name.endswith(FILE_SUFFIXES) or Path(name).expanduser().exists()


def source_problem(name: str) -> str | None:
    """What is wrong with `name` as a file or folder, without reading it (None: it may be one; `load` decides)."""
    path = Path(name).expanduser()
    if path.is_dir():
        missing = [folder for folder in SPLIT_FOLDERS if not (path / folder).is_dir()]
        lacks = " and no ".join(folder + "/" for folder in missing)
        return f"the folder {name!r} has no {lacks} ({ACCEPTED})" if missing else None
    if not path.exists():
        return f"no file or folder {name!r} ({ACCEPTED})"
    if path.suffix not in FILE_SUFFIXES:
        return f"{name!r} is not a .npz or .pt file ({ACCEPTED})"
    return None


def load(name: str) -> OwnData:
    """Read and check your data set `name` (a .npz or .pt file, or an image folder); OwnDataError when it cannot be
    used."""
    problem = source_problem(name)
    if problem is not None:
        raise OwnDataError(problem)
    path = Path(name).expanduser().resolve()
    if path.is_dir():
        arrays, digest = _folder_arrays(path, name)
    else:
        arrays, digest = _file_arrays(path, name), file_sha256(path)
    train_x, train_y, test_x, test_y, num_classes = _checked(arrays, name)
    shape = "x".join(str(size) for size in train_x.shape[1:])
    sizes = f"{len(train_y)} train / {len(test_y)} test, {shape}, {num_classes} classes"
    return OwnData(train_x, train_y, test_x, test_y, num_classes, DataFile(str(path), digest, sizes))


# --- reading ------------------------------------------------------------------------------------------------------


def _file_arrays(path: Path, name: str) -> dict[str, Any]:
    """The four arrays of a .npz or .pt file (as numpy arrays or tensors), each present."""
    import torch

    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                arrays: Mapping[str, Any] = {key: archive[key] for key in archive.files if key in ARRAYS}
                found = archive.files
        else:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(loaded, Mapping):
                raise OwnDataError(f"{name!r} holds a {type(loaded).__name__}, not a dict of {', '.join(ARRAYS)}")
            arrays, found = {key: loaded[key] for key in ARRAYS if key in loaded}, list(loaded)
    except OwnDataError:
        raise
    except (OSError, ValueError, RuntimeError, EOFError, zipfile.BadZipFile, AttributeError) as error:
        detail = (str(error).strip().splitlines() or [type(error).__name__])[0][:160]
        raise OwnDataError(f"{name!r} is not a readable {path.suffix} file ({detail})") from None
    missing = [key for key in ARRAYS if key not in arrays]
    if missing:
        has = ", ".join(map(str, found)) or "nothing"
        raise OwnDataError(f"{name!r} lacks {', '.join(missing)} (it has {has}; needed: {', '.join(ARRAYS)})")
    return dict(arrays)


def _folder_arrays(path: Path, name: str) -> tuple[dict[str, Any], str]:
    """The images and labels of train/ and test/ (torchvision's ImageFolder), and the folder's digest."""
    import torch
    from torchvision.datasets import ImageFolder

    splits = {}
    for folder in SPLIT_FOLDERS:
        try:
            splits[folder] = ImageFolder(str(path / folder), loader=_read_image)
        except (FileNotFoundError, OSError) as error:  # no class folder, or no image in one
            detail = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
            raise OwnDataError(f"{name!r}: {folder}/ is not an image folder of class folders ({detail})") from None
    train, test = splits["train"], splits["test"]
    unknown = sorted(set(test.classes) - set(train.classes))
    if unknown:
        raise OwnDataError(f"{name!r}: test/ has classes that train/ lacks: {', '.join(unknown)}")
    digest = hashlib.sha256()
    arrays: dict[str, Any] = {}
    for folder, dataset in splits.items():
        images, labels, first = [], [], None
        for file, label in dataset.samples:
            image = _read_image(file)
            first = first or (file, image.shape)
            if image.shape != first[1]:
                raise OwnDataError(
                    f"{name!r}: {Path(file).relative_to(path)} is {_shape(image.shape)}, "
                    f"{Path(first[0]).relative_to(path)} is {_shape(first[1])}; every image must be the same size")
            images.append(image)
            labels.append(train.class_to_idx[dataset.classes[label]])  # test/'s classes numbered as train/'s
            digest.update(str(Path(file).relative_to(path)).encode())
            digest.update(Path(file).read_bytes())
        arrays[f"x_{folder}"] = torch.stack(images)
        arrays[f"y_{folder}"] = torch.tensor(labels, dtype=torch.int64)
    return arrays, digest.hexdigest()


def _read_image(file: str) -> Tensor:
    """One image as a uint8 (C, H, W) tensor: grayscale as one channel, every other mode as RGB."""
    from PIL import Image
    from torchvision.transforms.functional import pil_to_tensor

    with Image.open(file) as image:
        return pil_to_tensor(image if image.mode == "L" else image.convert("RGB"))


def _shape(shape: tuple[int, ...] | torch.Size) -> str:
    return "x".join(str(size) for size in shape)


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --- checking -----------------------------------------------------------------------------------------------------


def _checked(arrays: Mapping[str, Any], name: str) -> tuple[Tensor, Tensor, Tensor, Tensor, int]:
    """The arrays as float32 images (N, C, H, W) and int64 labels, and K; OwnDataError for the first problem."""
    import torch

    xs = {key: _as_tensor(arrays[key], key, name) for key in ("x_train", "x_test")}
    ys = {key: _as_tensor(arrays[key], key, name) for key in ("y_train", "y_test")}
    for key, x in xs.items():
        if x.dtype.is_complex or x.dtype == torch.bool or not (x.dtype.is_floating_point or _is_integer(x)):
            raise OwnDataError(f"{name!r}: {key} must hold real numbers, got dtype {_dtype(x)}")
        if x.ndim not in (2, 3, 4) or x.shape[0] == 0:
            raise OwnDataError(f"{name!r}: {key} must be (N, d), (N, H, W) or (N, C, H, W) with N >= 1, "
                               f"got shape {tuple(x.shape)}")
        if x.dtype.is_floating_point and not bool(torch.isfinite(x).all()):
            raise OwnDataError(f"{name!r}: {key} holds non-finite values (nan or inf)")
    if xs["x_train"].shape[1:] != xs["x_test"].shape[1:]:
        raise OwnDataError(f"{name!r}: x_train samples are {tuple(xs['x_train'].shape[1:])}, x_test samples are "
                           f"{tuple(xs['x_test'].shape[1:])}; they must be the same")
    for key, y in ys.items():
        x_key = "x" + key[1:]
        if not _is_integer(y):
            raise OwnDataError(f"{name!r}: {key} must hold integer class labels, got dtype {_dtype(y)}")
        if y.ndim != 1 or y.shape[0] != xs[x_key].shape[0]:
            raise OwnDataError(f"{name!r}: {key} has shape {tuple(y.shape)}, expected ({xs[x_key].shape[0]},): "
                               f"one label per sample of {x_key}")
    train_y, test_y = ys["y_train"].to(torch.int64), ys["y_test"].to(torch.int64)
    num_classes = int(train_y.max()) + 1
    for key, y in (("y_train", train_y), ("y_test", test_y)):
        low, high = int(y.min()), int(y.max())
        if low < 0 or high >= num_classes:
            raise OwnDataError(f"{name!r}: {key} has labels from {low} to {high}; labels must be in [0, K) with "
                               f"K = max(y_train) + 1 = {num_classes}")
    if num_classes < 2:
        raise OwnDataError(f"{name!r}: y_train has one class; at least 2 are needed")
    absent = sorted(set(range(num_classes)) - set(train_y.unique().tolist()))
    if absent:
        shown = ", ".join(map(str, absent[:10])) + (", …" if len(absent) > 10 else "")
        raise OwnDataError(f"{name!r}: y_train has no sample of class {shown}; every class in [0, {num_classes}) "
                           "needs training samples")
    return _images(xs["x_train"]), train_y, _images(xs["x_test"]), test_y, num_classes


def _as_tensor(value: Any, key: str, name: str) -> Tensor:
    import torch

    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    array = np.asarray(value)
    if array.dtype.kind not in "biuf":  # bool, signed, unsigned, float: what torch holds
        raise OwnDataError(f"{name!r}: {key} must hold numbers, got dtype {array.dtype}")
    return torch.from_numpy(np.ascontiguousarray(array))


def _is_integer(tensor: Tensor) -> bool:
    import torch

    return not tensor.dtype.is_floating_point and not tensor.dtype.is_complex and tensor.dtype != torch.bool


def _dtype(tensor: Tensor) -> str:
    return str(tensor.dtype).removeprefix("torch.")


def _images(x: Tensor) -> Tensor:
    """(N, d) → (N, d, 1, 1); (N, H, W) → (N, 1, H, W); (N, C, H, W) as it is; float32, contiguous."""
    import torch

    if x.ndim == 2:
        x = x[:, :, None, None]
    elif x.ndim == 3:
        x = x[:, None]
    return x.to(torch.float32).contiguous()
