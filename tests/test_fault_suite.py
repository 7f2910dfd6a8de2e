"""The fault suite: every path-taking option given an unwritable path, every store option a damaged or unusable store,
every numeric option nan, ±inf, 0, a negative and a huge value — one line on stderr, exit code 2, no MLflow run.

Table-driven: the cases are products of the tables below (the numeric options derived from `RunConfig`'s field
types), so a new option or field is tried by adding a row, not a test. Nearly every case runs the real command line
in-process (click's CliRunner) against one temp sqlite store; a few run as real processes (the console entry, a
SIGTERM).
"""

from __future__ import annotations

import math
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, fields
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from analysis.cli import main as analysis_main
from ncflow.cli.main import main as ncflow_main
from ncflow.engine.config import ConfigError, build_config
from ncshared.run_config import RunConfig
from tests.mlflow_fixtures import free_port

TINY = ["--quiet", "--depth", "2", "--width", "16", "--phase1-epochs", "2", "--phase2-epochs", "2"]
TINY_FIELDS = {"depth": "2", "width": "16", "phase1_epochs": "2", "phase2_epochs": "2"}
SWEEP = ["depth", "--seeds", "0", "--dataset", "digits", "--set", "phase1_epochs=1,phase2_epochs=1,width=16", "--quiet"]
REPRODUCE = ["--dataset", "mnist-5k", "--sweeps", "depth", "--seeds", "0", "--set", "phase1_epochs=1,phase2_epochs=1",
             "--quiet"]
NO_RUN = "0" * 32  # a run id no store has
MLFLOW_LOG = re.compile(r"\d{4}/\d\d/\d\d [\d:]+ INFO mlflow\.")  # MLflow's own INFO lines (a fresh store)
CLIS = {"ncflow": ncflow_main, "ncflow-analysis": analysis_main}


@dataclass(frozen=True)
class World:
    root: Path  # the working directory: a regular file `afile`, a directory `plain-dir`, damaged stores
    db: Path  # the temp store every command uses unless told otherwise (it must stay without runs)

    @property
    def uri(self) -> str:
        return f"sqlite:///{self.db}"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, mlflow_template_db: Path) -> World:
    root = tmp_path_factory.mktemp("faults")
    shutil.copyfile(mlflow_template_db, root / "mlflow.db")
    (root / "afile").write_text("a regular file where a directory is expected\n")
    (root / "plain-dir").mkdir()
    page = 4096
    for name, damage in DAMAGES.items():
        shutil.copyfile(mlflow_template_db, root / name)
        with open(root / name, "r+b") as handle:
            damage(handle, page)
    return World(root, root / "mlflow.db")


@pytest.fixture
def in_world(world: World, monkeypatch: pytest.MonkeyPatch) -> World:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", world.uri)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.setenv("NCFLOW_ANALYSIS_CACHE", str(world.root / "cache"))
    monkeypatch.chdir(world.root)
    return world


def runs_in(db: Path) -> int:
    with sqlite3.connect(db) as connection:
        return connection.execute("SELECT COUNT(*) FROM runs").fetchone()[0]


@dataclass(frozen=True)
class Outcome:
    result: Result
    new_runs: int  # runs the command left in the world's store


def invoke(cli: str, args: list[str], world: World) -> Outcome:
    before = runs_in(world.db)
    result = CliRunner().invoke(CLIS[cli], args)
    return Outcome(result, runs_in(world.db) - before)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip() and not MLFLOW_LOG.match(line)]


def assert_refused(outcome: Outcome, *mentions: str) -> str:
    """Exit 2, nothing on stdout, one `Error: …` line on stderr mentioning each of `mentions`, no run; that line."""
    result = outcome.result
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    lines = error_lines(result.stderr)
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert all(mention in lines[0] for mention in mentions), lines[0]
    assert result.stdout == "" and "Traceback" not in result.output, result.output
    assert outcome.new_runs == 0
    return lines[0]


# ------------------------------------------------------------------------------ unwritable paths

# Three kinds of path nothing can be written under — by root too, so no permission bits.
UNWRITABLE = {
    "a-file": "{root}/afile",
    "under-a-file": "{root}/afile/sub",
    "under-proc": "/proc/ncflow-fault-suite/sub",
}

