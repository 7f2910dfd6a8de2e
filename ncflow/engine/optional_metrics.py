"""The per-epoch metrics a run measures only under an option, and what a finished run keeps of them.

- `--layerwise`: `layers/<l>/{nc1,nc1_pinv,nc2,fn}` of every layer's output (ncflow.engine.models.layer_count), from
  the same eval pass as the penultimate metrics; the last layer *is* the penultimate feature, so its values are
  copied from `nc/*` rather than computed twice. At the end: `collapse/layers/<l>/T_NC` (the first epoch the
  layer's NC1 is below the run's ε), `layers.csv` and `figures/layers.png`.
- `--imbalance-ratio` > 1: `nc/minority_collapse` and `nc/minority_mean_collapse` (ncflow.collapse.metrics), the class
  counts (`class_counts.json`, tag `ncflow.class_counts`) and, at the end, the per-class NC1 (`class_nc1.csv`).
- `--reg` ncc or flatness: `reg/value` and `reg/active` (ncflow.engine.loop), also in `history.csv` after its columns.
"""

from __future__ import annotations

import io
import json
import math
from typing import Iterable, Mapping, Sequence

import pandas as pd
import torch

from ncflow.collapse.metrics import NonFiniteFeaturesError, class_nc1, feature_collapse
from ncflow.engine.models import layer_count
from ncshared import schema
from ncshared.run_config import RunConfig


def imbalanced(config: RunConfig) -> bool:
    return config.imbalance_ratio != 1


def layer_names(config: RunConfig) -> tuple[str, ...]:
    """`layers/<l>/<name>` of every layer `--layerwise` measures, layer by layer; empty without it."""
    if not config.layerwise:
        return ()
    count = layer_count(config.arch, config.depth)
    return tuple(schema.layer_metric(layer, name) for layer in range(1, count + 1)
                 for name in schema.LAYER_METRIC_NAMES)


def optional_metric_names(config: RunConfig) -> tuple[str, ...]:
    """The per-epoch metrics this run logs beyond `schema.PER_EPOCH_METRICS`."""
    return (*layer_names(config), *(schema.IMBALANCE_METRICS if imbalanced(config) else ()),
            *regulariser_names(config))


def regulariser_names(config: RunConfig) -> tuple[str, ...]:
    """`reg/value`, `reg/active` for a regularised run (they also join its `history.csv`); empty without."""
    return schema.REGULARISER_METRICS if config.reg != "none" else ()


def layer_collapse(layers: Sequence[torch.Tensor], labels: torch.Tensor, num_classes: int,
                   penultimate: Mapping[str, float]) -> dict[str, float]:
    """`layers/<l>/*` of each layer's features; the last layer's from the penultimate `nc/*` values already measured
    (NaN for a layer whose features are not finite)."""
    values: dict[str, float] = {}
    for layer, features in enumerate(layers[:-1], start=1):
        try:
            found = feature_collapse(features, labels, num_classes)
        except NonFiniteFeaturesError:
            found = dict.fromkeys(schema.LAYER_METRIC_NAMES, math.nan)
        values.update({schema.layer_metric(layer, name): value for name, value in found.items()})
    last = len(layers)
    values.update({schema.layer_metric(last, name): penultimate[schema.NC_PREFIX + name]
                   for name in schema.LAYER_METRIC_NAMES})
    return values


def layer_collapse_epochs(history: Iterable[Mapping[str, float]], config: RunConfig, threshold: float) -> dict[str, float]:
    """`collapse/layers/<l>/T_NC`: the first epoch each layer's NC1 is below ε (summary metrics; a layer that never
    gets there has none, as a run that never collapses has no `collapse/T_NC`)."""
    found: dict[str, float] = {}
    count = layer_count(config.arch, config.depth)
    for row in history:
        for layer in range(1, count + 1):
            key = schema.layer_t_nc(layer)
            if key not in found and row.get(schema.layer_metric(layer, "nc1"), math.nan) < threshold:
                found[key] = row[schema.HISTORY_EPOCH]
    return found


def layers_csv(history: Iterable[Mapping[str, float]], config: RunConfig) -> bytes:
    """`layers.csv`: `epoch`, then every `layers/<l>/<name>`, one row per epoch."""
    columns = [schema.HISTORY_EPOCH, *layer_names(config)]
    return pd.DataFrame(list(history), columns=columns).to_csv(index=False).encode()


def layers_figure_png(history: Sequence[Mapping[str, float]], config: RunConfig, title: str) -> bytes:
    """`figures/layers.png`: NC1 of every layer over the epochs (log scale), the phase switch marked. Only finite,
    positive values are drawn (a diverged run's last epochs are not); with none at all (a run that diverged in its
    first epoch) the axis is linear and says so."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frame = pd.DataFrame(list(history))
    figure, axis = plt.subplots(figsize=(7, 4.5))
    drawn = 0
    for layer in range(1, layer_count(config.arch, config.depth) + 1):
        values = pd.to_numeric(frame[schema.layer_metric(layer, "nc1")], errors="coerce")
        shown = (values > 0) & (values < math.inf)  # False for NaN too
        axis.plot(frame.loc[shown, schema.HISTORY_EPOCH], values[shown], label=f"layer {layer}")
        drawn += int(shown.sum())
    if config.protocol == "two-phase":
        axis.axvline(config.phase1_epochs + 0.5, color="grey", linestyle="--", linewidth=1, label="CE → MSE")
    if drawn:
        axis.set_yscale("log")
    else:
        axis.text(0.5, 0.5, "no finite NC1 to draw", transform=axis.transAxes, ha="center", color="C3")
    axis.set(xlabel="epoch", ylabel="NC1 = Tr(Σ_W) / Tr(Σ_B)", title=f"{title}: NC1 per layer")
    axis.legend(fontsize=8)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    return buffer.getvalue()


def class_counts_json(counts: Sequence[int], config: RunConfig, minority: Sequence[int]) -> bytes:
    """`class_counts.json`: the training samples per class, the ratio and profile, and the minority classes."""
    return json.dumps({"counts": list(counts), "imbalance_ratio": config.imbalance_ratio,
                       "imbalance_profile": config.imbalance_profile, "minority_classes": list(minority)},
                      indent=2).encode()


def class_nc1_csv(features: torch.Tensor, labels: torch.Tensor, counts: Sequence[int],
                  minority: Sequence[int]) -> bytes:
    """`class_nc1.csv`: per class its training count, whether it is a minority class, and NC1_c (NaN when the
    features are not finite)."""
    try:
        values = class_nc1(features, labels, len(counts))
    except NonFiniteFeaturesError:
        values = [math.nan] * len(counts)
    frame = pd.DataFrame({"class": range(len(counts)), "count": list(counts),
                          "minority": [c in set(minority) for c in range(len(counts))], "nc1": values})
    return frame.to_csv(index=False).encode()
