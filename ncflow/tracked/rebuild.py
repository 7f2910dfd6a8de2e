"""A trained network back from its run: `load_network(RUN_ID or checkpoint path)`, without reading ncflow's source.

    from ncflow.tracked.rebuild import load_network, load_run
    network = load_network("7a1c9fb1677c4ef4887a48f3e62158ab")      # checkpoints/last.pt of the run, from MLflow
    network = load_network("last.pt")                                # or a checkpoint file
    logits, features = network(images)                              # images normalised as the run's data set
    run = load_run("7a1c…"); data = run.data()                       # the run's data set, as it trained on it

The network is ncflow's own (the MLP or ResNet-20: `forward` gives the logits and the penultimate features, and
`forward_layers` every layer), on the CPU in eval mode, built from the checkpoint's configuration (typed values, or
the strings of older checkpoints) with the checkpoint's weights; its input size and class count come from the weights.
For the logits alone, without ncflow, the run's MLflow model does the same:
`mlflow.pytorch.load_model("runs:/RUN_ID/model")` (`ncflow.record.logged_model`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from mlflow.exceptions import MlflowException

from ncflow.engine.config import ConfigError, config_from_values
from ncflow.engine.data import InMemoryData, load_dataset
from ncflow.engine.models import network_from_weights
from ncflow.tracked import mlflow_run
from ncshared import schema
from ncshared.run_config import RunConfig


@dataclass(frozen=True)
class RebuiltRun:
    """A run's network as its checkpoint holds it, and how it was trained."""

    network: torch.nn.Module  # ncflow's MLP or ResNet-20, on the CPU, eval mode: forward(x) → (logits, features)
    config: RunConfig  # the configuration it trained with
    epoch: int  # the last epoch the checkpoint holds

    def data(self, data_dir: str | None = None) -> InMemoryData:
        """The run's data set as it trained on it: normalised tensors on the CPU (the whole training set, before any
        imbalance subsample; the test set as it was). `data_dir`: where the torchvision data sets are now."""
        config = self.config
        return load_dataset(config.dataset, data_dir or config.data_dir, synthetic_classes=config.synthetic_classes,
                            synthetic_shape=config.synthetic_dims, synthetic_per_class=config.synthetic_per_class)


def load_run(source: str | Path, tracking_uri: str | None = None,
             checkpoint: str = schema.CHECKPOINT_LAST) -> RebuiltRun:
    """The network of a checkpoint file, or of a run's MLflow checkpoint `checkpoint` (`last`, `phase1_end`,
    `collapse`) in the store `tracking_uri` (default: MLFLOW_TRACKING_URI, else MLflow's). ConfigError (one line)
    when there is no such file, run or checkpoint."""
    path = Path(source).expanduser()
    if path.is_file():
        state = mlflow_run.load_state_file(path, str(path))
    else:
        run_id = str(source)
        client = mlflow_run.client_for_uri(tracking_uri)
        mlflow_run.require_run(client, run_id, "load_network")
        try:
            state = mlflow_run.load_checkpoint(client, run_id, checkpoint)
        except MlflowException:
            raise ConfigError(
                f"load_network: run {run_id} has no {schema.checkpoint_path(checkpoint)} (see its `checkpoints` "
                f"param); its final network's logits: mlflow.pytorch.load_model('runs:/{run_id}/{schema.MODEL_NAME}')"
            ) from None
    config = config_from_values(state["config"], check=False)
    network = network_from_weights(config.arch, config.depth, config.width, config.activation, state["model"])
    return RebuiltRun(network, config, int(state["epoch"]))


def load_network(source: str | Path, tracking_uri: str | None = None,
                 checkpoint: str = schema.CHECKPOINT_LAST) -> torch.nn.Module:
    """The trained network of a run id or a checkpoint path (`load_run`), on the CPU in eval mode:
    `logits, features = load_network(run_id)(images)`."""
    return load_run(source, tracking_uri, checkpoint).network
