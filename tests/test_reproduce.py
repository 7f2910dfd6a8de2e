"""`ncflow reproduce`: the program's stages, the shared-condition de-duplication, the dry run's counts."""

from __future__ import annotations

from click.testing import CliRunner

from ncflow.cli.main import main
from ncflow.sweeps import reproduce

MNIST5K = {"dataset": "mnist-5k", "experiment": "ncflow", "tracking_uri": ""}


def test_depth_and_weight_decay_get_every_seed_first_then_one_seed_of_the_rest():
    stages = reproduce.program(reproduce.PROGRAM_SWEEPS, None, MNIST5K)
    labels = [stage.label for stage in stages]
    assert labels[:2] == ["depth (seeds 0,1,2)", "weight-decay (seeds 0,1,2)"]
    assert labels[2:7] == ["activation (seeds 0)", "width (seeds 0)", "protocol (seeds 0)", "intervention (seeds 0)",
                           "grid (seeds 0)"]
    assert labels[7:] == ["activation (seeds 0,1,2)", "width (seeds 0,1,2)", "protocol (seeds 0,1,2)",
                          "intervention (seeds 0,1,2)", "grid (seeds 0,1,2)"]
    # The grid keeps its own data sets (MNIST and CIFAR-10 cells); every other sweep trains on --dataset.
    assert "dataset" not in stages[6].overrides and stages[0].overrides["dataset"] == "mnist-5k"


def test_a_one_seed_stage_that_would_leave_workers_idle_is_left_to_its_every_seed_stage():
    runnable, _ = reproduce.plan_points(reproduce.program(("depth", "width"), None, MNIST5K))
    labels = [stage.label for stage, _ in runnable]
    assert labels == ["depth (seeds 0,1,2)", "width (seeds 0)", "width (seeds 0,1,2)"]
    width_seed0 = runnable[1][1]
    done = {point.key for _, points in runnable for point in points if point.seed == 0} - {width_seed0[0].key}
    # One width point of seed 0 left: with 2 workers its stage goes (the every-seed stage trains it, and seeds 1
    # and 2 beside it); with 1 worker, or with none of it left, the order stays as it is.
    assert [s.label for s, _ in reproduce.busy_stages(runnable, done, 2)] == [labels[0], labels[2]]
    assert [s.label for s, _ in reproduce.busy_stages(runnable, done, 1)] == labels
    everything = {point.key for _, points in runnable for point in points}
    assert [s.label for s, _ in reproduce.busy_stages(runnable, everything, 4)] == labels
    assert [s.label for s, _ in reproduce.busy_stages(runnable, set(), 4)] == labels  # 4 points left: no idler
    assert len(width_seed0) == 4 and [s.label for s, _ in reproduce.busy_stages(runnable, set(), 5)] == [labels[0], labels[2]]


def test_shared_conditions_are_planned_once():
    _, planned = reproduce.plan_points(reproduce.program(reproduce.PROGRAM_SWEEPS, None, MNIST5K))
    keys = [item.point.key for item in planned]
    assert len(keys) == len(set(keys))
    # The MLP-5 / ReLU / λ = 1e-4 / width-512 baseline of seed 0 is in five sweeps (and is the intervention's source).
    baseline = [item for item in planned if item.point.seed == 0 and set(item.sweeps) >= {"depth", "weight-decay"}]
    assert len(baseline) == 1
    assert set(baseline[0].sweeps) == {"depth", "weight-decay", "activation", "width", "protocol", "intervention"}
    # 12 depth + 9 more weight-decay + GELU (4 seeds) and tanh (3) + 9 width + 3 ce-only + 9 intervention α runs
    # = 49 trainable on mnist-5k (76 points across the sweeps); the grid's 12 cells need MNIST/CIFAR-10 files.
    trainable = [item for item in planned if item.skipped is None]
    assert len(trainable) == 12 + 9 + 7 + 9 + 3 + 9 == 49
    assert sum(len(item.sweeps) for item in planned) == 12 + 12 + 10 + 12 + 6 + 12 + 12 == 76
    skipped = [item for item in planned if item.skipped]
    assert len(skipped) == 12 and all("is not under data_dir=" in item.skipped for item in skipped)


def test_projection_sums_epochs_times_measured_epoch_seconds():
    _, planned = reproduce.plan_points(reproduce.program(("depth",), (0,), MNIST5K))
    points = [item.point for item in planned]
    measured = []

    def one_hundredth(config):
        measured.append(config.depth)
        return 0.01 * config.depth

    seconds, per_shape = reproduce.projected_seconds(points, workers=2, measure=one_hundredth)
    assert sorted(measured) == [2, 3, 5, 7]  # once per model shape
    assert seconds == (600 * 0.01 * (2 + 3 + 5 + 7)) / 2


def test_dry_run_lists_the_program_without_training(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.setattr(reproduce, "measure_epoch_seconds", lambda config: 0.2)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = CliRunner().invoke(main, ["reproduce", "--dataset", "mnist-5k", "--dry-run", "--tracking-uri", uri])
    assert result.exit_code == 0, result.output
    assert "61 distinct points (76 across the sweeps, 3 shared by several): 0 done, 49 todo, 12 skipped" in result.output
    # 49 runs × 600 epochs (the 9 α runs start at epoch 201: 400 epochs) × 0.2 s = 1.4 h with one worker.
    hours = (40 * 600 + 9 * 400) * 0.2 / 3600
    assert f"projected time for the todo points with 1 worker(s): {hours:.1f} h" in result.output
    bad = CliRunner().invoke(main, ["reproduce", "--sweeps", "depth,nope", "--dry-run", "--tracking-uri", uri])
    assert bad.exit_code == 2 and "--sweeps: expected names from depth" in bad.output
    bad = CliRunner().invoke(main, ["reproduce", "--pack", "x", "--dry-run", "--tracking-uri", uri])
    assert bad.exit_code == 2 and "Error: pack: expected a whole number >= 1 or auto, got 'x'" in bad.output
