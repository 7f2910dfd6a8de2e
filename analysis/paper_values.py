"""The published values of the paper's Tables 1–8 and its quoted statistics, as data, with where each is printed.

Rupa, "Neural Collapse Dynamics: Depth, Activation, Regularisation, and Feature Norm Threshold" (arXiv:2604.00230),
MNIST (MLP) and CIFAR-10 / MNIST (ResNet-20). Numbers are as printed: means ± sample std over seeds, T_NC in epochs,
fn* the mean penultimate feature norm at T_NC; `None` where the paper prints none (DNF, a dash). `analysis.claims`
tests the paper's findings on a store; `WHERE` names the table a stem reproduces; each constant is one printed table.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Condition:
    """One printed row of a sweep table (Tables 2, 3, 4, 7)."""

    n: int
    threshold: float  # the NC1 threshold ε the row uses
    t_nc: tuple[float, float] | None  # (mean, std); None: DNF
    fn_star: tuple[float, float] | None
    collapsed: int | None = None  # Table 4's Collapsed k (of n)
    cv: float | None = None  # Table 7's CV of fn*


@dataclass(frozen=True)
class GridCell:
    """One row of Table 6: fn* of a (model, data set) pair pooled over its ReLU conditions."""

    threshold: float
    n: int
    fn_star: tuple[float, float]
    t_ci: tuple[float, float]
    cv: float


@dataclass(frozen=True)
class InterventionRow:
    """One row of Table 8."""

    fn_after: float  # fn right after the rescaling (≈ 16.2 × α)
    t_nc: tuple[float, float]
    fn_star: tuple[float, float]
    p_t_nc: float | None  # the t-test of T_NC against the control (None for the control)


# Table 1: fn* at NC1 < 0.01 and < 0.02 (means over 3 seeds) and their ratio, ReLU conditions.
TABLE1 = {  # condition label → (fn* @ 0.01, fn* @ 0.02, ratio)
    "Depth = 5": (1.077, 1.373, 1.27),
    "Depth = 7": (1.112, 0.953, 0.86),
    "Width = 128": (1.241, 1.276, 1.03),
    "Width = 256": (1.125, 1.222, 1.09),
    "λ = 1e-05": (1.035, 1.198, 1.16),
    "λ = 5e-05": (0.983, 1.153, 1.17),
}
TABLE1_MEAN_RATIO = (1.10, 0.14)

# Table 2: depth sweep (MLP, ReLU, λ = 1e-4, MNIST, 3 seeds).
TABLE2 = {
    2: Condition(3, 0.05, (273, 54), (1.429, 0.264)),
    3: Condition(3, 0.05, (250, 28), (1.417, 0.225)),
    5: Condition(3, 0.01, (297, 9), (1.077, 0.020)),
    7: Condition(3, 0.01, (340, 8), (1.112, 0.040)),
}

# Table 3: activation sweep (MLP-5, λ = 1e-4, MNIST); GELU: 4 seeds, one diverged and excluded.
TABLE3 = {
    "relu": Condition(3, 0.01, (297, 9), (1.077, 0.020)),
    "gelu": Condition(4, 0.05, (265, 21), (2.128, 0.515)),
    "tanh": Condition(3, 0.05, (220, 0), (1.325, 0.033)),
}

# Table 4: weight-decay sweep (MLP-5, ReLU, MNIST, ε = 0.01); λ = 5e-4 never collapses (NC1 stalls ≈ 0.03).
TABLE4 = {
    1e-5: Condition(3, 0.01, (380, 50), (1.035, 0.087), collapsed=3),
    5e-5: Condition(3, 0.01, (290, 10), (0.983, 0.006), collapsed=3),
    1e-4: Condition(3, 0.01, (297, 9), (1.077, 0.020), collapsed=3),
    5e-4: Condition(3, 0.01, None, None, collapsed=0),
}
TABLE4_DNF_NC1 = 0.03  # where NC1 stalls at λ = 5e-4

# Table 5: fn* pooled within sweeps (ReLU): (T_NC range, fn* mean ± std); the combined row over 21 runs.
TABLE5 = {
    "depth": ((250, 340), (1.052, 0.063)),
    "weight_decay": ((290, 380), (1.038, 0.066)),
    "width": ((257, 383), (1.135, 0.085)),
    "combined": ((250, 383), (1.096, 0.091)),
}
TABLE5_COMBINED_N = 21

# Table 6: fn* by (model, data set) pair; one-way ANOVA over the four cells; conditional effects.
TABLE6 = {
    ("mlp", "mnist"): GridCell(0.01, 12, (1.052, 0.063), (1.005, 1.099), 0.059),
    ("resnet20", "mnist"): GridCell(0.01, 3, (5.867, 0.034), (5.781, 5.952), 0.006),
    ("mlp", "cifar10"): GridCell(0.05, 3, (0.901, 0.053), (0.738, 1.062), 0.059),
    ("resnet20", "cifar10"): GridCell(0.01, 3, (1.515, 0.007), (1.494, 1.535), 0.005),
}
TABLE6_ANOVA_F = 55.88  # p < 0.0001
TABLE6_EFFECTS = {  # (Δ, relative change)
    "architecture | mnist": (4.815, 4.58),
    "architecture | cifar10": (0.614, 0.68),
    "dataset | mlp": (-0.151, -0.14),
    "dataset | resnet20": (-4.352, -0.74),
}
MULTIPLICATIVE_MISS = 2.32  # a log-additive model under-predicts ResNet-20 / MNIST by 232 %

# Table 7: width sweep (MLP-5, ReLU, λ = 1e-4, MNIST, ε = 0.01, 3 seeds).
TABLE7 = {
    128: Condition(3, 0.01, (383, 15), (1.241, 0.105), cv=0.084),
    256: Condition(3, 0.01, (327, 12), (1.125, 0.041), cv=0.036),
    512: Condition(3, 0.01, (310, 10), (1.096, 0.017), cv=0.016),
    1024: Condition(3, 0.01, (257, 12), (1.080, 0.059), cv=0.054),
}
WIDTH_REGRESSION = {"exponent": -0.064, "r2": 0.84, "p": 0.08, "n": 4}  # fn* ∝ width^exponent

# Table 8: intervention (MLP-5, ReLU, λ = 1e-4, MNIST, 3 seeds); fn before rescaling ≈ 16.2.
TABLE8 = {
    1.0: InterventionRow(16.2, (287, 35), (1.103, 0.020), None),
    0.3: InterventionRow(4.9, (317, 6), (1.093, 0.033), 0.22),
    3.0: InterventionRow(48.7, (317, 46), (1.054, 0.049), 0.42),
}

# The early warning (width sweep, 8 confirmed runs): T_NC − T_cross and the rule T_NC ≈ T_cross + 62.
LEAD_TIME = {"mean": 62, "std": 37, "n": 8, "mae": 24, "mae_range": (10, 78)}

# Protocol validation (MLP-5, ReLU, λ = 1e-4, MNIST, seed 0, 600 CE epochs).
CE_ONLY = {"nc1_min": 0.076, "nc1_final": 0.114, "fn_range": (11, 25)}

WHERE = {  # a table's stem → where the paper prints it
    "table1_threshold": "Table 1", "table2_depth": "Table 2", "table3_activation": "Table 3",
    "table4_weight_decay": "Table 4", "table5_summary": "Table 5", "table6_grid": "Table 6",
    "table7_width": "Table 7", "table8_intervention": "Table 8", "lead_time": "Section 5.6",
}

# Each table's published rows keyed as the report's per-condition frames key them (the swept value).
SWEEP_TABLES = {"table2_depth": ("depth", TABLE2), "table3_activation": ("activation", TABLE3),
                "table4_weight_decay": ("weight_decay", TABLE4), "table7_width": ("width", TABLE7)}
