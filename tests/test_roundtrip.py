"""Training writes what the analysis reads: a real 2-epoch `ncflow train` read back with `analysis.store`.

The training runs in a fresh interpreter through the real CLI, which then reports which shared and analysis modules
it loaded: a training process names what it writes with `ncshared.schema`, draws its dynamics figure with
`ncshared.dynamics_figure` and loads no module of `analysis` at all, so a change there cannot break training.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from analysis import store, tables
from ncshared import schema

TRAIN_AND_REPORT_MODULES = """
import json, sys
from ncflow.cli.main import main
for depth in ("2", "3"):
    try:
        main(["train", "--quiet", "--depth", depth, "--width", "16", "--phase1-epochs", "1", "--phase2-epochs", "1",
              "--nc1-threshold", "0.9", "--lr", "0.01", "--tracking-uri", sys.argv[1]])
    except SystemExit as stop:
        assert stop.code in (0, None), stop.code
print(json.dumps(sorted(name for name in sys.modules if name.split(".")[0] in ("analysis", "ncshared"))))
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[str, list[str], Path]:
    root = tmp_path_factory.mktemp("roundtrip")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("MLFLOW_RUN_ID", "MLFLOW_TRACKING_URI")}
    result = subprocess.run(
        [sys.executable, "-c", TRAIN_AND_REPORT_MODULES, uri], cwd=root, env=env, capture_output=True, text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    return uri, loaded, root


def test_training_loads_the_shared_modules_and_nothing_of_the_analysis(trained):
    _, loaded, _ = trained
    assert "ncshared.dynamics_figure" in loaded and "ncshared.schema" in loaded
    assert [name for name in loaded if name.split(".")[0] == "analysis"] == []


def test_trained_run_reads_back_through_the_analysis(trained):
    uri, _, root = trained
    runs = store.load_runs(uri)
    assert sorted(runs["depth"]) == [2, 3]
    run = runs[runs["depth"] == 2].iloc[0]
    assert run["kind"] == schema.KIND_TRAIN and run["mlflow_status"] == "FINISHED"
    assert run["run_name"] == "mlp2-relu-w16-wd2e-04-digits-s0"
    assert run["depth"] == 2 and run["seed"] == 0 and run["weight_decay"] == pytest.approx(2e-4)
    assert run["condition"] == schema.condition_hash({k: str(v) for k, v in _logged_params(uri, run["run_id"]).items()})
    # ε = 0.9 and lr 0.01 make the tiny run collapse at once, so the collapse summary is there to read back.
    assert run["status"] == schema.STATUS_COLLAPSED and run[schema.T_NC] in (1.0, 2.0)
    histories = store.load_histories(runs, uri, cache_dir=root / "cache")
    assert set(histories["metric"]) == set(schema.PER_EPOCH_METRICS)
    mine = histories[histories["run_id"] == run["run_id"]]
    assert sorted(mine[mine["metric"] == schema.NC1]["epoch"]) == [1, 2]
    fn_star = mine[(mine["metric"] == schema.FN) & (mine["epoch"] == run[schema.T_NC])]["value"]
    assert fn_star.item() == pytest.approx(run[schema.FN_STAR])
    # Two depths of one otherwise fixed condition are a depth family: the paper's Table 2 builds from them.
    depth_table = tables.build_tables(runs, histories)["table2_depth"]
    frame = depth_table.frame
    assert list(frame["Depth"].astype(str)) == ["2", "3"] and list(frame["N"].astype(int)) == [1, 1]


def _logged_params(uri: str, run_id: str) -> dict[str, str]:
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri).get_run(run_id).data.params