# (command line, its args with {P} for the path, the parameter the error names, extra environment)
PATH_OPTIONS: list[tuple[str, list[str], str, dict[str, str]]] = [
    ("ncflow", ["train", *TINY, "--record-dir", "{P}"], "--record-dir:", {}),
    ("ncflow", ["train", *TINY, "--seeds", "0,1", "--record-dir", "{P}"], "--record-dir:", {}),
    ("ncflow", ["train", "--resume", NO_RUN, "--record-dir", "{P}"], "--record-dir:", {}),
    ("ncflow", ["train", *TINY], "NCFLOW_RECORD_DIR:", {"NCFLOW_RECORD_DIR": "{P}"}),
    ("ncflow", ["train", *TINY, "--dataset", "mnist", "--data-dir", "{P}"], "data_dir:", {}),
    ("ncflow", ["train", *TINY, "--tracking-uri", "sqlite:///{P}/mlflow.db"], "tracking_uri:", {}),
    ("ncflow", ["runs", "--stale", "--tracking-uri", "sqlite:///{P}/mlflow.db"], "tracking_uri:", {}),
    ("ncflow", ["sweep", *SWEEP, "--storage", "{P}/optuna.journal"], "--storage:", {}),
    ("ncflow", ["sweep", *SWEEP, "--storage", "sqlite:///{P}/optuna.db"], "--storage:", {}),
    ("ncflow", ["sweep", *SWEEP, "--storage", "{root}/j.journal"], "NCFLOW_RECORD_DIR:", {"NCFLOW_RECORD_DIR": "{P}"}),
    ("ncflow", ["sweep", *SWEEP, "--tracking-uri", "sqlite:///{P}/mlflow.db", "--dry-run"], "tracking_uri:", {}),
    ("ncflow", ["reproduce", *REPRODUCE, "--out", "{P}"], "--out:", {}),
    ("ncflow", ["reproduce", *REPRODUCE, "--storage", "{P}/optuna.journal"], "--storage:", {}),
    ("ncflow", ["reproduce", *REPRODUCE, "--tracking-uri", "sqlite:///{P}/m.db", "--dry-run"], "tracking_uri:", {}),
    *[("ncflow-analysis", [command, "--tracking-uri", "sqlite:///{P}/mlflow.db"], "tracking_uri:", {})
      for command in ("runs", "tables", "figures", "report")],
    *[("ncflow-analysis", [command, "--cache-dir", "{P}"], "--cache-dir:", {})
      for command in ("runs", "tables", "figures", "report")],
    *[("ncflow-analysis", [command, "--out", "{P}"], "--out:", {}) for command in ("tables", "figures", "report")],
]


def path_case_id(cli: str, args: list[str], env: dict[str, str]) -> str:
    """`ncflow train --record-dir`, `ncflow sweep NCFLOW_RECORD_DIR`: the command and what takes the path."""
    takes = [args[i - 1] for i, arg in enumerate(args) if "{P}" in arg] or list(env)
    how = "".join(f" {flag}" for flag in ("--seeds", "--resume") if flag in args and args[0] == "train")
    return f"{cli} {args[0]}{how} {takes[0]}"


@pytest.mark.parametrize("kind", list(UNWRITABLE))

@pytest.mark.parametrize("cli, args, parameter, env", PATH_OPTIONS,
                         ids=[path_case_id(cli, args, env) for cli, args, _, env in PATH_OPTIONS])
def test_an_unwritable_path_is_one_line_before_any_run(in_world, monkeypatch, cli, args, parameter, env, kind):
    path = UNWRITABLE[kind].format(root=in_world.root)
    for name, value in env.items():
        monkeypatch.setenv(name, value.format(P=path, root=in_world.root))
    outcome = invoke(cli, [arg.format(P=path, root=in_world.root) for arg in args], in_world)
    assert_refused(outcome, parameter.rstrip(":"))  # `--out: …`, or click's `'--out': … is a file`


# ------------------------------------------------------------------------------ damaged and unusable stores

