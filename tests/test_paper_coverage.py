"""`report --compare paper` says how many comparisons with the paper the runs fill and what each empty one needs,
never counts an empty comparison table as a table written, and flags a filled one trained on other data."""

from __future__ import annotations

import pytest

from analysis import paper_coverage, report
from ncshared import schema
from tests.mlflow_fixtures import fn_trajectory, log_fake_training_run, nc1_trajectory

EPOCHS, PHASE1 = 40, 10


def log_digits_run(store, experiment_id: str, depth: int, seed: int, sweep: str | None = None) -> str:
    """A collapsed MLP run on digits (T_NC 30), as `ncflow train --dataset digits` logs it."""
    return log_fake_training_run(store.client, experiment_id, depth=depth, seed=seed, sweep=sweep,
                                 phase1_epochs=PHASE1, params={"dataset": "digits", "phase2_epochs": EPOCHS - PHASE1},
                                 nc1_curve=nc1_trajectory(EPOCHS, PHASE1, 30),
                                 fn_curve=fn_trajectory(EPOCHS, PHASE1, 30, 1.1))


def build(store, out, compare: bool) -> report.Outcome:
    source = report.Source(store.uri, None, None, None, False)
    return report.build_report(source, out, ["md"], ["png"], force=True, compare=compare)


@pytest.mark.heavy
def test_a_fresh_store_fills_no_comparison_and_counts_no_empty_table(mlflow_store, tmp_path):
    experiment_id = mlflow_store.experiment()
    log_digits_run(mlflow_store, experiment_id, depth=7, seed=0)  # the README's first run: depth 7 on digits
    plain, compared = build(mlflow_store, tmp_path / "plain", False), build(mlflow_store, tmp_path / "compared", True)
    assert compared.n_tables == plain.n_tables  # the empty comparison tables are written, not counted
    assert sorted((tmp_path / "compared" / "tables").glob("paper_table2_depth*.md"))  # written nonetheless
    lines = compared.comparisons
    assert lines[0] == "0 of 8 comparisons with the paper filled" and len(lines) == 1 + 8
    assert compared.describe().startswith(f"{tmp_path / 'compared' / 'report.md'}: {plain.n_tables} tables, ")
    (depth,) = [line for line in lines if line.startswith("  Table 2 (depth): ")]
    assert depth == (
        "  Table 2 (depth): needs MLPs of depth 2, 3, 5, 7, width 512, ReLU, λ = 1e-4 on MNIST, Adam 1e-3 cosine, "
        "200 CE + 400 MSE epochs, 3 seeds (`ncflow sweep depth --data-dir DIR`); this store has 1 training run "
        "(on digits), and it forms no depth family: that takes the `depth` sweep's runs, or runs at two or more "
        "values of depth that share every other setting")
    markdown = (tmp_path / "compared" / "report.md").read_text()
    assert "0 of 8 comparisons with the paper filled:" in markdown
    assert "- **Table 2 (depth)** — not compared: needs MLPs of depth 2, 3, 5, 7" in markdown
    assert "1 run (1 collapsed)" in markdown  # one run, singular
    reused = build_reused(mlflow_store, tmp_path / "compared")
    assert reused.reused and reused.comparisons == lines


def build_reused(store, out) -> report.Outcome:
    source = report.Source(store.uri, None, None, None, False)
    return report.build_report(source, out, ["md"], ["png"], force=False, compare=True)


@pytest.mark.heavy
def test_a_depth_sweep_on_digits_fills_table_2_and_says_it_is_not_the_papers_data(mlflow_store, tmp_path):
    experiment_id = mlflow_store.experiment()
    for depth in (3, 5):
        for seed in (0, 1):
            log_digits_run(mlflow_store, experiment_id, depth=depth, seed=seed, sweep=schema.DEPTH_SWEEP)
    plain, compared = build(mlflow_store, tmp_path / "plain", False), build(mlflow_store, tmp_path / "compared", True)
    depth_tables = sorted((tmp_path / "compared" / "tables").glob("paper_table2_depth*.md"))
    assert depth_tables and compared.n_tables == plain.n_tables + len(depth_tables)
    found = {entry.comparison.prefix: entry for entry in paper_coverage.coverage(
        report.estimates_of(report.read_runs(report.Source(mlflow_store.uri, None, None, None, False)), None))}
    assert found["paper_table2_depth"].filled and not found["paper_table7_width"].filled
    assert found["paper_table2_depth"].note == (
        "4 runs on digits, 10 CE + 30 MSE epochs — not the paper's data and protocol (MNIST, 200 CE + 400 MSE; "
        "ResNet-20 on CIFAR-10 200 + 600): Δ compares two experiments, not a reproduction")
    filled = sum(entry.filled for entry in found.values())
    assert compared.comparisons[0] == f"{filled} of 8 comparisons with the paper filled"


def test_every_comparison_table_belongs_to_one_comparison():
    assert paper_coverage.comparison_of("paper_table2_depth").title == "Table 2 (depth)"
    assert paper_coverage.comparison_of("paper_table2_depth_eps_0.01").title == "Table 2 (depth)"
    assert paper_coverage.comparison_of("paper_claims_every_eps").prefix == "paper_claims"
    assert paper_coverage.comparison_of("table2_depth") is None
