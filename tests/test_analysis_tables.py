"""analysis.tables (with analysis.aggregate's estimates): the paper's tables from a real MLflow store (through
analysis.store) and from toy frames.

The store fixture logs runs exactly as training does (tests/mlflow_fixtures.py), with NC1 and fn curves built
so that T_NC and fn* are known by construction: NC1 crosses ε at the chosen epoch and fn* = fn there.
Toy frames for the statistics-heavy tables are assembled by `analysis.store.runs_frame`, the same code that
`load_runs` uses, so they have the store's schema.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from analysis import early_warning, selection, stats, store, tables
from analysis.aggregate import Estimates
from ncshared import schema as c
from tests import mlflow_fixtures as fx

PHASE1, EPOCHS = 10, 40


def _log(client: MlflowClient, experiment_id: str, depth: int, seed: int, t_nc: int | None, fn_star: float,
         **kwargs: object) -> str:
    """A run whose NC1 crosses ε at exactly t_nc (None: stalls at 0.03) and whose fn equals fn_star there."""
    eps = 0.05 if depth <= 3 else 0.01
    nc1 = fx.nc1_trajectory(EPOCHS, PHASE1, t_nc, eps) if t_nc else np.full(EPOCHS, 0.03)
    fn = fx.fn_trajectory(EPOCHS, PHASE1, t_nc or EPOCHS, fn_star)
    return fx.log_fake_training_run(client, experiment_id, depth=depth, seed=seed, nc1_curve=nc1, fn_curve=fn,
                                    phase1_epochs=PHASE1, **kwargs)


@pytest.fixture(scope="module")
def store_frames(tmp_path_factory: pytest.TempPathFactory) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A depth sweep (5: 3 seeds; 7: 2 seeds + 1 diverged + 1 failed) and a weight-decay sweep whose λ = 1e-4
    point is the depth sweep's depth-5 condition (trained once) and whose λ = 5e-4 never collapses."""
    root = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{root}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    experiment_id = client.create_experiment(c.DEFAULT_EXPERIMENT, artifact_location=(root / "artifacts").as_uri())
    parent = fx.log_sweep_parent(client, experiment_id, "depth")
    for seed, (t_nc, fn_star) in enumerate([(25, 1.0), (27, 1.1), (29, 1.2)]):
        _log(client, experiment_id, 5, seed, t_nc, fn_star, sweep="depth", parent_run_id=parent)
    for seed, (t_nc, fn_star) in enumerate([(30, 1.3), (34, 1.5)]):
        _log(client, experiment_id, 7, seed, t_nc, fn_star, sweep="depth", parent_run_id=parent)
    _log(client, experiment_id, 7, 2, None, 1.0, sweep="depth", status="diverged")
    _log(client, experiment_id, 7, 3, None, 1.0, sweep="depth", status="failed")
    for seed in range(3):
        _log(client, experiment_id, 5, seed, None, 1.0, sweep="weight_decay", params={"weight_decay": "5e-4"})
    runs = store.load_runs(uri)
    return runs, store.load_histories(runs, uri, cache_dir=root / "cache")


def build(runs: pd.DataFrame, histories: pd.DataFrame | None = None) -> dict[str, tables.Table]:
    return tables.build_tables(Estimates(runs, histories))


