"""`ncflow sweep`: the paper's grids, exactly-once training across workers, kills and relaunches, PostgreSQL,
the intervention chain. Real CLI, real MLflow (a temp SQLite store per test), real Optuna storages, real training
on a tiny synthetic data set (3 classes of 10 1×4×4 samples, width 16)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner

from ncflow.cli.main import main
from ncflow.record.local_record import RunRecord, record_root
from ncflow.sweeps.grids import NAMED_SWEEPS, parse_seeds, parse_settings, resolve_points, with_seeds
from ncflow.sweeps.runs import finished_result, interrupted_run, trial_tag
from ncflow.sweeps.storage import DEFAULT_STORAGE, open_storage, storage_kind, storage_url, study_trials
from ncflow.sweeps.trial_liveness import STALE_REASON
from ncflow.sweeps.trials import ATTR_OWNER, ATTR_RUN_ID, ATTR_STATUS, ATTR_T_NC, objective_value
from ncshared.schema import (
    CHECKPOINT_PHASE1_END,
    FAIL_REASON_INTERRUPTED,
    FN,
    KIND_SWEEP,
    KIND_TRAIN,
    NC1,
    STATUS_COLLAPSED,
    SWEEP_DONE,
    SWEEP_REMAINING,
    SWEEP_SUMMARY_FILE,
    T_NC,
    TAG_CONDITION,
    TAG_FAIL_REASON,
    TAG_KIND,
    TAG_PARENT_RUN,
    TAG_STATUS,
    TAG_SWEEP,
    TAG_TRIAL,
    TRAIN_LOSS,
    checkpoint_path,
)
from ncflow.tracked.stale_runs import resumability
from tests.mlflow_fixtures import LocalStore
from tests.postgres_server import PostgresUnavailable, start_postgres

TINY = "synthetic_shape=1x4x4,synthetic_per_class=10,synthetic_classes=3,width=16,checkpoint_every=1000"
FAST = f"{TINY},phase1_epochs=1,phase2_epochs=1"
SLOW = f"{TINY},phase1_epochs=1,phase2_epochs=60"  # long enough (a few seconds) to be killed mid-run
PAPER_COUNTS = {"depth": 12, "activation": 10, "weight-decay": 12, "width": 12, "grid": 12, "intervention": 12, "protocol": 6}


@pytest.fixture
def store(mlflow_store: LocalStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> LocalStore:
    """A fresh SQLite tracking store with experiment `ncflow`; the working directory is the test's temp dir."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    mlflow_store.experiment("ncflow")
    return mlflow_store


def sweep_cli(store: LocalStore, *args: str) -> list[str]:
    return ["sweep", *args, "--tracking-uri", store.uri, "--quiet"]


def invoke(store: LocalStore, *args: str, expect: int = 0) -> str:
    result = CliRunner().invoke(main, sweep_cli(store, *args))
    assert result.exit_code == expect, result.output
    return result.output


def training_runs(store: LocalStore) -> list:
    experiment = store.client.get_experiment_by_name("ncflow")
    runs = store.client.search_runs([experiment.experiment_id], max_results=1000)
    return [r for r in runs if r.data.tags.get(TAG_KIND) == KIND_TRAIN]


def parent_of(store: LocalStore, name: str):
    experiment = store.client.get_experiment_by_name("ncflow")
    (parent,) = store.client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`{TAG_KIND}` = '{KIND_SWEEP}' and tags.`{TAG_SWEEP}` = '{name}'"
    )
    return parent


def finished_per_point(store: LocalStore) -> Counter:
    return Counter(
        (r.data.tags[TAG_CONDITION], r.data.params["seed"]) for r in training_runs(store) if r.info.status == "FINISHED"
    )


def assert_exactly_once(store: LocalStore, name: str, points: int) -> None:
    """Every point of the sweep has exactly one FINISHED child run under the sweep's parent."""
    parent = parent_of(store, name)
    finished = finished_per_point(store)
    assert len(finished) == points and set(finished.values()) == {1}, finished
    children = [r for r in training_runs(store) if r.info.status == "FINISHED"]
    assert all(r.data.tags[TAG_PARENT_RUN] == parent.info.run_id for r in children)
    assert all(r.data.tags[TAG_SWEEP] == name for r in children)


# ---------------------------------------------------------------- definitions, overrides, dry run


