"""Your own data: `--dataset FILE.npz|FILE.pt|FOLDER` read and checked (one-line errors, exit 2, before any run), its
path, sha256 and sizes in the run, trained end to end and listed by `ncflow-analysis runs`, and through a sweep."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from analysis.cli import main as analysis_main
from ncflow.cli.main import main
from ncflow.engine import own_data
from ncflow.engine.data import load_dataset
from ncflow.engine.own_data import OwnDataError
from ncshared import schema

TINY = ["--quiet", "--depth", "1", "--width", "8", "--phase1-epochs", "1", "--phase2-epochs", "1", "--no-log-model"]


def arrays(n_train: int = 12, n_test: int = 6, classes: int = 3, shape: tuple[int, ...] = (5,)) -> dict:
    """A small classification set: labels 0, 1, 2, 0, 1, 2, … (every class present), features of `shape`."""
    rng = np.random.default_rng(0)
    return {"x_train": rng.normal(size=(n_train, *shape)).astype(np.float32), "y_train": np.arange(n_train) % classes,
            "x_test": rng.normal(size=(n_test, *shape)).astype(np.float32), "y_test": np.arange(n_test) % classes}


def npz(path: Path, **values) -> str:
    np.savez(path, **values)
    return str(path)


@pytest.mark.parametrize("shape, stored", [((5,), (5, 1, 1)), ((4, 3), (1, 4, 3)), ((2, 4, 3), (2, 4, 3))])
def test_features_and_images_of_any_real_dtype_become_normalised_images(tmp_path, shape, stored):
    values = arrays(shape=shape)
    values["x_train"] = (values["x_train"] * 10).astype(np.int16)  # any integer or float dtype is read as float32
    values["y_train"] = values["y_train"].astype(np.uint8)
    data = load_dataset(npz(tmp_path / "mine.npz", **values))
    assert (data.input_shape, data.num_classes, len(data.train_y), len(data.test_y)) == (stored, 3, 12, 6)
    assert data.train_x.dtype == torch.float32 and data.train_y.dtype == torch.int64
    assert data.train_y.tolist() == [0, 1, 2] * 4
    # (N, d) features are d channels of 1×1: each feature normalised on its own (training set mean 0, std 1).
    means = data.train_x.double().mean(dim=(0, 2, 3))
    assert torch.allclose(means, torch.zeros_like(means), atol=1e-6)


def test_a_pt_file_of_tensors_reads_like_the_npz_and_the_digest_is_the_files_sha256(tmp_path):
    values = arrays()
    path = tmp_path / "mine.pt"
    torch.save({key: torch.from_numpy(np.asarray(value)) for key, value in values.items()}, path)
    from_pt, from_npz = own_data.load(str(path)), own_data.load(npz(tmp_path / "mine.npz", **values))
    assert torch.equal(from_pt.train_x, from_npz.train_x) and torch.equal(from_pt.test_y, from_npz.test_y)
    assert from_pt.file.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert (from_pt.file.path, from_pt.file.sizes) == (str(path), "12 train / 6 test, 5x1x1, 3 classes")


def bad_cases(tmp_path: Path) -> list[tuple[str, str]]:
    """(dataset, the one line it gets)."""
    good = arrays()
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "folder" / "train").mkdir(parents=True, exist_ok=True)
    return [
        (str(tmp_path / "absent.npz"), f"no file or folder '{tmp_path / 'absent.npz'}'"),
        (str(tmp_path / "notes.txt"), "is not a .npz or .pt file"),
        (str(tmp_path / "folder"), "has no test/"),
        (npz(tmp_path / "lacks.npz", x_train=good["x_train"], y_train=good["y_train"], x_test=good["x_test"]),
         "lacks y_test (it has x_train, y_train, x_test; needed: x_train, y_train, x_test, y_test)"),
        (npz(tmp_path / "range.npz", **{**good, "y_test": np.array([0, 1, 2, 3, 0, 1])}),
         "y_test has labels from 0 to 3; labels must be in [0, K) with K = max(y_train) + 1 = 3"),
        (npz(tmp_path / "negative.npz", **{**good, "y_train": good["y_train"] - 1}), "y_train has labels from -1 to 1"),
        (npz(tmp_path / "count.npz", **{**good, "y_train": good["y_train"][:10]}),
         "y_train has shape (10,), expected (12,): one label per sample of x_train"),
        (npz(tmp_path / "sample.npz", **{**good, "x_test": np.zeros((6, 4), np.float32)}),
         "x_train samples are (5,), x_test samples are (4,); they must be the same"),
        (npz(tmp_path / "floats.npz", **{**good, "y_train": good["y_train"].astype(np.float32)}),
         "y_train must hold integer class labels, got dtype float32"),
        (npz(tmp_path / "nan.npz", **{**good, "x_train": np.full((12, 5), np.nan, np.float32)}),
         "x_train holds non-finite values"),
        (npz(tmp_path / "gap.npz", **{**good, "y_train": np.arange(12) % 3 * 2 % 5}),
         "y_train has no sample of class 1, 3; every class in [0, 5) needs training samples"),
        (npz(tmp_path / "flat.npz", **{**good, "x_train": np.zeros(12, np.float32)}),
         "x_train must be (N, d), (N, H, W) or (N, C, H, W) with N >= 1, got shape (12,)"),
    ]


def test_every_problem_is_one_line_naming_the_file(tmp_path):
    for dataset, message in bad_cases(tmp_path):
        with pytest.raises(OwnDataError) as raised:
            own_data.load(dataset)
        text = str(raised.value)
        assert message in text and "\n" not in text, (dataset, text)


def test_the_cli_refuses_bad_data_in_one_line_exit_2_before_any_run(cli_store, tmp_path):
    from mlflow.tracking import MlflowClient

    cases = bad_cases(tmp_path)
    for dataset, message in cases[:1] + cases[3:5]:
        result = CliRunner().invoke(main, ["train", "--dataset", dataset, *TINY])
        lines = [line for line in result.output.splitlines() if line.startswith("Error")]
        assert result.exit_code == 2 and lines == [result.output.strip().splitlines()[-1]], result.output
        assert lines[0].startswith("Error: dataset: ") and message in lines[0], lines
    assert MlflowClient(cli_store).search_experiments()[0].name == "Default"  # nothing was created


def test_an_image_folder_reads_through_imagefolder_with_its_class_folders(tmp_path):
    root = tmp_path / "pictures"
    for split, count in (("train", 3), ("test", 1)):
        for label, shade in (("cat", 40), ("dog", 200)):
            (root / split / label).mkdir(parents=True)
            for index in range(count):
                image = Image.fromarray(np.full((6, 5), shade + index, np.uint8), mode="L")
                image.save(root / split / label / f"{index}.png")
    data = load_dataset(str(root))
    assert (data.input_shape, data.num_classes, data.train_y.tolist(), data.test_y.tolist()) == \
           ((1, 6, 5), 2, [0, 0, 0, 1, 1, 1], [0, 1])
    assert data.file.sizes == "6 train / 2 test, 1x6x5, 2 classes" and len(data.file.sha256) == 64
    Image.fromarray(np.zeros((7, 5), np.uint8), mode="L").save(root / "test" / "dog" / "big.png")
    with pytest.raises(OwnDataError, match=r"test/dog/big.png is 1x7x5, test/cat/0.png is 1x6x5; every image must"):
        own_data.load(str(root))


@pytest.mark.heavy
def test_a_run_trained_from_an_npz_records_it_and_appears_in_ncflow_analysis_runs(cli_store, tmp_path):
    path = npz(tmp_path / "my_data.npz", **arrays())
    trained = CliRunner().invoke(main, ["train", "--dataset", "./my_data.npz", *TINY])  # relative to the cwd
    assert trained.exit_code == 0, trained.output
    from mlflow.tracking import MlflowClient

    client = MlflowClient(cli_store)
    (run,) = client.search_runs([client.get_experiment_by_name("ncflow").experiment_id])
    tags = run.data.tags
    assert run.data.params["dataset"] == "./my_data.npz"
    assert (tags[schema.TAG_DATA_PATH], tags[schema.TAG_DATA_SIZES]) == (path, "12 train / 6 test, 5x1x1, 3 classes")
    assert tags[schema.TAG_DATA_SHA256] == hashlib.sha256(Path(path).read_bytes()).hexdigest()
    listed = CliRunner().invoke(analysis_main, ["runs"])
    assert listed.exit_code == 0, listed.output
    (line,) = [line for line in listed.output.splitlines() if "my_data" in line]
    assert line.split()[0] == "mlp1-relu-w8-wd2e-04-my_data-s0" and "not_collapsed" in line


@pytest.mark.heavy
def test_a_sweep_passes_the_file_to_its_workers_and_refuses_a_bad_one_before_any_run(cli_store, tmp_path):
    npz(tmp_path / "my_data.npz", **arrays())
    npz(tmp_path / "broken.npz", **{**arrays(), "y_test": np.array([5] * 6)})
    spec = tmp_path / "mine.yaml"
    spec.write_text("name: mine\nfixed: {width: 8, phase1_epochs: 1, phase2_epochs: 1}\n"
                    "grid: {depth: [1]}\nseeds: [0]\n")
    refused = CliRunner().invoke(main, ["sweep", "--spec", str(spec), "--dataset", "broken.npz", "--quiet"])
    assert refused.exit_code == 2 and "Error: dataset: 'broken.npz': y_test has labels from 5 to 5" in refused.output
    from mlflow.tracking import MlflowClient

    client = MlflowClient(cli_store)
    assert client.get_experiment_by_name("ncflow") is None or not client.search_runs(
        [client.get_experiment_by_name("ncflow").experiment_id])
    swept = CliRunner().invoke(main, ["sweep", "--spec", str(spec), "--dataset", "my_data.npz", "--quiet"])
    assert swept.exit_code == 0, swept.output
    runs = client.search_runs([client.get_experiment_by_name("ncflow").experiment_id],
                              filter_string=f"tags.`{schema.TAG_KIND}` = 'train'")
    assert [(run.data.params["dataset"], run.data.tags[schema.TAG_DATA_SIZES]) for run in runs] == \
           [("my_data.npz", "12 train / 6 test, 5x1x1, 3 classes")]