def test_depth_table_from_the_store(store_frames: tuple[pd.DataFrame, pd.DataFrame]):
    runs, histories = store_frames
    table = build(runs, histories)["table2_depth"]
    frame = table.frame.set_index("Depth")
    # depth 5: T_NC 25, 27, 29 → 27 ± 2; fn* 1.0, 1.1, 1.2 → 1.100 ± 0.100, CV 9.1 %;
    # t-CI 1.1 ± 4.30265 · 0.1/√3 = 1.1 ± 0.24841; bootstrap: P(all three = 1.0) = 1/27 > 2.5 % → [1.000, 1.200].
    assert frame.loc["5"].to_dict() == {
        "N": 3, "Collapsed": "3/3", "NC1 thresh.": "< 0.01", "T_NC": "27 ± 2", "fn* (mean ± std)": "1.100 ± 0.100",
        "CV": "9.1%", "95% t-CI": "[0.852, 1.348]", "95% bootstrap CI": "[1.000, 1.200]",
    }
    # depth 7: the diverged and the failed seed are out → N = 2; T_NC 30, 34 → 32 ± 2.83;
    # fn* 1.3, 1.5 → 1.4 ± 0.141.
    assert frame.loc["7", "N"] == 2
    assert (frame.loc["7", "T_NC"], frame.loc["7", "fn* (mean ± std)"]) == ("32 ± 3", "1.400 ± 0.141")
    data = table.data.set_index("depth")
    assert data.loc[5, "fn_star_mean"] == pytest.approx(1.1, abs=1e-12)
    assert data.loc[5, "fn_star_std"] == pytest.approx(0.1, abs=1e-12)
    assert data.loc[7, "T_NC_std"] == pytest.approx(math.sqrt(8), abs=1e-12)
    assert data.loc[5, "fn_star_t_low"] == pytest.approx(1.1 - 4.302652729911275 * 0.1 / math.sqrt(3), abs=1e-9)
    notes = " ".join(table.notes)
    assert "Excluded 1 diverged run" in notes and "mlp7-relu-w512-wd1e-04-mnist-s2" in notes
    assert "Ignored 1 unfinished run (1 failed)" in notes
    assert table.title.startswith("Table 2: Depth sweep (MLP, ReLU, width 512, λ = 1e-04, mnist")


def test_weight_decay_table_shows_dnf_and_borrows_the_shared_condition(store_frames):
    runs, histories = store_frames
    table = build(runs, histories)["table4_weight_decay"]
    frame = table.frame.set_index("λ")
    assert list(frame.index) == ["1e-04", "5e-04"]
    # λ = 1e-4 was trained by the depth sweep (depth 5) and is borrowed: same three seeds.
    assert (frame.loc["1e-04", "N"], frame.loc["1e-04", "fn* (mean ± std)"]) == (3, "1.100 ± 0.100")
    # λ = 5e-4 never collapses: NC1 stays at 0.03 → DNF with its final NC1.
    assert frame.loc["5e-04", "Collapsed"] == "0/3"
    assert frame.loc["5e-04", "T_NC"] == "DNF (final NC1 0.030)"
    assert frame.loc["5e-04", "fn* (mean ± std)"] == "—"


def test_summary_table_counts_a_shared_run_once(store_frames):
    runs, histories = store_frames
    table = build(runs, histories)["table5_summary"]
    frame = table.frame.set_index("Condition")
    # depth sweep: 5 collapsed (3 + 2); WD sweep: the 3 borrowed depth-5 runs; combined: 5, not 8.
    assert frame.loc["Depth sweep", "N"] == 5 and frame.loc["WD sweep", "N"] == 3
    assert frame.loc["All ReLU runs (combined, N = 5)", "N"] == 5
    # all five fn*: 1.0, 1.1, 1.2, 1.3, 1.5 → mean 6.1 / 5 = 1.22
    assert frame.loc["All ReLU runs (combined, N = 5)", "fn* (mean ± std)"].startswith("1.220 ± ")


def test_only_tables_whose_runs_exist(store_frames):
    runs, histories = store_frames
    built = build(runs, histories)
    assert set(built) == {"table1_threshold", "table1_every_eps", "table2_depth", "table4_weight_decay", "table5_summary"}
    assert build(runs.iloc[0:0], histories.iloc[0:0]) == {}
    assert set(tables.build_tables(runs, histories)) == set(built)  # the runs-and-histories shorthand
    bare = pd.DataFrame({name: pd.Series(dtype=object) for name in store.FIXED_COLUMNS})  # load_runs with no match
    assert build(bare, histories.iloc[0:0]) == {}


