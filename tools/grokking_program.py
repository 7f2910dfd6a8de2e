"""Han et al.'s grokking runs as a background job that resumes wherever it stopped, run by run.

    nohup nice -n 19 python tools/grokking_program.py >> grokking/program.log 2>&1 &

Works in the git-ignored grokking/ folder (its own sqlite store). Before training it imports the finished runs
committed under docs/han-et-al/runs (tools/carry_runs.py), so a fresh machine skips what another finished; it
trains each planned run whose condition and seed have no FINISHED run in the store yet, one at a time, and exports
every finished run to docs/han-et-al/runs after each. A run cut off mid-way (the machine went away) is trained again
from its start: a grokking run is measured through the library's monitor, which keeps no resumable record.

The plan (`--plan`): `grokking` — x + y mod 97 with 30 % training data, seeds 0, 1, 2 (Power et al.'s setting, the
`power` preset); more plans are added as the sweeps of docs/han-et-al.md are run.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mlflow import MlflowClient

from ncflow.grokking.config import GrokConfig, build_grok_config
from ncflow.grokking.train import train_grokking
from ncshared import schema

EXPERIMENT = "grokking"
PLANS: dict[str, list[dict]] = {
    "grokking": [{"operation": "add", "train_fraction": 0.3, "seed": seed} for seed in (0, 1, 2)],
}


def carry(action: str, uri: str, folder: Path) -> None:
    flag = "--out" if action == "export" else "--from"
    subprocess.run([sys.executable, str(ROOT / "tools" / "carry_runs.py"), action, "--tracking-uri", uri,
                    flag, str(folder)], check=False)


def done(client: MlflowClient, config: GrokConfig) -> bool:
    """A FINISHED run of this configuration (every param equal) is in the store."""
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        return False
    wanted = config.as_params()
    for run in client.search_runs([experiment.experiment_id], "attributes.status = 'FINISHED'"):
        params = run.data.params
        if all(params.get(name) == value for name, value in wanted.items() if name != "nc1_threshold") \
                and run.data.tags.get(schema.TAG_STATUS) not in (None, schema.STATUS_FAILED):
            return True
    return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plan", default="grokking", choices=sorted(PLANS))
    parser.add_argument("--workdir", type=Path, default=ROOT / "grokking")
    parser.add_argument("--carried", type=Path, default=ROOT / "docs" / "han-et-al" / "runs")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    args.carried.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{args.workdir / 'mlflow.db'}"
    print(f"=== start {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}", flush=True)
    carry("import", uri, args.carried)
    client = MlflowClient(uri)
    for overrides in PLANS[args.plan]:
        config = build_grok_config(**overrides)
        if done(client, config):
            print(f"done already: {overrides}", flush=True)
            continue
        started = time.time()
        monitor = train_grokking(config, uri, EXPERIMENT, args.device)
        print(f"finished {overrides} in {time.time() - started:.0f} s: run {monitor.run_id}", flush=True)
        carry("export", uri, args.carried)
    print(f"=== end {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
