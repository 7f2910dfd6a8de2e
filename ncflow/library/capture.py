"""Reading features out of any PyTorch model: hooks on named modules, and batches split into inputs and labels.

`FeatureTap` registers, for the duration of a `with` block, a forward *pre*-hook on the classifier (its input is the
penultimate feature; its `weight` and `bias` are W and b) and forward hooks on any other named modules (their
outputs, for layer-wise collapse). Each hook keeps only a reference to the current batch's tensor, which
`take` hands over and forgets, so no feature outlives its batch. Leaving the block removes the hooks.

How a captured tensor becomes an N×d feature matrix for labels of shape L (`as_rows`):
- B×d: as is (labels B).
- B×…×d with labels of shape B×… (a label per token): flattened, tokens whose label is `IGNORE_INDEX` (−100, the
  Hugging Face convention) dropped.
- B×T×d with labels B (a sequence classified by its last position, as a causal model does): the last position.
- B×C×H×W (a convolutional output, for layers): average-pooled to `POOL`×`POOL` and flattened — what
  `ncflow train --layerwise` does to ResNet-20's stages.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Self

import torch
import torch.nn.functional as F
from torch import nn

IGNORE_INDEX = -100  # a token label that is not a target (Hugging Face's and torch's cross-entropy default)
POOL = 2  # convolutional outputs are pooled to POOL × POOL before flattening (as --layerwise does)

Unpack = Callable[[Any], tuple[Any, torch.Tensor]]  # a batch → (the model's input, the labels)


class MonitorInputError(ValueError):
    """Input the monitor cannot use: a wrong module name, classifier, loader or batch (a one-line message)."""


def find_module(model: nn.Module, name: str, parameter: str) -> nn.Module:
    """The submodule called `name`; the error names the closest existing names."""
    modules = dict(model.named_modules())
    if name in modules and name != "":
        return modules[name]
    close = difflib.get_close_matches(name, [n for n in modules if n], n=3, cutoff=0.4)
    hint = f"closest: {', '.join(close)}" if close else f"the model has {', '.join(list(modules)[1:6]) or 'none'}"
    raise MonitorInputError(f"{parameter}: no module named {name!r} in {type(model).__name__} ({hint})")


def linear_classifier(model: nn.Module, name: str, num_classes: int) -> nn.Linear:
    """The classifier module, which must be an nn.Linear with `num_classes` outputs (its W and b are needed)."""
    module = find_module(model, name, "classifier")
    if not isinstance(module, nn.Linear):
        raise MonitorInputError(f"classifier: {name!r} is a {type(module).__name__}, not an nn.Linear "
                                "(NC3, NC4 and flatness need its weight and bias)")
    if module.out_features != num_classes:
        raise MonitorInputError(f"num_classes: {num_classes}, but the classifier {name!r} has "
                                f"{module.out_features} outputs")
    return module


class FeatureTap:
    """Hooks that capture the classifier's input and the named layers' outputs while the `with` block lasts."""

    def __init__(self, model: nn.Module, classifier: str | None, layers: Sequence[str] = ()) -> None:
        self.model, self.classifier, self.layers = model, classifier, tuple(layers)
        self._modules = {name: find_module(model, name, "layers") for name in self.layers}
        if classifier is not None:
            self._classifier = find_module(model, classifier, "classifier")
        self._captured: dict[str, torch.Tensor] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> Self:
        if self.classifier is not None:
            self._handles.append(self._classifier.register_forward_pre_hook(self._keep_input(self.classifier)))
        for name, module in self._modules.items():
            self._handles.append(module.register_forward_hook(self._keep_output(name)))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._captured.clear()

    def take(self, name: str) -> torch.Tensor:
        """The tensor captured for `name` during the last forward pass; forgotten once taken."""
        try:
            return self._captured.pop(name)
        except KeyError:
            raise MonitorInputError(f"{name!r} was not called in the model's forward pass, so it gave no "
                                    "features") from None

    def _keep_input(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            self._captured[name] = args[0].detach()
        return hook

    def _keep_output(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            tensor = output[0] if isinstance(output, (tuple, list)) else output
            if not isinstance(tensor, torch.Tensor):
                raise MonitorInputError(f"layers: {name!r} returned a {type(tensor).__name__}, not a tensor")
            self._captured[name] = tensor.detach()
        return hook


def as_rows(features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N×d features, N labels) from a captured tensor and its batch's labels (rules in the module docstring)."""
    if features.ndim < 2 or labels.ndim < 1 or labels.shape[0] != features.shape[0]:
        raise MonitorInputError(f"features of shape {tuple(features.shape)} do not match labels of shape "
                                f"{tuple(labels.shape)} (see ncflow.library.capture for the shapes understood)")
    if features.ndim == 2 and labels.ndim == 1:
        return features, labels
    if features.ndim >= 3 and labels.shape == features.shape[:-1]:
        rows, flat_labels = features.reshape(-1, features.shape[-1]), labels.reshape(-1)
        keep = flat_labels != IGNORE_INDEX
        return rows[keep], flat_labels[keep]
    if features.ndim == 3 and labels.ndim == 1:
        return features[:, -1], labels
    if features.ndim == 4 and labels.ndim == 1:
        return F.adaptive_avg_pool2d(features, POOL).flatten(1), labels
    raise MonitorInputError(f"features of shape {tuple(features.shape)} do not match labels of shape "
                            f"{tuple(labels.shape)} (see ncflow.library.capture for the shapes understood)")