@pytest.mark.parametrize("name", sorted(PAPER_COUNTS))
def test_dry_run_lists_the_papers_grids(store: LocalStore, name: str):
    output = invoke(store, name, "--dry-run")
    rows = [line.split() for line in output.splitlines() if line.startswith(("main ", "phase1 "))]
    assert len(rows) == PAPER_COUNTS[name]
    assert f"{PAPER_COUNTS[name]} points: 0 done, 0 running, 0 failed, {PAPER_COUNTS[name]} todo" in output
    assert all(row[-1] != "done" for row in rows) and not training_runs(store)
    if name == "activation":  # GELU has 4 seeds, ReLU and Tanh 3
        assert Counter(row[1] for row in rows) == {"activation=relu": 3, "activation=gelu": 4, "activation=tanh": 3}
    if name == "intervention":  # 3 Phase-1 runs, then α ∈ {1.0, 0.3, 3.0} × 3 seeds
        assert sum(row[0] == "phase1" for row in rows) == 3
        assert Counter(row[1] for row in rows if row[0] == "main") == {
            "rescale_alpha=1.0": 3, "rescale_alpha=0.3": 3, "rescale_alpha=3.0": 3}


def test_grid_points_use_each_architectures_preset():
    points = resolve_points(NAMED_SWEEPS["grid"], {})
    by_arch = {(p.config.arch, p.config.dataset): p.config for p in points if p.seed == 0}
    assert set(by_arch) == {("mlp", "mnist"), ("mlp", "cifar10"), ("resnet20", "mnist"), ("resnet20", "cifar10")}
    assert by_arch[("mlp", "cifar10")].optimizer == "adam" and by_arch[("mlp", "cifar10")].depth == 5
    resnet = by_arch[("resnet20", "mnist")]
    assert (resnet.optimizer, resnet.lr, resnet.nesterov, resnet.weight_decay, resnet.schedule) == ("sgd", 0.1, True, 1e-3, "multistep")


def test_overrides_pin_fields_and_a_pinned_dim_stops_varying():
    # `milestones=300,450` keeps its comma; `dataset` pins the grid sweep's dataset dim: 2 presets × 2 seeds.
    overrides = parse_settings(["phase1_epochs=3,milestones=300,450", "width=64"])
    assert overrides == {"phase1_epochs": 3, "milestones": (300, 450), "width": 64}
    grid = with_seeds(NAMED_SWEEPS["grid"], parse_seeds("0,1"))
    points = resolve_points(grid, {**overrides, "dataset": "mnist-5k"})
    assert len(points) == 4 and {p.config.dataset for p in points} == {"mnist-5k"}
    assert {p.config.phase1_epochs for p in points} == {3}


def test_spec_file_defines_a_user_sweep(store: LocalStore, tmp_path: Path):
    spec = tmp_path / "mine.yaml"
    spec.write_text("name: mine\npreset: paper-mnist-mlp\nfixed: {width: 64}\ngrid: {depth: [2, 4], activation: [relu, tanh]}\nseeds: [0, 1]\n")
    output = invoke(store, "--spec", str(spec), "--dry-run")
    assert "8 points: 0 done, 0 running, 0 failed, 8 todo" in output  # 2 depths × 2 activations × 2 seeds
    assert "ncflow-mine" in output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["depth", "--set", "colour=red"], "unknown parameter 'colour'"),
        (["depth", "--set", "rescale_alpha=2"], "rescale_alpha: only applies with init_from"),
        (["depth", "--seeds", "0,x"], "--seeds: expected comma-separated integers"),
        (["nosuch"], "unknown sweep 'nosuch'"),
        (["depth", "--storage", "mysql://db/optuna"], "storage: mysql:// is not supported"),
    ],
)
def test_bad_input_is_one_line_and_starts_nothing(store: LocalStore, args: list[str], message: str):
    output = invoke(store, *args, expect=2)
    error_lines = [line for line in output.splitlines() if line.startswith("Error:")]
    assert len(error_lines) == 1 and message in error_lines[0], output
    assert not training_runs(store) and not Path(".ncflow/optuna.journal").exists()


