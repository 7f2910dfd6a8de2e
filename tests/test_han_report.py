"""Han et al.'s report (`analysis/han_et_al.py`, `analysis/han_figures.py`, `ncflow-analysis han`) on a hand-made store.

The store is written through MLflow as the runs log themselves: grokking runs (params of `ncflow grok`, step unit
`step`, history.csv, the grokking markers as summary metrics) and engine runs on mnist-5k with the regularisers
(params `reg`, `reg_lambda`, `unplug_epoch`, epochs as steps). By construction:
- grokking task `add-mod7-f0.5`, 3 seeds: NCC drops at step 300, validation accuracy rises (≥ its level at
  memorisation + 10 points) at 800 + 100·seed, flatness drops at 900 + 100·seed, generalised at 1000 + 100·seed →
  C1 and C2 hold;
- grokking task `add-mod7-f0.3`, 3 seeds: the same but flatness drops at step 300, during memorisation → C1 holds,
  C2 does not;
- grokking task `sub-mod7-f0.5`, 2 seeds → C1 and C2 not enough runs;
- mnist-5k: unregularised (final val acc 0.96, NCC 2), NCC λ = 1e-3 (0.95, NCC 8: C3 holds), NCC λ = 1e-2 (0.80:
  does not hold), flatness λ = 1e-4 without unplug (reaches 0.94 at epoch 18 vs 6: later) and with unplug at epoch 10
  (0.30 → 0.90 at epoch 11: a 60-point jump against 4 points without unplug) → C4 holds;
- no regulariser run on the grokking task → C3 and C4 there: not enough runs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from mlflow.entities import Metric, Param

from analysis import han_et_al as han
from analysis.cli import main
from analysis.han_figures import make_figures, write_han_report
from ncshared import schema

GROK_STEPS = np.arange(100, 2100, 100)  # 20 evaluations
EPOCHS = np.arange(1, 21)  # 20 epochs


def log_run(client, experiment_id: str, name: str, params: dict, steps: np.ndarray, columns: dict[str, np.ndarray],
            summary: dict[str, float], step_unit: str | None = None) -> str:
    """One finished run: params, tags, the history artifact and every metric's last value."""
    tags = {schema.TAG_KIND: schema.KIND_TRAIN, schema.TAG_STATUS: schema.STATUS_NOT_COLLAPSED,
            schema.TAG_DEVICE: "cpu", schema.TAG_THREADS: "1"}
    if step_unit:
        tags.update({schema.TAG_STEP_UNIT: step_unit, schema.TAG_SOURCE: schema.SOURCE_MONITOR})
    run_id = client.create_run(experiment_id, run_name=name, tags=tags, start_time=1_000).info.run_id
    last = {key: float(values[-1]) for key, values in columns.items()}
    client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()],
                     metrics=[Metric(k, v, 1_000, int(steps[-1])) for k, v in {**last, **summary}.items()])
    lines = [",".join([schema.HISTORY_EPOCH, *columns])]
    lines += [",".join([str(int(step)), *(repr(float(v[i])) for v in columns.values())]) for i, step in enumerate(steps)]
    client.log_text(run_id, "\n".join(lines) + "\n", schema.HISTORY_FILE)
    client.set_terminated(run_id, "FINISHED", end_time=61_000)
    return run_id


