"""The paper as data, and its claims tested on stores populated through MLflow's API where they hold and where they fail."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from analysis import claims, paper_values, store
from analysis.aggregate import Estimates
from analysis.cli import main as analysis_main
from ncshared import schema as c
from tests import mlflow_fixtures as fx

PHASE1, EPOCHS = 10, 40


def test_published_values_are_the_papers_text():
    assert paper_values.TABLE2[3].t_nc == (250, 28) and paper_values.TABLE2[7].fn_star == (1.112, 0.040)
    assert paper_values.TABLE2[2].threshold == 0.05 and paper_values.TABLE2[5].threshold == 0.01
    assert paper_values.TABLE3["gelu"].n == 4 and paper_values.TABLE3["gelu"].fn_star == (2.128, 0.515)
    assert paper_values.TABLE4[5e-4].t_nc is None and paper_values.TABLE4[5e-4].collapsed == 0
    assert paper_values.TABLE4[5e-5].t_nc == (290, 10)
    assert paper_values.TABLE5["combined"] == ((250, 383), (1.096, 0.091)) and paper_values.TABLE5_COMBINED_N == 21
    assert paper_values.TABLE6[("resnet20", "mnist")].fn_star == (5.867, 0.034) and paper_values.TABLE6_ANOVA_F == 55.88
    assert paper_values.TABLE6_EFFECTS["architecture | mnist"] == (4.815, 4.58)
    assert paper_values.MULTIPLICATIVE_MISS == 2.32
    assert paper_values.TABLE7[1024].t_nc == (257, 12) and paper_values.WIDTH_REGRESSION["exponent"] == -0.064
    assert paper_values.TABLE8[0.3].p_t_nc == 0.22 and paper_values.TABLE8[3.0].fn_after == 48.7
    assert paper_values.LEAD_TIME["mean"] == 62 == c.DEFAULT_LEAD and paper_values.LEAD_TIME["mae"] == 24
    assert paper_values.TABLE1["Depth = 7"] == (1.112, 0.953, 0.86) and paper_values.TABLE1_MEAN_RATIO == (1.10, 0.14)
    assert paper_values.CE_ONLY["nc1_min"] == 0.076


def _log(client: MlflowClient, eid: str, t_nc: int | None, fn_star: float, sweep: str, seed: int,
         depth: int = 5, **params: object) -> str:
    eps = 0.05 if depth <= 3 else 0.01
    nc1 = fx.nc1_trajectory(EPOCHS, PHASE1, t_nc, eps) if t_nc else np.full(EPOCHS, 0.03)
    fn = fx.fn_trajectory(EPOCHS, PHASE1, t_nc or EPOCHS, fn_star)
    return fx.log_fake_training_run(client, eid, depth=depth, seed=seed, nc1_curve=nc1, fn_curve=fn,
                                    phase1_epochs=PHASE1, sweep=sweep,
                                    params={k: str(v) for k, v in params.items()})


def populate(client: MlflowClient, eid: str, holds: bool) -> None:
    """Depth (non-monotone or monotone T_NC), weight decay (5e-4 DNF or collapsing) and width (T_NC falling or
    not); fn* tight (CV ≈ 2 %) or spread (CV ≈ 30 %) within MLP-5."""
    depth_t = {2: 27, 3: 25, 5: 30, 7: 34} if holds else {2: 24, 3: 26, 5: 30, 7: 34}
    spread = [1.0, 1.02, 1.04] if holds else [0.7, 1.0, 1.4]
    for depth, t_nc in depth_t.items():
        for seed in range(3):
            _log(client, eid, t_nc + seed, 1.5 if depth <= 3 else spread[seed], "depth", seed, depth=depth,
                 weight_decay=1e-4)
    for seed in range(3):
        _log(client, eid, None if holds else 33, spread[seed], "weight-decay", seed, weight_decay=5e-4)
    width_t = {128: 36, 256: 33, 1024: 28} if holds else {128: 30, 256: 33, 1024: 28}
    for width, t_nc in width_t.items():
        for seed in range(3):
            _log(client, eid, t_nc, spread[seed], "width", seed, width=width, weight_decay=1e-4)


@pytest.mark.parametrize("holds", [True, False])
def test_claims_hold_or_fail_with_the_numbers_behind_them(mlflow_store, holds):
    eid = mlflow_store.experiment()
    populate(mlflow_store.client, eid, holds)
    runs = store.load_runs(mlflow_store.uri)
    estimates = Estimates(runs, store.load_histories(runs, mlflow_store.uri))
    verdicts = {claim.claim: claim for claim in claims.evaluate(estimates)}
    expected = claims.HOLDS if holds else claims.FAILS
    for name in ("fn* concentrates within a (model, data) pair", "λ = 5e-4 never collapses",
                 "width shortens T_NC monotonically", "depth's effect on T_NC is non-monotonic"):
        assert verdicts[name].verdict == expected, verdicts[name]
    for name in ("the intervention's three α reach the same fn*", "cross-entropy alone does not collapse in 600 epochs"):
        assert verdicts[name].verdict == claims.TOO_FEW  # no such runs in this store
    depth = verdicts["depth's effect on T_NC is non-monotonic"]
    assert depth.ncflow == ("2: 28, 3: 26, 5: 31, 7: 35" if holds else "2: 25, 3: 27, 5: 31, 7: 35")
    assert verdicts["λ = 5e-4 never collapses"].ncflow.startswith("0/3 collapsed" if holds else "3/3 collapsed")


def test_report_compare_paper_writes_the_side_by_side_and_the_claims(mlflow_store, tmp_path):
    populate(mlflow_store.client, mlflow_store.experiment(), holds=True)
    out = tmp_path / "report"
    result = CliRunner().invoke(analysis_main, ["report", "--tracking-uri", mlflow_store.uri, "--out", str(out),
                                                "--no-progress", "--compare", "paper", "--figure-format", "png"])
    assert result.exit_code == 0, result.output
    markdown = (out / "report.md").read_text()
    assert markdown.index("## Beside the paper") < markdown.index("## Tables")
    assert "| depth's effect on T_NC is non-monotonic |" in markdown
    side = (out / "tables" / "paper_table2_depth.md").read_text()
    assert "| 3 | 3 / 3 | 3/3 / 3/3 | 250 ± 28 | 26 ± 1 (n=3) | -224 (-90%) | 1.417 ± 0.225 | 1.500 ± 0.000 (n=3) |" in side
    assert (out / "tables" / "paper_claims.csv").exists()
    assert (out / "tables" / "paper_claims_eps_0.02.csv").exists() and "### paper_claims_every_eps" in markdown