def default_unpack(batch: Any) -> tuple[Any, torch.Tensor]:
    """(inputs, labels) of a batch: `(x, y, ...)` or a mapping with `labels` (or `label`), whose other entries are
    the model's keyword inputs."""
    if isinstance(batch, Mapping):
        key = "labels" if "labels" in batch else "label" if "label" in batch else None
        if key is None:
            raise MonitorInputError(f"loader: a batch mapping has no 'labels' (keys: {', '.join(map(str, batch))})")
        return {k: v for k, v in batch.items() if k != key}, batch[key]
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[0], batch[1]
    raise MonitorInputError(f"loader: a batch must be (inputs, labels, ...) or a mapping with 'labels'; got "
                            f"{type(batch).__name__}" + (" of length 1" if isinstance(batch, (tuple, list)) else ""))


def call_model(model: nn.Module, inputs: Any, device: torch.device) -> None:
    """Run the model on `inputs` (a tensor, a tuple of positional inputs, or a mapping of keyword inputs)."""
    if isinstance(inputs, Mapping):
        model(**{k: to_device(v, device) for k, v in inputs.items()})
    elif isinstance(inputs, tuple):
        model(*(to_device(v, device) for v in inputs))
    else:
        model(to_device(inputs, device))


def to_device(value: Any, device: torch.device) -> Any:
    return value.to(device, non_blocking=True) if isinstance(value, torch.Tensor) else value


def labels_tensor(labels: Any, device: torch.device) -> torch.Tensor:
    """The batch's labels as an integer tensor on `device`."""
    if not isinstance(labels, torch.Tensor):
        try:
            labels = torch.as_tensor(labels)
        except (TypeError, ValueError, RuntimeError):
            raise MonitorInputError(f"loader: labels must be integer tensors, got {type(labels).__name__}") from None
    if labels.is_floating_point() or labels.dtype == torch.bool or labels.is_complex():
        raise MonitorInputError(f"loader: labels must be integers, got {labels.dtype}")
    return labels.to(device, non_blocking=True)


def model_device(model: nn.Module) -> torch.device:
    for tensor in _tensors(model):
        return tensor.device
    return torch.device("cpu")


def _tensors(model: nn.Module) -> Iterable[torch.Tensor]:
    yield from model.parameters()
    yield from model.buffers()
