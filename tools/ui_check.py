"""Manual check of what a researcher sees in the MLflow UI: the experiment page a printed link opens, and a run's
Overview and Model-metrics tabs.

Too heavy for CI (a browser, an MLflow server, a few minutes of training), so it is run by hand after changing what
a run logs:

    apt-get install -y chromium && pip install playwright      # the browser is Debian's; playwright drives it
    python tools/ui_check.py --out ui-check                      # trains a collapsing run, screenshots it, checks
    python tools/ui_check.py --store sqlite:///mlflow.db --run RUN_ID --out ui-check   # an existing run

It starts `mlflow server` on 127.0.0.1 for the store, opens the pages in headless Chromium through the links ncflow
prints (`ncflow.tracked.messages.ui_page`), writes `experiment_page.png`, `overview.png` (description expanded) and
`model_metrics.png` under --out, and fails (exit 1) unless the pages show what docs/tracking.md promises: the
experiment page opens on the runs table with the run in it (the Model-training view, not the GenAI overview), the
run page is not filed under "Evaluation runs", the description starts with the run's status and T_NC and inlines the
dynamics figure, and the first chart section of the Model-metrics tab is `NC` with NC1 first.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from mlflow.tracking import MlflowClient

from ncflow.tracked.messages import MODEL_TRAINING_VIEW, ui_page

# A digits run that collapses (T_NC ≈ 285 at ε = 0.01) with an early warning: about 3 minutes on 2 cores.
TRAIN = ["ncflow", "train", "--quiet", "--fn-ref", "2.3"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(url: str, timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"mlflow server at {url} did not answer within {timeout_s:.0f} s")


def screenshots(url: str, run_id: str, run_name: str, experiment_id: str, out: Path) -> list[str]:
    """Take the three screenshots; the list of what the pages failed to show."""
    from playwright.sync_api import sync_playwright

    problems = []
    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1600, "height": 1400})
        page.goto(ui_page(url, experiment_id))
        page.wait_for_timeout(6000)
        page.screenshot(path=str(out / "experiment_page.png"))
        text = page.inner_text("body")
        if "matching run" not in text or run_name not in text:
            problems.append(f"the experiment page {ui_page(url, experiment_id)} does not list {run_name} in its runs table")
        page.goto(ui_page(url, experiment_id, run_id))
        page.wait_for_timeout(6000)
        if "Evaluation runs" in page.inner_text("body"):
            problems.append("the run page opens in the GenAI view (its side bar shows 'Evaluation runs')")
        more = page.get_by_text("Show more")
        if more.count():
            more.first.click()
            page.wait_for_timeout(3000)
        page.screenshot(path=str(out / "overview.png"))
        text = page.inner_text("body")
        if "T_NC" not in text or "charts: section NC" not in text:
            problems.append("the Overview's description does not show T_NC and the chart section")
        if not page.locator("img[src*='get-artifact']").count():
            problems.append("the description does not inline figures/dynamics.png")
        page.goto(f"{url}/#/experiments/{experiment_id}/runs/{run_id}/model-metrics?{MODEL_TRAINING_VIEW}")
        page.wait_for_timeout(8000)
        page.screenshot(path=str(out / "model_metrics.png"))
        lines = page.inner_text("body").splitlines()  # … Auto-refresh, NC, (3), Add chart, NC1_log10, …
        after = lines[lines.index("Auto-refresh") + 1:] if "Auto-refresh" in lines else []
        if after[:1] != ["NC"]:
            problems.append(f"the first chart section of Model metrics is {after[:1]}, not NC")
        elif "NC1_log10" not in after[:5]:
            problems.append("the NC section does not open with NC1_log10")
        browser.close()
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", help="tracking store (default: a new sqlite store with a fresh run)")
    parser.add_argument("--run", help="run id in --store (default: train one)")
    parser.add_argument("--out", type=Path, default=Path("ui-check"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="ncflow-ui-"))
    store = args.store or f"sqlite:///{workdir / 'mlflow.db'}"
    run_id = args.run
    if run_id is None:
        subprocess.run([*TRAIN, "--tracking-uri", store, "--record-dir", str(workdir / "records")], check=True)
        run_id = MlflowClient(store).search_runs(
            [e.experiment_id for e in MlflowClient(store).search_experiments()], max_results=1)[0].info.run_id
    run = MlflowClient(store).get_run(run_id)
    experiment_id, run_name = run.info.experiment_id, run.info.run_name or ""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(["mlflow", "server", "--backend-store-uri", store, "--host", "127.0.0.1",
                               "--port", str(port), "--workers", "1"], cwd=workdir,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_healthy(url)
        problems = screenshots(url, run_id, run_name, experiment_id, args.out)
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(f"screenshots of run {run_id} in {args.out}/ (experiment_page.png, overview.png, model_metrics.png)")
    for problem in problems:
        print(f"FAIL: {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