def grokking_run(client, experiment_id: str, dataset: str, seed: int, flatness_drop: int) -> str:
    shift = 100 * seed
    train = np.where(GROK_STEPS >= 200, 1.0, 0.5)  # memorised at 200
    val = np.select([GROK_STEPS >= 1000 + shift, GROK_STEPS >= 900 + shift, GROK_STEPS >= 800 + shift],
                    [1.0, 0.7, 0.3], 0.05)
    ncc = np.where(GROK_STEPS >= 300, 40.0, 100.0)  # peak 100 at step 100, ≤ 50 from 300
    flat = np.where(GROK_STEPS >= flatness_drop, 3.0, 10.0)
    markers = {"grokking/step_memorised": 200.0, "grokking/step_generalised": 1000.0 + shift,
               "grokking/step_ncc_drop": 300.0, "grokking/step_flatness_drop": float(flatness_drop),
               "grokking/delay": 800.0 + shift}
    operation, p, fraction = dataset.split("-")
    params = {"p": int(p[3:]), "operation": operation, "train_fraction": float(fraction[1:]), "layers": 1,
              "d_model": 16, "steps": 2000, "eval_every": 100, "seed": seed, "reg": "none", "reg_lambda": 0.0,
              "unplug_step": 0, "dataset": dataset, "arch": "transformer-L1-d16", "step_unit": "step"}
    columns = {schema.TRAIN_ACC: train, schema.TEST_ACC: val, schema.NCC: ncc, schema.FLATNESS: flat}
    return log_run(client, experiment_id, f"grok-{dataset}-s{seed}", params, GROK_STEPS, columns, markers, "step")


def engine_run(client, experiment_id: str, seed: int, reg: str, reg_lambda: float, val: np.ndarray, ncc: float,
               unplug: int = 0) -> str:
    params = {"dataset": "mnist-5k", "arch": "mlp", "depth": 5, "lr": 0.01, "phase1_epochs": 20, "seed": seed,
              "reg": reg, "reg_lambda": reg_lambda, "unplug_epoch": unplug, "threads": 1}
    columns = {schema.TRAIN_ACC: np.ones(EPOCHS.size), schema.TEST_ACC: val, schema.NCC: np.full(EPOCHS.size, ncc),
               schema.FLATNESS: np.full(EPOCHS.size, 1.0 + reg_lambda)}
    return log_run(client, experiment_id, f"mlp-{reg}{reg_lambda:g}-u{unplug}-s{seed}", params, EPOCHS, columns, {})


def ramp(start: float, end: float, reach_epoch: int) -> np.ndarray:
    """Linear from `start` at epoch 1 to `end` at `reach_epoch`, flat after."""
    return np.interp(EPOCHS, [1, reach_epoch], [start, end])


@pytest.fixture
def han_store(mlflow_store):
    client = mlflow_store.client
    grokking = mlflow_store.experiment("grokking")
    for seed in range(3):
        grokking_run(client, grokking, "add-mod7-f0.5", seed, flatness_drop=900 + 100 * seed)
        grokking_run(client, grokking, "add-mod7-f0.3", seed, flatness_drop=300)
    for seed in range(2):
        grokking_run(client, grokking, "sub-mod7-f0.5", seed, flatness_drop=900)
    engine = mlflow_store.experiment("ncflow")
    for seed in range(2):
        engine_run(client, engine, seed, "ncc", 0.0, ramp(0.5, 0.96, 6), ncc=2.0)
        engine_run(client, engine, seed, "ncc", 1e-3, ramp(0.5, 0.95, 6), ncc=8.0)
        engine_run(client, engine, seed, "ncc", 1e-2, ramp(0.5, 0.80, 6), ncc=9.0)
        engine_run(client, engine, seed, "flatness", 1e-4, ramp(0.30, 0.94, 18), ncc=2.0)
        engine_run(client, engine, seed, "flatness", 1e-4, np.where(EPOCHS > 10, 0.90, 0.30), ncc=2.0, unplug=10)
    return mlflow_store


def rows(claims: list[han.HanClaim]) -> dict[tuple[str, str], han.HanClaim]:
    return {(claim.name, claim.task): claim for claim in claims}