def test_storage_urls_and_objective_value():
    assert storage_url("postgresql://u@h:5/db") == "postgresql+psycopg2://u@h:5/db"
    assert storage_url(None) == str(Path(DEFAULT_STORAGE).resolve())
    assert objective_value("collapsed", 7, 10) == 7.0
    assert objective_value("not_collapsed", None, 10) == 11.0  # censored: total epochs + 1


def test_a_finished_run_logged_with_seed_1_0_is_the_points_done_run(store: LocalStore):
    """`mlflow run -P seed=1.0` logs the param `1.0`: it is seed 1's run (seeds compare as numbers, not strings)."""
    point = resolve_points(with_seeds(NAMED_SWEEPS["depth"], (1,)), {})[0]  # depth=2, seed 1
    experiment_id = store.client.get_experiment_by_name("ncflow").experiment_id
    tags = {TAG_KIND: KIND_TRAIN, TAG_CONDITION: point.condition, TAG_STATUS: STATUS_COLLAPSED}
    run_id = store.client.create_run(experiment_id, tags=tags).info.run_id
    store.client.log_param(run_id, "seed", "1.0")
    store.client.log_metric(run_id, T_NC, 7.0)
    store.client.set_terminated(run_id, "FINISHED")
    done = finished_result(store.client, experiment_id, point.condition, 1)
    assert done is not None and done[ATTR_RUN_ID] == run_id and done[ATTR_T_NC] == 7
    assert finished_result(store.client, experiment_id, point.condition, 0) is None  # seed 0 is another point
    output = invoke(store, "depth", "--seeds", "1", "--dry-run")
    assert "4 points: 1 done, 0 running, 0 failed, 3 todo" in output
    (row,) = [line.split() for line in output.splitlines() if run_id in line]
    assert row[:5] == ["main", "depth=2", "1", "done", run_id]


# ---------------------------------------------------------------- exactly once: default storage, kills, PostgreSQL


def test_two_workers_train_each_point_once_and_a_rerun_trains_nothing(store: LocalStore):
    args = ("depth", "--workers", "2", "--seeds", "0", "--dataset", "synthetic", "--set", FAST)
    output = invoke(store, *args)
    assert "4 points: 4 done" in output
    # The default storage and its locks live under the git-ignored .ncflow/, not in the working tree.
    assert Path(".ncflow/optuna.journal").exists() and not list(Path().glob("*.lock")) and not Path("optuna.journal").exists()
    assert list(Path(".ncflow").glob("optuna.journal.*.lock"))
    # The end says where the results are: the parent run and its summary CSV.
    (parent,) = store.client.search_runs([store.client.get_experiment_by_name("ncflow").experiment_id],
                                         filter_string="tags.`ncflow.kind` = 'sweep'")
    assert f"  parent run  {parent.info.run_id} (sweep-depth), experiment ncflow" in output
    assert f"  summary     {parent.info.artifact_uri}/sweep_summary.csv" in output
    assert_exactly_once(store, "depth", 4)
    study = optuna.load_study(study_name="ncflow-depth", storage=open_storage(storage_url(None)))
    trials = study.get_trials()
    assert len(trials) == 4 and {t.state for t in trials} == {optuna.trial.TrialState.COMPLETE}
    runs = {r.info.run_id: r for r in training_runs(store)}
    for trial in trials:  # user attrs: the MLflow run, its status; value = T_NC or total epochs + 1
        run = runs[trial.user_attrs[ATTR_RUN_ID]]
        assert run.data.params["depth"] == str(trial.params["depth"]) and run.data.params["seed"] == str(trial.params["seed"])
        assert trial.user_attrs[ATTR_STATUS] == run.data.tags[TAG_STATUS]
        assert trial.value == run.data.metrics.get(T_NC, 3.0)
    parent = parent_of(store, "depth")
    assert parent.data.metrics[SWEEP_DONE] == 4 and parent.data.metrics[SWEEP_REMAINING] == 0
    summary = store.client.download_artifacts(parent.info.run_id, SWEEP_SUMMARY_FILE, str(store.db_path.parent))
    assert len(Path(summary).read_text().splitlines()) == 1 + 4

    output = invoke(store, *args)  # the second invocation finds everything done
    assert "4 points: 4 done" in output
    assert len(training_runs(store)) == 4 and len(study.get_trials()) == 4
    assert parent_of(store, "depth").info.run_id == parent.info.run_id  # the parent run is reused


