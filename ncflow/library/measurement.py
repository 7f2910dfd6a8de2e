"""One measurement of a model on one loader: no-grad passes that feed the streaming statistics.

`measure_loader` runs the model in eval mode under `torch.no_grad()` over the loader once per pass of
`ncflow.collapse.statistics.CollapseStatistics` (two by default: the second gives the exact NC4 and Papyan's NC1
from this measurement's own class means), feeding the classifier's input to one accumulator and each named
layer's output to its own. The model's train/eval mode is restored afterwards, and the hooks removed, even when a
batch fails. Nothing is synchronised with the host until the passes are over.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ncflow.collapse.statistics import CollapseStatistics
from ncflow.library.capture import (
    FeatureTap,
    MonitorInputError,
    Unpack,
    as_rows,
    call_model,
    default_unpack,
    labels_tensor,
    model_device,
)


@dataclass(frozen=True)
class LoaderMeasurement:
    """What one loader gave: the classifier's collapse metrics, its accuracy and loss, and each layer's metrics."""

    metrics: dict[str, float]  # collapse_metrics' names (nc4 and nc1_pinv only with two passes)
    accuracy: float
    loss: float  # mean cross-entropy of the classifier's logits W h + b
    layers: dict[str, dict[str, float]]  # layer name → its metrics (no classifier: nc1, nc1_pinv, nc2, fn, ...)
    samples: int


def measure_loader(
    model: nn.Module,
    loader: Iterable[Any],
    classifier_name: str,
    classifier: nn.Linear,
    num_classes: int,
    layers: Sequence[str] = (),
    passes: int = 2,
    unpack: Unpack | None = None,
    minority_classes: Sequence[int] | None = None,
) -> LoaderMeasurement:
    """Measure `model` on every batch of `loader` (read `passes` times; it must give the same samples each time).

    Raises:
        MonitorInputError: a batch without labels, a module that is not called, shapes that do not match.
        ValueError / NonFiniteFeaturesError: from the statistics (labels outside [0, K), a class with no sample,
            non-finite features), naming the first bad batch.
    """
    unpack = unpack or default_unpack
    device = model_device(model)
    statistics = CollapseStatistics(num_classes, classifier.weight, classifier.bias, minority_classes, passes)
    by_layer = {name: CollapseStatistics(num_classes, passes=passes) for name in layers}
    with evaluating(model, classifier_name, layers) as tap:
        for pass_number in range(passes):
            if pass_number == 1:
                for accumulator in (statistics, *by_layer.values()):
                    accumulator.start_second_pass()
            seen = _one_pass(model, loader, tap, unpack, device, statistics, by_layer)
            if seen == 0:
                raise MonitorInputError("loader: it yielded no batches")
    predictions = statistics.predictions()
    return LoaderMeasurement(statistics.compute(), predictions["accuracy"], predictions["loss"],
                             {name: accumulator.compute() for name, accumulator in by_layer.items()},
                             int(statistics.total.item()))


@contextmanager
def evaluating(model: nn.Module, classifier_name: str, layers: Sequence[str] = ()) -> Iterator[FeatureTap]:
    """Eval mode, no grad and the hooks for the block; the model's mode restored and the hooks removed after it."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FeatureTap(model, classifier_name, layers) as tap:
            yield tap
    finally:
        model.train(was_training)


def _one_pass(model: nn.Module, loader: Iterable[Any], tap: FeatureTap, unpack: Unpack, device: torch.device,
              statistics: CollapseStatistics, by_layer: dict[str, CollapseStatistics]) -> int:
    """Feed every batch of the loader once; the number of batches."""
    batches = 0
    for batch in loader:
        inputs, labels = unpack(batch)
        labels = labels_tensor(labels, device)
        call_model(model, inputs, device)
        statistics.update(*as_rows(tap.take(tap.classifier), labels))
        for name, accumulator in by_layer.items():
            accumulator.update(*as_rows(tap.take(name), labels))
        batches += 1
    return batches


def class_mean_angles_of(model: nn.Module, loader: Iterable[Any], classifier_name: str, num_classes: int,
                         unpack: Unpack | None = None) -> list[float]:
    """The K(K−1)/2 angles between the centred class means of the classifier's input over `loader` (one pass)."""
    device = model_device(model)
    statistics = CollapseStatistics(num_classes, passes=1)
    with evaluating(model, classifier_name) as tap:
        _one_pass(model, loader, tap, unpack or default_unpack, device, statistics, {})
    return statistics.class_mean_angles()