DAMAGES = {  # a copy of a real (migrated, empty) store, then …
    "garbage.db": lambda handle, page: (handle.seek(page), handle.write(b"\xa5" * 40 * page)),
    "truncated.db": lambda handle, page: handle.truncate(3 * page),
    "overwritten-header.db": lambda handle, page: (handle.seek(0), handle.write(b"not sqlite at all" * 4)),
}
STORES = {
    **{name.removesuffix(".db"): "sqlite:///{root}/" + name for name in DAMAGES},
    "a-directory": "sqlite:///{root}/plain-dir",
    "file-store-missing-dir": "file:///{root}/no-such-dir",
    "file-store-existing-dir": "file:///{root}/plain-dir",
    "bare-path": "{root}/plain-dir",
    "unknown-scheme": "bogus://somewhere",
    "silent-server": "http://127.0.0.1:{port}",
}
STORE_COMMANDS: list[tuple[str, list[str]]] = [
    ("ncflow", ["train", *TINY]),
    ("ncflow", ["train", "--resume", NO_RUN]),
    ("ncflow", ["runs", "--stale"]),
    ("ncflow", ["sweep", *SWEEP, "--dry-run"]),
    ("ncflow", ["reproduce", *REPRODUCE, "--dry-run"]),
    *[("ncflow-analysis", [command, "--no-progress"]) for command in ("runs", "tables", "figures", "report")],
]


@pytest.mark.parametrize("store", list(STORES))
@pytest.mark.parametrize("cli, args", STORE_COMMANDS, ids=[f"{cli} {args[0]}{' --resume' if '--resume' in args else ''}"
                                                             for cli, args in STORE_COMMANDS])
def test_a_damaged_or_unusable_store_is_one_line(in_world, cli, args, store):
    uri = STORES[store].format(root=in_world.root, port=free_port())
    line = assert_refused(invoke(cli, [*args, "--tracking-uri", uri], in_world), "tracking_uri:", uri)
    if store.startswith(("garbage", "truncated")):
        assert "database disk image is malformed" in line  # MLflow's (sqlite's) own reason kept
    if store.startswith(("file-store", "bare-path")):
        assert "MLFLOW_ALLOW_FILE_STORE=true" in line and "sqlite:///FILE.db" in line


# ------------------------------------------------------------------------------ numeric options

NUMERIC_TYPES = ("int", "float", "tuple[int, ...]")
NUMERIC_FIELDS = [field.name for field in fields(RunConfig) if field.type in NUMERIC_TYPES]
BAD_NUMBERS = ("nan", "inf", "-inf", "0", "-1", "1e300")
PYTHON_TYPES = re.compile(r"\b(int|float|tuple\[|str)\b")


def accepted(name: str, value: str) -> bool:
    try:
        build_config(None, {**TINY_FIELDS, name: value})
    except ConfigError:
        return False
    return True


def test_the_numeric_fields_are_derived_from_the_run_config():
    assert {"depth", "lr", "milestones", "seed", "rescale_alpha", "imbalance_ratio"} <= set(NUMERIC_FIELDS)
    assert "dataset" not in NUMERIC_FIELDS and "nesterov" not in NUMERIC_FIELDS


@pytest.mark.parametrize("value", BAD_NUMBERS)
@pytest.mark.parametrize("name", NUMERIC_FIELDS)
@pytest.mark.parametrize("form", ["train --option", "sweep --set"])
def test_a_numeric_field_takes_only_finite_allowed_values(in_world, form, name, value):
    if accepted(name, value):  # allowed (e.g. seed 0, lr 1e300): never a non-finite number
        assert math.isfinite(float(value)), f"{name}={value} accepted"
        return
    if form == "train --option":
        outcome = invoke("ncflow", ["train", *TINY, f"--{name.replace('_', '-')}", value], in_world)
    else:
        outcome = invoke("ncflow", ["sweep", *SWEEP, "--set", f"{name}={value}", "--dry-run"], in_world)
    line = assert_refused(outcome, name)
    assert not PYTHON_TYPES.search(line.split(":", 2)[-1]) and len(line) < 300, line


# The command lines' own numeric options (not RunConfig fields), each with the values it must refuse.
CLI_NUMBERS: list[tuple[list[str], str, tuple[str, ...]]] = [
    (["train", *TINY, "--ship-timeout"], "ship_timeout", ("nan", "inf", "-inf", "-1")),
    (["sweep", *SWEEP, "--dry-run", "--workers"], "workers", ("nan", "inf", "-inf", "0", "-1", "1.5")),
    (["reproduce", *REPRODUCE, "--dry-run", "--workers"], "workers", ("nan", "inf", "-inf", "0", "-1", "1.5")),
]


