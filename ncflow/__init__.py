"""ncflow: neural-collapse dynamics experiments tracked in MLflow.

The library's public names are imported on first use, so `import ncflow` stays light:

- `CollapseMonitor` (ncflow.library.monitor): measure any PyTorch classifier's collapse and log it to MLflow.
- `CollapseStatistics` (ncflow.collapse.statistics): the streaming accumulator behind every metric.
- `collapse_metrics` (ncflow.collapse.metrics): every metric of an in-memory feature matrix.
- `FeatureTap` (ncflow.library.capture): hooks that read features out of named modules.
- `NeuralCollapseCallback` (Lightning) and `NeuralCollapseTrainerCallback` (Hugging Face Trainer): the monitor as a
  callback (optional extras `ncflow[lightning]`, `ncflow[transformers]`).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_PUBLIC = {
    "CollapseMonitor": "ncflow.library.monitor",
    "CollapseStatistics": "ncflow.collapse.statistics",
    "collapse_metrics": "ncflow.collapse.metrics",
    "FeatureTap": "ncflow.library.capture",
    "MonitorInputError": "ncflow.library.capture",
    "NeuralCollapseCallback": "ncflow.library.lightning_callback",
    "NeuralCollapseTrainerCallback": "ncflow.library.trainer_callback",
}
__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'ncflow' has no attribute {name!r}")