def test_pack_trains_the_points_of_one_shape_together_exactly_once(store: LocalStore):
    args = ("depth", "--seeds", "0,1", "--dataset", "synthetic", "--set", FAST, "--pack", "2")
    assert "8 points: 8 done" in invoke(store, *args)
    assert_exactly_once(store, "depth", 8)
    spans: dict[str, list[tuple[int, int]]] = {}
    for run in training_runs(store):
        spans.setdefault(run.data.params["depth"], []).append((run.info.start_time, run.info.end_time))
    for depth, members in spans.items():  # one pack per depth: its two runs were open at the same time
        assert len(members) == 2 and max(start for start, _ in members) < min(end for _, end in members), depth
    assert "8 points: 8 done" in invoke(store, *args)  # nothing left to train
    assert len(training_runs(store)) == 8
    assert "Error: pack: expected a whole number >= 1 or auto, got '0'" in invoke(store, "depth", "--pack", "0", expect=2)


class SweepProcess:
    """`ncflow sweep` running in the background: a subprocess (killable as a group), or this process (a thread)."""

    def __init__(self, store: LocalStore, args: tuple[str, ...], subprocess_parent: bool) -> None:
        self.process: subprocess.Popen | None = None
        self.result = None
        if subprocess_parent:
            command = [sys.executable, "-m", "ncflow.cli", *sweep_cli(store, *args)]
            self.process = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        else:
            self.thread = threading.Thread(target=self._invoke, args=(store, args), daemon=True)
            self.thread.start()

    def _invoke(self, store: LocalStore, args: tuple[str, ...]) -> None:
        self.result = CliRunner().invoke(main, sweep_cli(store, *args))

    def running(self) -> bool:
        return self.process.poll() is None if self.process else self.thread.is_alive()

    def wait(self, timeout_s: float) -> tuple[int, str]:
        """Exit code and error output."""
        if self.process:
            code = self.process.wait(timeout=timeout_s)
            return code, self.process.stderr.read()
        self.thread.join(timeout_s)
        assert not self.thread.is_alive(), "the sweep did not end in time"
        return self.result.exit_code, self.result.output


def wait_for_running_trial(url: str, store: LocalStore, sweep: SweepProcess, timeout_s: float = 120.0) -> int:
    """The pid of a worker that is training a point right now (its MLflow run exists and is RUNNING)."""
    deadline = time.monotonic() + timeout_s
    storage = None
    while time.monotonic() < deadline:
        assert sweep.running(), sweep.wait(1)
        running = {r.data.tags.get(TAG_TRIAL) for r in training_runs(store) if r.info.status == "RUNNING"}
        if storage is None and (storage_kind(url) != "journal" or Path(url).exists()):
            storage = open_storage(url)
        for trial in study_trials(storage, "ncflow-depth") if storage else []:
            owner = trial.user_attrs.get(ATTR_OWNER)
            if trial.state == optuna.trial.TrialState.RUNNING and owner and trial_tag("ncflow-depth", trial.number) in running:
                return int(owner["pid"])
        time.sleep(0.2)
    raise AssertionError("no worker started training in time")