@pytest.mark.parametrize("args, name, value", [(args, name, value) for args, name, values in CLI_NUMBERS
                                               for value in values],
                         ids=[f"{args[0]} {name}={value}" for args, name, values in CLI_NUMBERS for value in values])
def test_a_command_line_number_is_refused_in_one_line(in_world, args, name, value):
    assert_refused(invoke("ncflow", [*args, value], in_world), f"{name}: expected")


# ------------------------------------------------------------------------------ the smaller points


@pytest.mark.parametrize("args", [
    ["train", *TINY, "--seeds", "0,0"],
    ["sweep", *SWEEP[:1], "--seeds", "1,1", "--dry-run"],
    ["reproduce", *REPRODUCE[:4], "--seeds", "2,0,2", "--dry-run"],
], ids=["train", "sweep", "reproduce"])
def test_a_seed_given_twice_is_refused(in_world, args):
    assert_refused(invoke("ncflow", args, in_world), "--seeds: seed", "given more than once")


def test_a_wrong_choice_is_one_line_not_clicks_usage_block(in_world):
    assert_refused(invoke("ncflow-analysis", ["report", "--compare", "papers"], in_world),
                   "'--compare'", "'papers' is not one of 'paper', 'none'")
    assert_refused(invoke("ncflow", ["train", "--preset", "paper"], in_world), "'--preset'", "paper-mnist-mlp")


def test_a_yaml_syntax_error_names_its_line_and_column(in_world):
    spec = in_world.root / "broken.yaml"
    spec.write_text("name: mine\ngrid:\n  depth: [2, 3\nseeds: [0]\n")
    assert_refused(invoke("ncflow", ["sweep", "--spec", str(spec), "--dry-run"], in_world),
                   "--spec: cannot read", "line 4, column 6: expected ',' or ']'", "starts at line 3, column 10")


# ------------------------------------------------------------------------------ as real processes


ROOT = Path(__file__).resolve().parent.parent  # this checkout's code, also in the child processes


def child_environment(tracking_uri: str) -> dict[str, str]:
    return {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def run_process(module: str, args: list[str], world: World) -> subprocess.CompletedProcess:
    environment = child_environment(world.uri)
    return subprocess.run([sys.executable, "-m", module, *args], cwd=world.root, env=environment,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("module, args", [
    ("ncflow.cli", ["train", *TINY, "--record-dir", "{root}/afile/records"]),
    ("analysis.cli", ["report", "--tracking-uri", "sqlite:///{root}/garbage.db"]),
], ids=["ncflow train --record-dir", "ncflow-analysis report --tracking-uri"])
def test_the_real_entry_points_print_one_line_and_exit_2(world, module, args):
    before = runs_in(world.db)
    done = run_process(module, [arg.format(root=world.root) for arg in args], world)
    assert done.returncode == 2 and done.stdout == "", done.stderr[-3000:]
    assert len(error_lines(done.stderr)) == 1 and done.stderr.startswith("Error: "), done.stderr[-3000:]
    assert runs_in(world.db) == before


def test_sigterm_names_the_run_and_how_to_resume_it(tmp_path, mlflow_template_db):
    shutil.copyfile(mlflow_template_db, tmp_path / "mlflow.db")
    records = tmp_path / "records"
    command = [sys.executable, "-m", "ncflow.cli", "train", *TINY[:5], "--phase1-epochs", "2",
               "--phase2-epochs", "5000", "--record-dir", str(records)]
    environment = child_environment(f"sqlite:///{tmp_path / 'mlflow.db'}")
    process = subprocess.Popen(command, cwd=tmp_path, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    deadline = time.monotonic() + 90
    while not any('"type":"metrics"' in path.read_text() for path in records.glob("*/journal.jsonl")):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=60)
    (run_dir,) = [path for path in records.iterdir() if path.is_dir()]
    assert process.returncode == 1 and stdout == "", stderr
    assert error_lines(stderr) == [f"Error: stopped by SIGTERM: run {run_dir.name} ended KILLED; continue with: "
                                   f"ncflow train --resume {run_dir.name} --record-dir {records}"]
    with sqlite3.connect(tmp_path / "mlflow.db") as connection:
        assert connection.execute("SELECT status FROM runs").fetchall() == [("KILLED",)]