def test_grouping_claims_and_numbers(han_store, tmp_path):
    found = han.read_han(han_store.uri, cache_dir=tmp_path / "cache")
    grokking = [s for s in found.settings if s.grokking]
    assert sorted(s.task for s in grokking) == ["add-mod7-f0.3", "add-mod7-f0.5", "sub-mod7-f0.5"]
    mnist = [s for s in found.settings if s.task == "mnist-5k"]
    assert len(mnist) == 1  # one setting: the regulariser params do not split it
    assert sorted((a.reg, a.reg_lambda, a.unplug) for a in mnist[0].arms) == [
        ("flatness", 1e-4, 0), ("flatness", 1e-4, 10), ("ncc", 1e-3, 0), ("ncc", 1e-2, 0), ("none", 0.0, 0)]
    assert len(mnist[0].arms[han.UNREGULARISED]) == 2  # λ = 0 runs are the unregularised arm

    by = rows(han.evaluate(found))
    assert by["C1", "add-mod7-f0.5, 2,000 steps"].verdict == han.HOLDS
    assert by["C1", "add-mod7-f0.5, 2,000 steps"].numbers.startswith("3/3 pass; NCC drop 300 vs generalised 1000")
    assert by["C2", "add-mod7-f0.5, 2,000 steps"].verdict == han.HOLDS
    assert "drop 900, window [800, 1200]" in by["C2", "add-mod7-f0.5, 2,000 steps"].numbers  # 1000 + 25 % of the 800-step delay
    assert by["C1", "add-mod7-f0.3, 2,000 steps"].verdict == han.HOLDS
    assert by["C2", "add-mod7-f0.3, 2,000 steps"].verdict == han.FAILS
    assert by["C2", "add-mod7-f0.3, 2,000 steps"].numbers.startswith("0/3 pass; drop 300, window [800, 1200]")
    assert by["C1", "sub-mod7-f0.5, 2,000 steps"].verdict == han.TOO_FEW and "3 needed" in by["C1", "sub-mod7-f0.5, 2,000 steps"].numbers

    ncc_ok, ncc_bad = by["C3", "mnist-5k (mlp), ncc λ = 0.001"], by["C3", "mnist-5k (mlp), ncc λ = 0.01"]
    assert ncc_ok.verdict == han.HOLDS and ncc_ok.n == "2 vs 2"
    assert ncc_ok.numbers == "val. acc. 95.0 % vs 96.0 % (-1.0 points); NCC 8 vs 2"
    assert ncc_bad.verdict == han.FAILS and "(-16.0 points)" in ncc_bad.numbers
    later = by["C4 later", "mnist-5k (mlp), flatness λ = 0.0001"]
    assert later.verdict == han.HOLDS
    assert later.numbers == "reach 94.0 % at epoch 18, 18 vs unregularised 6, 6"
    assert by["C4 later", "mnist-5k (mlp), flatness λ = 0.0001, unplug at epoch 10"].verdict == han.HOLDS
    jump = by["C4 jump", "mnist-5k (mlp), flatness λ = 0.0001, unplug at epoch 10"]
    assert jump.verdict == han.HOLDS
    # unplugged: 0.30 → 0.90 in epochs 11–12; without unplug the ramp gains 2 × 0.64/17 over the same window
    assert jump.numbers == "gain +60.0 points after the unplug vs +7.5 without unplug (2 run(s))"
    for claim in ("C3", "C4 later", "C4 jump"):  # no regulariser run on the grokking tasks
        assert by[claim, han.GROKKING_TASK].verdict == han.TOO_FEW


def test_finals_use_the_last_tenth():
    history = pd_history({schema.TEST_ACC: [0.1] * 18 + [0.9, 0.5]})
    assert han.final(history, schema.TEST_ACC) == pytest.approx(0.7)  # last 2 of 20
    assert han.rise_step(pd_history({schema.TEST_ACC: [0.05, 0.05, 0.1, 0.16, 0.5]}), 1) == 4


def pd_history(columns: dict[str, list[float]]) -> pd.DataFrame:
    frame = pd.DataFrame(columns)
    frame.index = pd.Index(range(1, len(frame) + 1), name=schema.HISTORY_EPOCH)
    return frame