def kill_relaunch_and_check(store: LocalStore, storage: str, kill: str) -> None:
    """Kill mid-sweep (one worker, or the whole sweep), relaunch, and check exactly the missing points train.

    Two points (depth pinned to 2, seeds 0 and 1), one per worker: the kill lands while both train.
    """
    args = ("depth", "--workers", "2", "--seeds", "0,1", "--dataset", "synthetic", "--set", f"{SLOW},depth=2", "--storage", storage)
    url = storage_url(storage)
    sweep = SweepProcess(store, args, subprocess_parent=kill == "group")
    pid = wait_for_running_trial(url, store, sweep)
    if kill == "group":
        os.killpg(sweep.process.pid, signal.SIGKILL)  # parent and both workers: nobody cleans up
        sweep.wait(30)
    else:
        os.kill(pid, getattr(signal, kill))
        code, output = sweep.wait(240)
        assert code == 1, output  # the parent reports the unfinished point
    before = finished_per_point(store)
    unfinished = [r for r in training_runs(store) if r.info.status != "FINISHED"]
    assert len(before) < 2 and unfinished
    if kill != "group":  # the parent failed the trial and ended the run; SIGTERM let train end it itself
        assert all(r.info.status in ("KILLED", "FAILED") for r in unfinished)
        reasons = {r.data.tags.get(TAG_FAIL_REASON, "") for r in unfinished}
        assert reasons == ({f"{FAIL_REASON_INTERRUPTED} (SIGTERM)"} if kill == "SIGTERM" else {STALE_REASON})
    runs_before = {r.info.run_id for r in training_runs(store)}
    # A run killed after a finished epoch has a resume state: the relaunch continues it rather than start again
    # (one left RUNNING by a killed sweep is ended KILLED by the relaunch first, then continued).
    resumable = {r.info.run_id for r in unfinished
                 if r.info.status != "FAILED" and resumability(RunRecord(record_root() / r.info.run_id)).resumable}

    output = invoke(store, *args)  # relaunch
    assert "2 points: 2 done" in output
    assert_exactly_once(store, "depth", 2)
    after = {r.info.run_id: r for r in training_runs(store)}
    assert all(after[run_id].info.status == "FINISHED" for run_id in resumable)
    new_runs = [r for r in after.values() if r.info.run_id not in runs_before]
    assert len(new_runs) == 2 - len(before) - len(resumable)  # exactly the missing points were trained
    assert all(r.info.status in ("KILLED", "FAILED") for r in after.values() if r.info.status != "FINISHED")


@pytest.mark.parametrize("kill", ["SIGTERM", "SIGKILL"])
def test_a_killed_worker_and_a_relaunch_complete_exactly_the_missing_points(store: LocalStore, kill: str):
    kill_relaunch_and_check(store, "optuna.journal", kill)


def test_the_interrupted_run_of_a_point_is_its_furthest_killed_run_with_a_resume_state(store: LocalStore, tmp_path: Path):
    experiment = store.client.get_experiment_by_name("ncflow").experiment_id
    made = {}
    for name, status, epochs, state, seed, condition in [
        ("short", "KILLED", 3, True, "0", "c1"), ("long", "KILLED", 7, True, "0.0", "c1"),
        ("stateless", "KILLED", 9, False, "0", "c1"), ("crashed", "FAILED", 8, True, "0", "c1"),
        ("other-seed", "KILLED", 9, True, "1", "c1"), ("other-point", "KILLED", 9, True, "0", "c2"),
    ]:
        run_id = store.client.create_run(experiment, tags={TAG_CONDITION: condition, TAG_KIND: KIND_TRAIN}).info.run_id
        store.client.log_param(run_id, "seed", seed)
        for epoch in range(1, epochs + 1):
            store.client.log_metric(run_id, NC1, 1.0 / epoch, step=epoch)
        if state:
            RunRecord(tmp_path / "records" / run_id).state_path.parent.mkdir(parents=True)
            RunRecord(tmp_path / "records" / run_id).state_path.write_bytes(b"state")
        store.client.set_terminated(run_id, status)
        made[name] = run_id
    found = interrupted_run(store.client, experiment, "c1", 0, tmp_path / "records")
    assert found.info.run_id == made["long"]  # seed 0.0 is seed 0; no state, FAILED: not continued
    assert interrupted_run(store.client, experiment, "c3", 0, tmp_path / "records") is None