def test_table_write_md_csv_tex(store_frames, tmp_path: Path):
    runs, histories = store_frames
    table = build(runs, histories)["table2_depth"]
    paths = table.write(tmp_path, "table2_depth")
    assert [p.name for p in paths] == ["table2_depth.md", "table2_depth.csv", "table2_depth.tex"]
    markdown = paths[0].read_text(encoding="utf-8")
    assert "| Depth | N | Collapsed |" in markdown and "- Excluded 1 diverged run" in markdown
    csv = pd.read_csv(paths[1])
    assert csv.loc[csv["depth"] == 5, "fn_star_mean"].item() == pytest.approx(1.1, abs=1e-12)
    tex = paths[2].read_text(encoding="utf-8")
    assert "\\begin{tabular}" in tex and "1.100 $\\pm$ 0.100" in tex and "9.1\\%" in tex
    assert "±" not in tex and "λ" not in tex  # pdflatex-safe


# ------------------------------------------------------------------------------------------ toy frames


def frame_of(*runs: dict[str, object]) -> pd.DataFrame:
    """A runs frame in the store's schema: each run's params (fixture defaults + overrides), status, metrics."""
    records = []
    for index, run in enumerate(runs):
        run = dict(run)
        metrics = run.pop("metrics", {})
        status = run.pop("status", c.STATUS_COLLAPSED if c.T_NC in metrics else c.STATUS_NOT_COLLAPSED)
        sweep = run.pop("sweep", None)
        params = dict(fx.DEFAULT_PARAMS, **{k: str(v) for k, v in run.items()})
        fixed = {name: None for name in store.FIXED_COLUMNS}
        fixed.update(run_id=f"r{index}", run_name=fx.run_name(params), start_time=index, status=status,
                     condition=fx.condition_hash(params), sweep=sweep, kind=c.KIND_TRAIN, mlflow_status="FINISHED")
        records.append((fixed, {k: store.parse_param(v) for k, v in params.items()}, metrics))
    return store.runs_frame(records)


def collapsed(t_nc: float, fn_star: float, eps: float = 0.01, **extra: float) -> dict[str, float]:
    return {c.T_NC: t_nc, c.FN_STAR: fn_star, c.COLLAPSE_THRESHOLD: eps, **extra}


def test_threshold_table_ratio_of_means():
    # A: fn*(0.01) = 1.0, fn*(0.02) = 1.2 → ratio 1.20; B: 1.0 and 1.0 → 1.00;
    # mean ratio 1.10 ± std(1.2, 1.0) = 0.14.
    at01, at02 = c.fn_star_at(0.01), c.fn_star_at(0.02)
    runs = frame_of(
        {"depth": 5, "seed": 0, "metrics": collapsed(30, 1.0, **{at01: 1.0, at02: 1.2})},
        {"depth": 7, "seed": 0, "metrics": collapsed(30, 1.0, **{at01: 1.0, at02: 1.0})},
    )
    table = tables.threshold_table(Estimates(runs))
    assert list(table.frame["Ratio"]) == ["1.20", "1.00", "1.10 ± 0.14"]
    assert table.data["ratio"].tolist() == pytest.approx([1.2, 1.0], abs=1e-12)