def test_missing_runs_read_not_enough(mlflow_store, tmp_path):
    experiment = mlflow_store.experiment("grokking")
    grokking_run(mlflow_store.client, experiment, "add-mod7-f0.5", 0, flatness_drop=900)
    by = rows(han.evaluate(han.read_han(mlflow_store.uri, "grokking", cache_dir=tmp_path / "cache")))
    assert by["C1", "add-mod7-f0.5, 2,000 steps"].numbers.startswith("1 finished unregularised run(s), 1 generalised")
    assert {claim.verdict for claim in by.values()} == {han.TOO_FEW}
    assert by["C3", "mnist-5k"].numbers == "no finished run with reg = ncc, λ > 0"
    assert by["C4 jump", "add-mod7-f0.5"].numbers == "no finished flatness run with an unplug"


def test_figures_per_task(han_store, tmp_path):
    found = han.read_han(han_store.uri, cache_dir=tmp_path / "cache")
    figures = make_figures(found)
    assert sorted(figures) == ["han_g1_add-mod7-f0.3", "han_g1_add-mod7-f0.5", "han_g1_sub-mod7-f0.5",
                               "han_r1_mnist-5k", "han_r2_mnist-5k"]
    grok = figures["han_g1_add-mod7-f0.5"]
    acc = grok.axes[0]
    assert acc.get_xlabel() == "optimiser step" and "3 seeds" in grok.get_suptitle()
    assert [line.get_xdata()[0] for line in acc.lines if line.get_label() == "generalised"] == [1100.0]  # mean
    r2 = figures["han_r2_mnist-5k"]
    assert r2.axes[0].get_xlabel() == "epoch"
    assert any(list(line.get_xdata()) == [10, 10] for line in r2.axes[0].lines)  # the unplug
    assert r2.axes[1].get_yscale() == "log"


def test_cli_end_to_end(han_store, tmp_path):
    out = tmp_path / "han"
    result = CliRunner().invoke(main, ["han", "--tracking-uri", han_store.uri, "--out", str(out), "--no-progress",
                                       "--cache-dir", str(tmp_path / "cache"), "--figure-format", "png"])
    assert result.exit_code == 0, result.output
    claims = (out / "claims.md").read_text()
    assert "| C2 | flatness falls when validation accuracy rises, not before | add-mod7-f0.3, 2,000 steps |" in claims
    assert "![han_r2_mnist-5k](han_r2_mnist-5k.png)" in claims
    assert (out / "han_g1_add-mod7-f0.5.png").stat().st_size > 10_000

    bad = CliRunner().invoke(main, ["han", "--tracking-uri", han_store.uri, "--experiment", "nope", "--out",
                                    str(tmp_path / "x")])
    assert bad.exit_code == 2 and "--experiment: no experiment named 'nope'" in bad.output
    assert len(bad.output.strip().splitlines()) == 1
    missing = CliRunner().invoke(main, ["han", "--tracking-uri", f"sqlite:///{tmp_path}/no/such.db", "--out",
                                        str(tmp_path / "y")])
    assert missing.exit_code == 2 and "does not exist" in missing.output


def test_write_report_lists_files(han_store, tmp_path):
    found = han.read_han(han_store.uri, cache_dir=tmp_path / "cache")
    paths = write_han_report(found, tmp_path / "out")
    assert [p.name for p in paths][-1] == "claims.md"
    assert Path(tmp_path / "out" / "han_r1_mnist-5k.png").exists()


def test_an_arm_counts_one_run_per_seed():
    """The NCC and the flatness sweeps' λ = 0 points train the same unregularised network: one seed, one run."""
    base = {"mlflow_status": "FINISHED", "status": schema.STATUS_NOT_COLLAPSED, "dataset": "mnist-5k", "lr": 0.01}
    runs = pd.DataFrame([{**base, "run_id": "ncc-0", "seed": 0, "start_time": 1, "reg": "ncc", "reg_lambda": 0.0},
                         {**base, "run_id": "flat-0", "seed": 0, "start_time": 2, "reg": "flatness", "reg_lambda": 0.0},
                         {**base, "run_id": "none-1", "seed": 1, "start_time": 3, "reg": "none", "reg_lambda": 0.0},
                         {**base, "run_id": "ncc-1", "seed": 1, "start_time": 4, "reg": "ncc", "reg_lambda": 1e-3}])
    (setting,) = han.han_runs(runs, {}).settings
    assert setting.arms == {han.UNREGULARISED: ["ncc-0", "none-1"], han.Arm("ncc", 1e-3, 0): ["ncc-1"]}