def test_a_relaunch_continues_the_interrupted_run_of_a_point_bit_for_bit(store: LocalStore):
    """SIGTERM a worker after a few epochs: the relaunch's worker resumes that very run (no second run of the point),
    and its history equals an uninterrupted sweep's run of the point, epoch for epoch."""
    args = ("depth", "--seeds", "0", "--dataset", "synthetic", "--set", f"{SLOW},depth=2,threads=1")
    sweep = SweepProcess(store, args, subprocess_parent=False)
    pid = wait_for_running_trial(storage_url(None), store, sweep)
    (run,) = [r for r in training_runs(store) if r.info.status == "RUNNING"]
    deadline = time.monotonic() + 120
    while len(RunRecord(record_root() / run.info.run_id).epoch_rows()) < 5:  # a few epochs are done
        assert time.monotonic() < deadline, "the run logged too few epochs in time"
        time.sleep(0.1)
    os.kill(pid, signal.SIGTERM)
    assert sweep.wait(240)[0] == 1
    assert store.client.get_run(run.info.run_id).info.status == "KILLED"
    assert resumability(RunRecord(record_root() / run.info.run_id)).resumable

    invoke(store, *args)
    (resumed,) = training_runs(store)  # the point's one run, continued
    assert resumed.info.run_id == run.info.run_id and resumed.info.status == "FINISHED"
    parent = parent_of(store, "depth")
    assert resumed.data.tags[TAG_PARENT_RUN] == parent.info.run_id
    study = optuna.load_study(study_name="ncflow-depth", storage=open_storage(storage_url(None)))
    done = [t for t in study.get_trials() if t.state == optuna.trial.TrialState.COMPLETE]
    assert [t.user_attrs[ATTR_RUN_ID] for t in done] == [run.info.run_id]
    assert resumed.data.tags[TAG_TRIAL] == trial_tag("ncflow-depth", done[0].number)

    store.experiment("clean")
    invoke(store, *args, "--experiment", "clean", "--storage", "clean.journal")
    clean_experiment = store.client.get_experiment_by_name("clean").experiment_id
    (clean,) = [r for r in store.client.search_runs([clean_experiment]) if r.data.tags.get(TAG_KIND) == KIND_TRAIN]
    for key in (NC1, FN, TRAIN_LOSS):
        history = [(m.step, m.value) for m in store.client.get_metric_history(resumed.info.run_id, key)]
        assert sorted(history) == sorted((m.step, m.value) for m in store.client.get_metric_history(clean.info.run_id, key))
        assert len({step for step, _ in history}) == len(history) == 61, key  # every epoch once


@pytest.fixture(scope="module")
def postgres_url():
    try:
        with start_postgres() as url:
            yield url
    except PostgresUnavailable as error:
        if os.environ.get("CI"):
            pytest.fail(f"CI is set and PostgreSQL could not start: {error}")
        pytest.skip(f"PostgreSQL could not start: {error}")


@pytest.mark.slow
def test_postgresql_storage_two_workers_killed_sweep_resumes_exactly_once(store: LocalStore, postgres_url: str):
    assert postgres_url.startswith("postgresql://")  # the bare scheme: ncflow maps it to psycopg2
    kill_relaunch_and_check(store, postgres_url, "group")
    runs = len(training_runs(store))
    invoke(store, "depth", "--workers", "2", "--seeds", "0,1", "--dataset", "synthetic", "--set", f"{SLOW},depth=2", "--storage", postgres_url)
    assert len(training_runs(store)) == runs  # a third invocation trains nothing
    assert_exactly_once(store, "depth", 2)


# ---------------------------------------------------------------- the intervention chain


def test_intervention_links_every_alpha_run_to_its_phase1_run(store: LocalStore, monkeypatch: pytest.MonkeyPatch):
    # As under `mlflow run . -e sweep`: MLFLOW_RUN_ID is the parent; no worker may adopt it as its own run.
    outer = store.client.create_run(store.client.get_experiment_by_name("ncflow").experiment_id).info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", outer)
    output = invoke(store, "intervention", "--workers", "2", "--seeds", "0,1", "--dataset", "synthetic", "--set", f"{TINY},phase1_epochs=2,phase2_epochs=1")
    assert "8 points: 8 done" in output
    runs = training_runs(store)
    phase1 = {r.data.params["seed"]: r for r in runs if r.data.params["init_from"] == "none"}
    alphas = [r for r in runs if r.data.params["init_from"] != "none"]
    assert sorted(phase1) == ["0", "1"] and len(alphas) == 6
    for run in alphas:
        source = phase1[run.data.params["seed"]]
        assert run.data.params["init_from"] == source.info.run_id
        assert checkpoint_path(CHECKPOINT_PHASE1_END) in {a.path for a in store.client.list_artifacts(source.info.run_id, "checkpoints")}
    assert Counter((r.data.params["seed"], float(r.data.params["rescale_alpha"])) for r in alphas) == {
        (seed, alpha): 1 for seed in ("0", "1") for alpha in (1.0, 0.3, 3.0)}
    parent = store.client.get_run(outer)
    assert parent.data.tags[TAG_KIND] == KIND_SWEEP and parent.data.tags[TAG_SWEEP] == "intervention"
    assert "seed" not in parent.data.params  # no training run adopted MLFLOW_RUN_ID
    assert all(r.data.tags[TAG_PARENT_RUN] == outer and r.info.run_id != outer for r in runs)