def test_grid_table_anova_and_effects_reproduce_the_paper():
    # Two seeds per cell at the paper's means ± 0.01, so the cell means are exactly Table 6's.
    means = {("mlp", "mnist"): 1.052, ("resnet20", "mnist"): 5.867, ("mlp", "cifar10"): 0.901,
             ("resnet20", "cifar10"): 1.515}
    runs = frame_of(*[
        {"arch": arch, "dataset": dataset, "seed": seed, "sweep": "grid", "metrics": collapsed(100, mean + delta)}
        for (arch, dataset), mean in means.items() for seed, delta in enumerate((-0.01, 0.01))
    ])
    table = tables.grid_table(Estimates(runs))
    frame = table.frame.set_index(["Dataset", "Architecture"])
    assert frame.loc[("mnist", "ResNet-20"), "fn* (mean ± std)"] == "5.867 ± 0.014"
    notes = "\n".join(table.notes)
    # ANOVA by hand: SSW = 8 · 0.01² on 4 df; SSB = 2 · Σ (m − 2.33375)² on 3 df.
    grand = sum(means.values()) / 4
    f = (2 * sum((m - grand) ** 2 for m in means.values()) / 3) / (8 * 0.01**2 / 4)
    assert f"F(3, 4) = {f:.2f}" in notes
    assert "Architecture effect on mnist (MLP-5 → ResNet-20): Δ = +4.815 (+458%)" in notes
    assert "Architecture effect on cifar10 (MLP-5 → ResNet-20): Δ = +0.614 (+68%)" in notes
    assert "Dataset effect for MLP-5 (mnist → cifar10): Δ = -0.151 (-14%)" in notes
    assert "Dataset effect for ResNet-20 (mnist → cifar10): Δ = -4.352 (-74%)" in notes
    assert "misses it by +232%" in notes


def test_intervention_table_p_values_against_control():
    # Table 8's T_NC as samples m − s, m, m + s (std s): control 287 ± 35, α = 0.3: 317 ± 6, α = 3: 317 ± 46.
    # Student's p = 0.22 and 0.42 (the paper's); Welch's 0.27 and 0.42.
    samples = {1.0: [252, 287, 322], 0.3: [311, 317, 323], 3.0: [271, 317, 363]}
    after = {1.0: 16.2, 0.3: 4.9, 3.0: 48.7}
    runs = frame_of(*[
        {"init_from": f"phase1-{seed}", "rescale_alpha": alpha, "seed": seed, "sweep": "intervention",
         "metrics": collapsed(t_nc, 1.1, **{c.INTERVENTION_FN_AFTER: after[alpha]})}
        for alpha, values in samples.items() for seed, t_nc in enumerate(values)
    ])
    frame = tables.intervention_table(Estimates(runs)).frame.set_index("α")
    assert frame.loc["1", "Condition"] == "Control" and frame.loc["0.3", "Condition"] == "Scale-down"
    assert frame.loc["0.3", "T_NC"] == "317 ± 6" and frame.loc["3", "T_NC"] == "317 ± 46"
    assert (frame.loc["0.3", "p vs control (Student)"], frame.loc["3", "p vs control (Student)"]) == ("0.22", "0.42")
    assert (frame.loc["0.3", "p vs control (Welch)"], frame.loc["3", "p vs control (Welch)"]) == ("0.27", "0.42")
    assert frame.loc["3", "fn after rescaling"] == "48.7"


def test_width_table_regression_notes():
    # fn* = 2 · width^(−1/2) exactly → slope −0.500, R² = 1.00;
    # T_NC = 400 − width/8 is linear in width → r = −1.00.
    widths = [128, 256, 512, 1024]
    runs = frame_of(*[{"width": w, "sweep": "width", "metrics": collapsed(400 - w / 8, 2 / math.sqrt(w))}
                      for w in widths])
    notes = "\n".join(tables.width_table(Estimates(runs)).notes)
    assert "fn* ∝ width^-0.500 (R² = 1.00" in notes
    assert "Pearson r of mean T_NC on width: r = -1.00" in notes


