"""Provenance and bit-for-bit reruns: what a run records about its code, software, numerics and data, and that
`--deterministic --threads N` reruns are identical bit for bit."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from ncflow.cli.main import main
from ncflow.engine import run_setup
from ncflow.engine.config import build_config
from ncflow.tracked import pack_train, provenance
from ncshared import provenance as code_provenance
from ncshared import schema
from ncshared.run_config import RunConfig

TINY = ["--dataset", "synthetic", "--synthetic-classes", "4", "--synthetic-shape", "1x4x4", "--synthetic-per-class",
        "16", "--depth", "2", "--width", "16", "--batch-size", "16", "--phase1-epochs", "2", "--phase2-epochs", "2"]


def runs_of(uri: str) -> list:
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("ncflow")
    return client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])


def git(directory: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=directory, check=True, capture_output=True)


def test_a_run_records_its_software_numerics_code_and_data(cli_store):
    result = CliRunner().invoke(main, ["train", "--quiet", *TINY, "--threads", "1", "--deterministic"])
    assert result.exit_code == 0, result.output
    [run] = runs_of(cli_store)
    tags, client = run.data.tags, MlflowClient(cli_store)
    assert run.data.params["threads"] == "1" and run.data.params["deterministic"] == "true"
    assert set(schema.PROVENANCE_TAGS) <= set(tags)
    assert tags[schema.TAG_TORCH] == torch.__version__ and tags[schema.TAG_PYTHON].startswith("3.")
    assert tags[schema.TAG_DEVICE] == "cpu" and tags[schema.TAG_CUDA] == "none" and tags[schema.TAG_CUDNN] == "none"
    assert tags[schema.TAG_DEVICE_MODEL] == code_provenance.cpu_model()
    assert tags[schema.TAG_THREADS] == "1" and tags[schema.TAG_DETERMINISTIC] == "true"
    assert tags[schema.TAG_MATMUL_PRECISION] == "highest"
    assert tags[schema.TAG_DATA] == "synthetic: 64 train / 16 test, 1x4x4, 4 classes"
    # The digest is the loaded data's: the engine's tensors, hashed here again.
    data = run_setup.prepare(build_config(None, {"dataset": "synthetic", "synthetic_classes": "4",
                                                 "synthetic_shape": "1x4x4", "synthetic_per_class": "16"})).data
    splits = {"train": provenance.tensor_digest(data.train_x, data.train_y),
              "test": provenance.tensor_digest(data.test_x, data.test_y)}
    assert tags[schema.TAG_DATA_DIGEST] == provenance.data_digest(splits) and splits["train"] != splits["test"]
    state = code_provenance.code_state()
    assert tags[schema.TAG_GIT_COMMIT] == state.commit
    diff_files = {a.path for a in client.list_artifacts(run.info.run_id, "provenance")}
    assert (tags[schema.TAG_GIT_DIRTY] == "true") == (diff_files == {schema.GIT_DIFF_FILE})
    # The data as two dataset inputs, one per split, each with its own digest and shapes.
    inputs = {item.tags[0].value: item.dataset for item in run.inputs.dataset_inputs}
    assert set(inputs) == {"train", "test"} and all(item.tags[0].key == "mlflow.data.context"
                                                     for item in run.inputs.dataset_inputs)
    assert inputs["train"].name == "synthetic" and inputs["train"].source_type == "code"
    assert inputs["train"].digest == provenance.tensor_digest(data.train_x, data.train_y)
    assert '"features_shape": [64, 1, 4, 4]' in inputs["train"].profile
    assert '"features_shape": [16, 1, 4, 4]' in inputs["test"].profile
    note = tags[schema.TAG_NOTE]
    assert f"- numerics: cpu ({code_provenance.cpu_model()}), 1 thread, float32 matmul precision highest, " \
           "deterministic true" in note
    assert f"torch {torch.__version__}" in note and f"commit `{state.commit[:12]}`" in note


def test_deterministic_reruns_are_identical_bit_for_bit(cli_store):
    for _ in range(2):
        result = CliRunner().invoke(main, ["train", "--quiet", *TINY, "--threads", "2", "--deterministic"])
        assert result.exit_code == 0, result.output
    first, second = runs_of(cli_store)
    assert first.data.tags[schema.TAG_THREADS] == second.data.tags[schema.TAG_THREADS] == "2"
    client = MlflowClient(cli_store)
    for key in set(schema.PER_EPOCH_METRICS) - {schema.EPOCH_TIME}:
        values = [[(m.step, m.value) for m in sorted(client.get_metric_history(run.info.run_id, key),
                                                      key=lambda m: m.step)] for run in (first, second)]
        assert len(values[0]) == 4 and values[0] == values[1], key  # == on floats: equal bit for bit
    assert first.data.metrics[schema.NC1] == second.data.metrics[schema.NC1]


def test_threads_and_determinism_are_set_per_run_and_restored():
    run_setup.set_numerics(RunConfig(threads=1, deterministic=True), torch.device("cpu"))
    assert torch.get_num_threads() == 1 and torch.are_deterministic_algorithms_enabled()
    run_setup.set_numerics(RunConfig(), torch.device("cpu"))  # threads 0: the process's own count again
    assert torch.get_num_threads() == run_setup._DEFAULT_THREADS[0]
    assert not torch.are_deterministic_algorithms_enabled()


def test_threads_out_of_range_is_one_line():
    result = CliRunner().invoke(main, ["train", "--threads", "-1"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1] == \
        "Error: threads: expected 0 (torch's default) or a whole number up to 1024, got -1"


def test_pack_members_record_their_provenance(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    base = {"dataset": "synthetic", "synthetic_classes": "4", "synthetic_shape": "1x4x4", "synthetic_per_class": "16",
            "depth": "2", "width": "16", "batch_size": "16", "phase1_epochs": "1", "phase2_epochs": "1",
            "tracking_uri": uri, "threads": "1"}
    results = pack_train.train_pack([build_config(None, {**base, "seed": seed}) for seed in ("0", "1")],
                                    progress=False, record_dir=tmp_path / "records")
    client = MlflowClient(uri)
    for result in results:
        run = client.get_run(result.run_id)
        assert run.data.tags[schema.TAG_THREADS] == "1" and len(run.inputs.dataset_inputs) == 2


def test_git_state_of_a_checkout_clean_dirty_and_copied(tmp_path):
    repo = tmp_path / "repo"
    (repo / "pkg").mkdir(parents=True)
    (repo / "pkg" / "code.py").write_text("x = 1\n")
    (repo / ".gitignore").write_text("ignored/\n")
    git(repo, "init", "-q")
    git(repo, "add", ".")
    git(repo, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "one")
    clean = code_provenance.git_state(repo / "pkg")
    assert len(clean.commit) == 40 and clean.dirty is False and clean.diff == ""
    (repo / "pkg" / "code.py").write_text("x = 2\n")
    (repo / "pkg" / "new.py").write_text("y = 3\n")
    dirty = code_provenance.git_state(repo / "pkg")
    assert dirty.commit == clean.commit and dirty.dirty is True
    assert "-x = 1\n+x = 2\n" in dirty.diff and "+++ b/pkg/new.py" in dirty.diff and "+y = 3" in dirty.diff
    # A copy of the code in an ignored folder is not the checkout's code: unknown, unless stamped.
    (repo / "ignored" / "code").mkdir(parents=True)
    assert code_provenance.git_state(repo / "ignored" / "code") == code_provenance.GitState("unknown", None)
    assert code_provenance.read_stamp(repo / "ignored" / "code") is None
    stamped = code_provenance.write_stamp(repo, repo / "ignored" / "code")
    assert stamped == dirty and code_provenance.read_stamp(repo / "ignored" / "code") == dirty
    assert code_provenance.git_state(tmp_path) == code_provenance.GitState("unknown", None)  # no checkout at all


def test_a_data_set_given_as_a_file_names_the_file_as_its_source(tmp_path):
    path = tmp_path / "mine.npz"
    data = run_setup.prepare(build_config(None, {"dataset": "synthetic", "synthetic_classes": "3",
                                                 "synthetic_per_class": "8"})).data
    train, test = provenance.dataset_inputs(RunConfig(dataset=str(path)), data)
    assert train.dataset.name == "mine.npz" and train.dataset.source_type == "local"
    assert train.dataset.source == f'{{"uri": "{path}"}}'
    assert [tag.value for tag in (*train.tags, *test.tags)] == ["train", "test"]


@pytest.mark.parametrize(("logged", "now", "said"), [
    ({schema.TAG_THREADS: "2", schema.TAG_TORCH: "2.4.1"}, {schema.TAG_THREADS: "1", schema.TAG_TORCH: "2.4.1"},
     "threads 2 → 1"),
    ({schema.TAG_GIT_COMMIT: "a", schema.TAG_DEVICE: "cuda"}, {schema.TAG_GIT_COMMIT: "b", schema.TAG_DEVICE: "cpu"},
     "git_commit a → b; device cuda → cpu"),
    ({}, {schema.TAG_THREADS: "1"}, ""),  # a run from before provenance: nothing to compare
])
def test_what_a_resume_changed(logged, now, said):
    assert provenance.resumed_with(logged, now) == said
