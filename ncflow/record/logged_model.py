"""The run's final network as an MLflow model: kept in the run's record when training ends, logged by the shipper.

`keep` writes the final weights (and the model's shape) into the record (`model/network.pt`) with an input example:
the first two training samples, normalised as the network takes them. `ship` (the shipper's `model` entry, also from
`ncflow sync`) rebuilds the network, wraps it so that its forward returns the logits only (`Logits`: ncflow's
networks return (logits, penultimate features)) and logs it with `mlflow.pytorch.log_model` as the run's model
`model`, in MLflow's pt2 format (torch.export, batch dimension dynamic: no Python class is needed to load it), with
the signature `mlflow.models.infer_signature` takes from the example and the pip requirements of `mlflow.pytorch`
(nothing inferred). `mlflow.pytorch.load_model("runs:/RUN_ID/model")` is then a module whose forward gives the logits
of the run's last epoch, on the CPU. A run has one `model`: logging it again (a resumed run that trained on) replaces
it. A network torch cannot export costs a warning, never a journal entry that cannot be shipped.

Everything torch.export does happens in the shipper's thread, one export at a time in a process: torch.export is not
thread-safe (two at once, as a pack's members' shippers would, can see each other's fake tensors), and `log_model`
reads MLflow's process-wide tracking URI, which `ship` sets for the duration. The training thread only saves weights.
"""

from __future__ import annotations

import io
import sys
import threading
from contextlib import suppress
from typing import Any

import numpy as np
import torch
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from ncflow.engine.models import network_from_weights
from ncflow.record.local_record import RunRecord
from ncshared import schema
from ncshared.run_config import RunConfig

NETWORK_FILE, EXAMPLE_FILE = "network.pt", "input_example.npy"
EXAMPLE_SAMPLES = 2  # the input example's batch: more than 1, so torch.export keeps the batch dimension dynamic
_ONE_AT_A_TIME = threading.Lock()  # torch.export and MLflow's process-wide tracking URI (see above)


class Logits(torch.nn.Module):
    """An ncflow network whose forward returns the logits only (the penultimate features are dropped)."""

    def __init__(self, network: torch.nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits, _ = self.network(x)
        return logits


def keep(record: RunRecord, config: RunConfig, network: torch.nn.Module, train_x: torch.Tensor,
         epoch: int | None) -> None:
    """Keep the final weights and the input example in the record and journal their logging (a full disk raises
    RecordDiskFull, like every write of the record)."""
    weights = {name: tensor.detach().to("cpu", copy=True) for name, tensor in network.state_dict().items()}
    shape = {"arch": config.arch, "depth": config.depth, "width": config.width, "activation": config.activation}
    network_file, example_file = io.BytesIO(), io.BytesIO()
    torch.save({**shape, "weights": weights}, network_file)
    example = train_x[:EXAMPLE_SAMPLES].detach().to("cpu", torch.float32).numpy()
    np.save(example_file, example, allow_pickle=False)
    record.model({NETWORK_FILE: network_file.getvalue(), EXAMPLE_FILE: example_file.getvalue()},
                 {"name": schema.MODEL_NAME, "epoch": int(epoch or 0)})


def exportable(network: torch.nn.Module, example: torch.Tensor, run_id: str) -> bool:
    """Whether torch.export takes the network as log_model will export it; when not, one line on stderr."""
    try:
        torch.export.export(network, (example,), dynamic_shapes=({0: torch.export.Dim.AUTO},))
    except Exception as error:  # torch.export's errors have many types; the run itself is fine without its model
        first = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        print(f"ncflow: run {run_id} logs no MLflow model: torch.export failed ({first})", file=sys.stderr)
        return False
    return True


def ship(client: MlflowClient, record: RunRecord, entry: dict[str, Any]) -> None:
    """Log the kept model as the run's MLflow model (`mlflow.pytorch.log_model`), replacing an older one of the same
    name; nothing when MLflow already has this one (the entry shipped before the process could note it) or when
    torch cannot export the network."""
    import mlflow.pytorch
    from mlflow.models import infer_signature
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    run_id, name, epoch = record.run_id, entry["name"], str(entry["epoch"])
    if not (record.model_dir / NETWORK_FILE).is_file() or not (record.model_dir / EXAMPLE_FILE).is_file():
        print(f"ncflow: run {run_id} logs no MLflow model: {record.model_dir} lost its files", file=sys.stderr)
        return
    run = client.get_run(run_id)
    earlier = run_models(client, run, name)
    if any(model.tags.get(schema.TAG_MODEL_EPOCH) == epoch and model.status == "READY" for model in earlier):
        return
    kept = torch.load(record.model_dir / NETWORK_FILE, map_location="cpu", weights_only=True)
    network = Logits(network_from_weights(kept["arch"], kept["depth"], kept["width"], kept["activation"],
                                          kept["weights"])).eval()
    example = np.load(record.model_dir / EXAMPLE_FILE, allow_pickle=False)
    with _ONE_AT_A_TIME, torch.no_grad():
        if not exportable(network, torch.from_numpy(example), run_id):
            return
        signature = infer_signature(example, network(torch.from_numpy(example)).numpy())
        model = client.create_logged_model(run.info.experiment_id, name=name, source_run_id=run_id,
                                           params=run.data.params, tags={schema.TAG_MODEL_EPOCH: epoch})
        try:  # `model_id` names the experiment and the store's model
            with _use_tracking_uri(client.tracking_uri):
                mlflow.pytorch.log_model(network, name=name, model_id=model.model_id, run_id=run_id,
                                         signature=signature, input_example=example, step=int(epoch),
                                         pip_requirements=mlflow.pytorch.get_default_pip_requirements())
        except BaseException:
            with suppress(Exception):  # `runs:/…/model` must never find a model without files (retried after)
                client.delete_logged_model(model.model_id)
            raise
    for older in earlier:
        client.delete_logged_model(older.model_id)


def run_models(client: MlflowClient, run: Any, name: str) -> list[Any]:
    """The logged models of `run` named `name` (MLflow's LoggedModel entities; a deleted one is gone)."""
    found = []
    for output in run.outputs.model_outputs if run.outputs is not None else []:
        try:
            model = client.get_logged_model(output.model_id)
        except MlflowException:  # deleted (replaced by a later one): the run's outputs still name it
            continue
        if model.name == name:
            found.append(model)
    return found