def test_lead_time_from_fn_histories():
    # One condition, three seeds, Phase 1 = epochs 1–2. fn* = fn at T_NC: A 1.25 (T_NC 6), B 1.0 (8), C 1.125 (5).
    # In-sample fn_ref = (1.25 + 1.0 + 1.125)/3 = 1.125 → first Phase-2 epoch with fn < 1.125: A 8, B 4, C 6
    # (C's Phase-1 dip to 0.5 does not count). LOSO fn_ref: A (1.0 + 1.125)/2 = 1.0625 → never;
    # B (1.25 + 1.125)/2 = 1.1875 → 4; C (1.25 + 1.0)/2 = 1.125 → 6.
    fn = {
        "A": ([9, 9, 3, 1.5, 1.3, 1.25, 1.2, 1.1], 6, 1.25),
        "B": ([9, 9, 3, 1.1, 1.05, 1.02, 1.01, 1.0], 8, 1.0),
        "C": ([0.5, 9, 3, 1.5, 1.125, 1.12, 1.1, 1.0], 5, 1.125),
    }
    runs = frame_of(*[{"seed": s, "sweep": "width", "phase1_epochs": 2, "metrics": collapsed(t, f)}
                      for s, (_, t, f) in enumerate(fn.values())])
    epochs = np.arange(1, 9)
    histories = pd.concat([  # the long histories frame: run_id, epoch, metric, value
        pd.DataFrame({"run_id": f"r{index}", "epoch": np.tile(epochs, 2), "metric": [c.FN] * 8 + [c.PHASE] * 8,
                      "value": np.concatenate([curve, np.where(epochs <= 2, 1.0, 2.0)])})
        for index, (curve, _, _) in enumerate(fn.values())
    ], ignore_index=True)
    frame = early_warning.lead_time_frame(runs, histories, by="width")
    assert frame["fn_ref"].tolist() == [1.125] * 3
    assert frame["T_cross"].tolist() == [8.0, 4.0, 6.0]
    assert frame["fn_ref_loso"].tolist() == [1.0625, 1.1875, 1.125]
    assert frame["T_cross_loso"].tolist()[1:] == [4.0, 6.0] and math.isnan(frame["T_cross_loso"].iloc[0])
    # leads T_NC − T_cross = −2, 4, −1 → mean 1/3; T_cross + DEFAULT_LEAD errors 64, 58, 63 → MAE 185/3 = 61.7.
    expected = stats.lead_time_stats([6, 8, 5], [8, 4, 6], c.DEFAULT_LEAD)
    assert expected.mae == pytest.approx(185 / 3)
    estimates = Estimates(runs, histories)
    table = tables.lead_time_table(estimates)
    assert f"MAE of T_cross + {c.DEFAULT_LEAD} = 61.7 epochs" in " ".join(table.notes)
    # the split histories give the same crossings as the long frame: one pivot for the lead times and figures
    pd.testing.assert_frame_equal(early_warning.lead_time_frame(runs, estimates.lookup, by="width"), frame)
    pd.testing.assert_frame_equal(estimates.lead_time.frame, frame)
    assert table.frame["T_cross (LOSO)"].tolist() == ["never", "4", "6"]


def test_design_params_are_the_condition_params_but_init_from():
    # Every logged param is either a design param, a param outside the condition, or init_from (told apart by
    # selection.is_intervention): a new RunConfig field must be placed in one of them.
    assert set(selection.DESIGN_PARAMS).isdisjoint(c.NON_CONDITION_PARAMS)
    assert set(selection.DESIGN_PARAMS) | set(c.NON_CONDITION_PARAMS) | {"init_from"} == set(fx.DEFAULT_PARAMS)


def test_estimates_are_computed_once_and_shared(monkeypatch):
    runs = frame_of(*[{"width": w, "seed": s, "sweep": "width", "metrics": collapsed(400 - w / 8 + s, 2 / math.sqrt(w))}
                      for w in (128, 256, 512) for s in range(2)])
    estimates = Estimates(runs)
    width = tables.width_table(estimates)
    calls = []
    monkeypatch.setattr(stats, "describe", lambda *args, **kwargs: calls.append(args))
    assert estimates.family("width") is estimates.family("width")
    again = tables.width_table(estimates)  # the family's summaries and the fit are not recomputed
    assert calls == [] and again.notes == width.notes
    pd.testing.assert_frame_equal(again.data, width.data)
