"""What logging the final network as an MLflow model (`log_model`, `ncflow.record.logged_model`) costs a run.

For each network the run's end is done as training does it, against a temporary sqlite store: `keep` (the training
thread saves the weights into the record) and `ship` (the shipper's thread: torch.export's check and
`mlflow.pytorch.log_model`), timed separately; the first call in the process (torch.export's and MLflow's first use)
apart from the median and range of the `--repeats` after it. Also: the time to import `mlflow.pytorch` (once per
process; it imports PyTorch Lightning when that is installed), and the size of the logged model's directory in the
store's artifacts.

Measured (2 CPU cores shared, load ≈ 7; torch 2.14.1, MLflow 3.17.2; 5 repeats): keep 0.03 s; ship 0.55 s [0.47,
0.56] for MLP-7 (6.52 MB), 0.49 s [0.48, 0.51] for MLP-5 on MNIST (5.96 MB), 1.86 s [1.82, 2.49] for ResNet-20
(1.72 MB); the first ship in a process 7.0 s, of which `import mlflow.pytorch` 5.0 s.

Networks: the default run (MLP-7 w512 on `digits`, 1×8×8), the paper's MNIST MLP-5 w512 (1×28×28) and ResNet-20
on CIFAR-10's 3×32×32, 10 classes, random weights (the cost does not depend on their values).

Run: `OMP_NUM_THREADS=1 python benchmarks/bench_logged_model.py [--repeats 5]`
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

import torch

from ncflow.engine.config import build_config
from ncflow.engine.models import build_model
from ncflow.record import logged_model
from ncflow.record.local_record import RunRecord
from ncshared.run_config import RunConfig

NETWORKS = {
    "MLP-7 w512, digits 1x8x8": ("mlp", (1, 8, 8), 7),
    "MLP-5 w512, MNIST 1x28x28": ("mlp", (1, 28, 28), 5),
    "ResNet-20, CIFAR-10 3x32x32": ("resnet20", (3, 32, 32), 0),
}


def import_seconds() -> float:
    """`import mlflow.pytorch` in a fresh process that has imported torch and mlflow already."""
    code = "import time, torch, mlflow; t = time.perf_counter(); import mlflow.pytorch; print(time.perf_counter() - t)"
    return float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)


def one(client, experiment_id: str, root: Path, config: RunConfig, network: torch.nn.Module,
        shape: tuple[int, ...]) -> tuple[float, float, int]:
    """(keep seconds, ship seconds, bytes of the logged model) for one run's end."""
    run_id = client.create_run(experiment_id).info.run_id
    record = RunRecord.create(root / "records", run_id, {})
    train_x = torch.randn(16, *shape)
    started = time.perf_counter()
    logged_model.keep(record, config, network, train_x, 600)
    kept = time.perf_counter()
    (entry,) = [entry for entry in record.entries() if entry["type"] == "model"]
    logged_model.ship(client, record, entry)
    shipped = time.perf_counter()
    (model,) = logged_model.run_models(client, client.get_run(run_id), "model")
    directory = Path(urllib.parse.urlparse(model.artifact_location).path)
    size = sum(path.stat().st_size for path in directory.rglob("*") if path.is_file())
    record.let_go()
    return kept - started, shipped - kept, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"import mlflow.pytorch: {import_seconds():.2f} s (once per process)")
    from mlflow.tracking import MlflowClient

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
        experiment_id = client.create_experiment("bench", artifact_location=(root / "artifacts").as_uri())
        for label, (arch, shape, depth) in NETWORKS.items():
            config = build_config(None, {"arch": arch, "depth": depth or 1, "width": 512})
            network = build_model(arch, shape, 10, depth or 1, 512, "relu").eval()
            first = one(client, experiment_id, root, config, network, shape)
            rest = [one(client, experiment_id, root, config, network, shape) for _ in range(args.repeats)]
            keeps, ships = [r[0] for r in rest], [r[1] for r in rest]
            print(f"{label}: model {first[2] / 1e6:.2f} MB; first in process: keep {first[0]:.2f} s + ship "
                  f"{first[1]:.2f} s; then (median [min, max] of {args.repeats}) keep {statistics.median(keeps):.2f} s "
                  f"[{min(keeps):.2f}, {max(keeps):.2f}] + ship {statistics.median(ships):.2f} s "
                  f"[{min(ships):.2f}, {max(ships):.2f}]")


if __name__ == "__main__":
    main()