def test_a_run_whose_ncc_never_falls_is_a_counterexample_not_a_missing_run():
    base = {"mlflow_status": "FINISHED", "status": schema.STATUS_NOT_COLLAPSED, "dataset": "add-mod7-f0.5",
            "step_unit": "step", "steps": 2000}
    runs = pd.DataFrame([{**base, "run_id": f"r{seed}", "seed": seed, "start_time": seed} for seed in range(3)])
    steps = pd.Index(GROK_STEPS, name=schema.HISTORY_EPOCH)

    def history(ncc_falls: bool) -> pd.DataFrame:
        return pd.DataFrame({schema.TRAIN_ACC: np.where(GROK_STEPS >= 200, 1.0, 0.5),
                             schema.TEST_ACC: np.where(GROK_STEPS >= 1000, 1.0, 0.05),
                             schema.NCC: np.where((GROK_STEPS >= 500) & ncc_falls, 10.0, 100.0),
                             schema.FLATNESS: np.full(GROK_STEPS.size, 5.0)}, index=steps)

    grouped = han.han_runs(runs, {"r0": history(True), "r1": history(True), "r2": history(False)})
    claim = han.claim_ncc_before(grouped, grouped.settings[0])
    assert claim.verdict == han.FAILS and claim.numbers.startswith("2/3 pass")
    assert "NCC never fell to half its level at memorisation (generalised 1000)" in claim.numbers


def test_a_regularised_arm_that_diverged_does_not_generalise_later_and_shows_no_jump():
    base = {"mlflow_status": "FINISHED", "dataset": "mnist-5k", "lr": 0.01, "reg": "flatness"}
    runs = pd.DataFrame([
        {**base, "run_id": "control", "seed": 0, "start_time": 0, "status": schema.STATUS_NOT_COLLAPSED,
         "reg_lambda": 0.0, "unplug_epoch": 0},
        *({**base, "run_id": f"u{seed}", "seed": seed, "start_time": 1 + seed, "status": schema.STATUS_DIVERGED,
           "divergence_reason": "non-finite loss (nan) at epoch 4", "reg_lambda": 1e-4, "unplug_epoch": unplug}
          for seed in (0, 1) for unplug in (0, 30))])
    runs["run_id"] = [f"{row.run_id}-{row.unplug_epoch}" if row.run_id != "control" else "control"
                      for row in runs.itertuples()]
    epochs = pd.Index(EPOCHS, name=schema.HISTORY_EPOCH)
    control = pd.DataFrame({schema.TEST_ACC: np.linspace(0.5, 0.95, EPOCHS.size)}, index=epochs)
    blown = pd.DataFrame({schema.TEST_ACC: [0.14, 0.10, 0.11, np.nan]}, index=epochs[:4])
    grouped = han.han_runs(runs, {"control": control, **{run: blown for run in runs["run_id"] if run != "control"}})
    by = rows(han.evaluate(grouped))
    later = by["C4 later", "mnist-5k, flatness λ = 0.0001"]
    assert later.verdict == han.FAILS
    assert later.numbers == ("2 of 2 runs diverged (non-finite loss (nan) at epoch 4): the regularised networks never "
                             "generalised")
    jump = by["C4 jump", "mnist-5k, flatness λ = 0.0001, unplug at epoch 30"]
    assert jump.verdict == han.TOO_FEW and jump.numbers.endswith("before the unplug at epoch 30")
