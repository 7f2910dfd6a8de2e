"""`mlflow run .` end to end, in both forms that work on machines without conda.

The virtualenv form builds its environment once (a minute or two: PyTorch is large) under ~/.mlflow/envs and
reuses it afterwards, exactly as a researcher's first `mlflow run . -P depth=7` does.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parent.parent
TINY = ["-P", "depth=2", "-P", "width=32", "-P", "phase1_epochs=2", "-P", "phase2_epochs=2", "-P", "weight_decay=2e-4"]


def mlflow_run(tmp_path: Path, *extra: str, timeout: int) -> MlflowClient:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    env.pop("MLFLOW_RUN_ID", None)
    command = [sys.executable, "-m", "mlflow", "run", str(ROOT), *extra, *TINY]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return MlflowClient(uri)


def check_the_run(client: MlflowClient) -> None:
    runs = client.search_runs(["0"])  # `mlflow run` without --experiment-name uses the Default experiment
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "mlp2-relu-w32-wd2e-04-digits-s0"
    assert run.data.params["weight_decay"] == "2e-4"  # as MLflow logged the -P value; ncflow agreed with it
    assert run.data.params["experiment"] == "Default"
    assert run.data.tags["ncflow.status"] in {"collapsed", "not_collapsed"}
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "nc/nc1")]
    assert sorted(steps) == [1, 2, 3, 4]
    assert "history.csv" in {a.path for a in client.list_artifacts(run.info.run_id)}


def test_mlflow_run_in_the_current_environment(tmp_path):
    check_the_run(mlflow_run(tmp_path, "--env-manager", "local", timeout=300))


@pytest.mark.slow
def test_mlflow_run_plain_builds_its_virtualenv(tmp_path):
    check_the_run(mlflow_run(tmp_path, timeout=1500))


def test_mlflow_run_rejects_a_bad_parameter_before_training(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    env.pop("MLFLOW_RUN_ID", None)
    command = [sys.executable, "-m", "mlflow", "run", str(ROOT), "--env-manager", "local", "-P", "activation=swish"]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "Error: activation: 'swish' is not one of relu, gelu, tanh" in result.stderr
    # `mlflow run` creates its run before ncflow starts; ncflow refuses before logging or training anything.
    (run,) = MlflowClient(uri).search_runs(["0"])
    assert run.info.status == "FAILED"
    assert run.data.metrics == {} and "ncflow.kind" not in run.data.tags
    # ...and says why, in the tags and as the run's description in the UI.
    reason = "activation: 'swish' is not one of relu, gelu, tanh"
    assert run.data.tags["ncflow.fail_reason"] == reason and run.data.tags["ncflow.status"] == "failed"
    assert reason in run.data.tags["mlflow.note.content"]
