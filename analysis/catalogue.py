"""Every table and figure the report can write, with what each needs, so a report lists what it could not build.

A table or figure is built only when its runs exist (`analysis.tables.build_tables`, `analysis.figures.make_figures`,
and beyond the paper `analysis.extra_study_tables.build_extra_study_tables`,
`analysis.extra_study_figures.make_extra_study_figures`);
`missing` names, for each one not written, what it would have needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable


@dataclass(frozen=True)
class Output:
    stem: str  # the file stem (`table2_depth`, `fig3_depth`)
    title: str
    needs: str  # what the selection lacked, as a reader would fix it


TABLES = (
    Output("table1_threshold", "Table 1 (threshold robustness)",
           "collapsed ReLU runs at ε = 0.01 that also reached NC1 < 0.02 (e.g. `ncflow sweep depth` at depth ≥ 5)"),
    Output("table2_depth", "Table 2 (depth)", "runs differing only in depth (`ncflow sweep depth`)"),
    Output("table3_activation", "Table 3 (activation)", "runs differing only in activation (`ncflow sweep activation`)"),
    Output("table4_weight_decay", "Table 4 (weight decay)",
           "runs differing only in weight decay (`ncflow sweep weight-decay`)"),
    Output("table5_summary", "Table 5 (fn* across conditions)",
           "collapsed ReLU runs of the depth, weight-decay or width sweeps"),
    Output("table6_grid", "Table 6 (fn* by model and data set)",
           "the grid sweep's runs in at least two (model, data set) cells (`ncflow sweep grid`, needs MNIST/CIFAR-10 files)"),
    Output("table7_width", "Table 7 (width)", "runs differing only in width (`ncflow sweep width`)"),
    Output("table8_intervention", "Table 8 (intervention)",
           "Phase-2 runs started from a Phase-1 checkpoint with α (`ncflow sweep intervention`)"),
    Output("lead_time", "Lead-time table (T_cross before T_NC)",
           "collapsed runs with a T_cross (a reference fn*: `--fn-ref auto` or a number)"),
    # Beyond the paper (`analysis.extra_study_tables`)
    Output("table_layerwise", "Layer-wise collapse (T_NC, NC1, NC2 per hidden layer)",
           "runs with `--layerwise` (`ncflow sweep layerwise`)"),
    Output("table_imbalance", "Class imbalance (collapse and minority collapse per ρ)",
           "runs differing only in the imbalance ratio ρ (`ncflow sweep imbalance`)"),
    Output("table_etf", "Fixed simplex-ETF classifier (learned vs ETF head)",
           "runs differing only in the classifier, learned vs `--classifier etf` (`ncflow sweep etf`)"),
    Output("table_monitored", "Own models (runs measured through ncflow's library)",
           "finished runs of `CollapseMonitor` or its Lightning / Trainer callbacks (docs/library.md)"),
)

FIGURES = (
    Output("fig1_dynamics", "Figure 1 (dynamics of one run)", "a training run with a history"),
    Output("fig2_resnet20_cifar10", "Figure 2 (ResNet-20 on CIFAR-10)", "the grid sweep's ResNet-20 / CIFAR-10 runs"),
    Output("fig3_depth", "Figure 3 (depth)", "runs differing only in depth (`ncflow sweep depth`)"),
    Output("fig4_activation", "Figure 4 (activation)", "runs differing only in activation (`ncflow sweep activation`)"),
    Output("fig5_weight_decay", "Figure 5 (weight decay)",
           "runs differing only in weight decay (`ncflow sweep weight-decay`)"),
    Output("fig6_summary", "Figure 6 (summary)", "a depth, activation or weight-decay family, or grid runs"),
    Output("fig7_resnet20_mnist", "Figure 7 (ResNet-20 on MNIST)", "the grid sweep's ResNet-20 / MNIST runs"),
    Output("fig8_width", "Figure 8 (width)", "runs differing only in width (`ncflow sweep width`)"),
    Output("fig9_protocol", "Figure 9 (protocol)", "two-phase and CE-only runs of one condition (`ncflow sweep protocol`)"),
    Output("fig_intervention", "Intervention trajectories", "the intervention sweep's runs (`ncflow sweep intervention`)"),
    # Beyond the paper (`analysis.extra_study_figures`)
    Output("fig_layerwise", "Layer-wise NC1 over the epochs",
           "runs with `--layerwise` and their `layers.csv` (`ncflow sweep layerwise`)"),
    Output("fig_imbalance", "Collapse against class imbalance ρ",
           "runs differing only in the imbalance ratio ρ (`ncflow sweep imbalance`)"),
    Output("fig_train_test_nc1", "Train vs test NC1 over the epochs",
           "runs whose history has the test set's NC1 (`test/nc1`, logged by every current run)"),
)


def missing(outputs: Iterable[Output], written: Iterable[str]) -> list[Output]:
    """The outputs whose stem is not among the written ones, in catalogue order."""
    done = set(written)
    return [output for output in outputs if output.stem not in done]
