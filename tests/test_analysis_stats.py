"""analysis.stats against hand-worked toy arrays and against the paper's reported numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from analysis import stats
from ncshared.schema import DEFAULT_LEAD

T_975_DF2 = 4.302652729911275  # Student-t 0.975 quantile, df = 2 (tables: 4.303)
T_975_DF3 = 3.182446305284263  # df = 3 (tables: 3.182)
P_T_SQRT27_DF1 = 1 - 2 / math.pi * math.atan(math.sqrt(27))  # two-sided p of t = √27 on df 1 (Cauchy): 0.1210


def test_describe_hand_worked():
    # [1, 2, 3, 4]: mean 2.5; squared deviations 2.25 + 0.25 + 0.25 + 2.25 = 5, /3 → std √(5/3) = 1.29099;
    # CV = 1.29099 / 2.5 = 0.51640; t-CI = 2.5 ± 3.18245 · √(5/3) / √4 = 2.5 ± 2.05426.
    summary = stats.describe([1.0, 2.0, 3.0, 4.0])
    half = T_975_DF3 * math.sqrt(5 / 3) / 2
    assert summary.n == 4
    assert summary.mean == 2.5
    assert summary.std == pytest.approx(math.sqrt(5 / 3), rel=1e-12)
    assert summary.cv == pytest.approx(math.sqrt(5 / 3) / 2.5, rel=1e-12)
    assert summary.t_ci == pytest.approx((2.5 - half, 2.5 + half), rel=1e-12)
    low, high = summary.bootstrap_ci  # resampled means lie in [1, 4] and straddle the mean
    assert 1.0 <= low < 2.5 < high <= 4.0


def test_describe_small_and_degenerate_samples():
    one = stats.describe([7.0])  # n = 1: a mean, no spread, no interval
    assert (one.n, one.mean) == (1, 7.0)
    assert math.isnan(one.std) and math.isnan(one.cv)
    assert all(math.isnan(v) for v in one.t_ci + one.bootstrap_ci)
    empty = stats.describe([])
    assert empty.n == 0 and math.isnan(empty.mean)
    same = stats.describe([2.0, 2.0, 2.0])  # zero spread: both intervals are the point itself
    assert (same.std, same.cv, same.t_ci, same.bootstrap_ci) == (0.0, 0.0, (2.0, 2.0), (2.0, 2.0))
    assert stats.describe([1.0, math.nan, 3.0]).n == 2  # non-finite values are dropped


def test_t_interval_matches_the_paper_resnet_cells():
    # ResNet-20/MNIST fn* {5.858, 5.905, 5.837}: mean 5.866667, std 0.0348186,
    # half-width 4.30265 · std/√3 = 0.086494.
    mnist = stats.describe([5.858, 5.905, 5.837])
    assert mnist.mean == pytest.approx(5.866667, abs=1e-6)
    assert mnist.std == pytest.approx(0.0348186, abs=1e-7)
    assert mnist.t_ci == pytest.approx((5.780173, 5.953161), abs=1e-6)
    assert mnist.t_ci == pytest.approx((5.866667 - T_975_DF2 * 0.0348186 / math.sqrt(3),
                                        5.866667 + T_975_DF2 * 0.0348186 / math.sqrt(3)), abs=1e-6)
    # ResNet-20/CIFAR-10 fn* {1.521, 1.517, 1.506}: mean 1.514667, std 0.0077675, half-width 0.019296.
    cifar = stats.describe([1.521, 1.517, 1.506])
    assert cifar.t_ci == pytest.approx((1.495371, 1.533962), abs=1e-6)
    # The paper prints [5.781, 5.952] and [1.494, 1.535]: its fn* values are rounded to 3 decimals here, and
    # moving the inputs by ≤ 5e-4 moves the endpoints by ~1e-3, so agreement is to the third decimal ± 1.
    assert mnist.t_ci == pytest.approx((5.781, 5.952), abs=1.5e-3)
    assert cifar.t_ci == pytest.approx((1.494, 1.535), abs=1.5e-3)
    assert (round(mnist.cv, 3), round(cifar.cv, 3)) == (0.006, 0.005)  # the paper's CV 0.6 % and 0.5 %


def test_bootstrap_is_percentile_and_reproducible():
    # {1.521, 1.517, 1.506}: P(a resample is all 1.506) = 1/27 = 3.7 % > 2.5 %, so the 2.5th percentile of the
    # resampled means is exactly 1.506, and likewise the 97.5th is 1.521 — the paper's §5.1 interval.
    assert stats.describe([1.521, 1.517, 1.506]).bootstrap_ci == (1.506, 1.521)
    values = np.sqrt(np.arange(1.0, 11.0))  # irrational values: resampled means rarely tie
    first = stats.bootstrap_interval(values, seed=3)
    assert stats.bootstrap_interval(values, seed=3) == first  # same seed, same interval
    assert stats.describe(values, seed=3).bootstrap_ci == first
    assert stats.bootstrap_interval(values, seed=4) != first  # another seed draws other resamples
    assert 1.0 < first[0] < values.mean() < first[1] < math.sqrt(10)


def test_one_way_anova_hand_worked():
    # means 2, 3, 7; grand mean 4; SSB = 3·(4 + 1 + 9) = 42 on 2 df → 21; SSW = 2 + 2 + 2 = 6 on 6 df → 1; F = 21.
    result = stats.one_way_anova([[1, 2, 3], [2, 3, 4], [6, 7, 8]])
    assert result.f == pytest.approx(21.0, rel=1e-12)
    assert (result.df_between, result.df_within) == (2, 6)
    # two groups: F = t² of Student's test, same p. [1,2,3] vs [4,5,6]: SSB = 13.5, SSW = 4 → F = 13.5, p = 0.0213.
    two = stats.one_way_anova([[1, 2, 3], [4, 5, 6]])
    assert two.f == pytest.approx(13.5, rel=1e-12)
    assert two.p == pytest.approx(stats.t_test([1, 2, 3], [4, 5, 6], equal_var=True).p, rel=1e-9)
    assert two.p == pytest.approx(0.021312, abs=1e-6)
    assert math.isnan(stats.one_way_anova([[1.0, 2.0]]).f)  # one group: no test


def test_t_test_welch_by_default_and_student_on_request():
    # a = [1,2,3] (var 1), b = [3,5,7] (var 4): se = √(1/3 + 4/3) = √(5/3); t = (2 − 5)/√(5/3) = −2.32379.
    # Welch df = (5/3)² / ((1/3)²/2 + (4/3)²/2) = (25/9) / (17/18) = 50/17; Student df = 3 + 3 − 2 = 4.
    welch = stats.t_test([1, 2, 3], [3, 5, 7])
    student = stats.t_test([1, 2, 3], [3, 5, 7], equal_var=True)
    assert welch.welch and not student.welch
    assert welch.t == pytest.approx(-3 / math.sqrt(5 / 3), rel=1e-12)
    assert student.t == pytest.approx(-3 / math.sqrt(5 / 3), rel=1e-12)  # equal n: same t, other df
    assert welch.df == pytest.approx(50 / 17, rel=1e-12)
    assert student.df == 4.0
    assert welch.p > student.p  # fewer df, wider tails


def test_t_test_reproduces_the_paper_intervention_p_values():
    # Table 8 as samples with the printed mean ± std (n = 3: m − s, m, m + s has std s): control 287 ± 35,
    # scale-down 317 ± 6, scale-up 317 ± 46. Student: t = 30/√(630.5·2/3) = 1.463 on 4 df → p = 0.217 ≈ 0.22;
    # t = 30/√(1670.5·2/3) = 0.899 → p = 0.419 ≈ 0.42. Welch's gives 0.27 and 0.42.
    control, down, up = [252, 287, 322], [311, 317, 323], [271, 317, 363]
    assert round(stats.t_test(down, control, equal_var=True).p, 2) == 0.22
    assert round(stats.t_test(up, control, equal_var=True).p, 2) == 0.42
    assert round(stats.t_test(down, control).p, 2) == 0.27
    assert round(stats.t_test(up, control).p, 2) == 0.42


def test_loglog_regression_hand_worked():
    # y = 3·x^(−1/2) exactly: slope −0.5, intercept ln 3, R² = 1.
    exact = stats.loglog_regression([1, 2, 4, 8], [3 / math.sqrt(x) for x in (1, 2, 4, 8)])
    assert exact.slope == pytest.approx(-0.5, rel=1e-12)
    assert exact.intercept == pytest.approx(math.log(3), rel=1e-12)
    assert exact.r_squared == pytest.approx(1.0, rel=1e-12)
    # log x = 0, 1, 2; log y = 0, 1, 3: Sxy = 3, Sxx = 2 → slope 1.5, intercept 4/3 − 1.5 = −1/6;
    # residuals 1/6, −1/3, 1/6 → SSres = 1/6, SStot = 14/3 → R² = 27/28; t = √27 on 1 df.
    fit = stats.loglog_regression(np.exp([0, 1, 2]), np.exp([0, 1, 3]))
    assert (fit.slope, fit.intercept) == pytest.approx((1.5, -1 / 6), rel=1e-12)
    assert fit.r_squared == pytest.approx(27 / 28, rel=1e-12)
    assert fit.p == pytest.approx(P_T_SQRT27_DF1, rel=1e-9)
    assert fit.n == 3


def test_pearson_hand_worked():
    # x = 1, 2, 3; y = 1, 2, 4: Sxy = 3, Sxx = 2, Syy = 42/9 → r = 3/√(84/9) = 9/√84 = 0.98198; t = √27 on 1 df.
    result = stats.pearson([1, 2, 3], [1, 2, 4])
    assert result.r == pytest.approx(9 / math.sqrt(84), rel=1e-12)
    assert result.p == pytest.approx(P_T_SQRT27_DF1, rel=1e-9)
    assert math.isnan(stats.pearson([1, 2], [3, 4]).r)  # fewer than 3 pairs


def test_architecture_dataset_effects_toy():
    # arch a → b: on x 1 → 4 (+300 %), on y 2 → 2 (0 %);
    # dataset x → y: for a 1 → 2 (+100 %), for b 4 → 2 (−50 %).
    # Multiplicative model: fn(b, x) ≈ fn(a, x)·fn(b, y)/fn(a, y) = 1·2/2 = 1; observed 4 → miss 4/1 − 1 = 3.
    grid = stats.architecture_dataset_effects({("a", "x"): 1.0, ("b", "x"): 4.0, ("a", "y"): 2.0, ("b", "y"): 2.0})
    assert (grid.archs, grid.datasets) == (("a", "b"), ("x", "y"))
    assert grid.architecture_effect["x"].relative == 3.0 and grid.architecture_effect["y"].relative == 0.0
    assert grid.dataset_effect["a"].relative == 1.0 and grid.dataset_effect["b"].relative == -0.5
    assert grid.multiplicative_prediction == 1.0 and grid.multiplicative_miss == 3.0


def test_architecture_dataset_effects_match_the_paper():
    # Table 6 means: (5.867 − 1.052)/1.052 = +458 %; (1.515 − 0.901)/0.901 = +68 %;
    # (0.901 − 1.052)/1.052 = −14 %; (1.515 − 5.867)/5.867 = −74 %;
    # multiplicative 1.052·1.515/0.901 = 1.769, 5.867/1.769 − 1 = +232 %.
    cells = {("MLP-5", "mnist"): 1.052, ("ResNet-20", "mnist"): 5.867,
             ("MLP-5", "cifar10"): 0.901, ("ResNet-20", "cifar10"): 1.515}
    grid = stats.architecture_dataset_effects(cells, ("MLP-5", "ResNet-20"), ("mnist", "cifar10"))
    assert grid.architecture_effect["mnist"].delta == pytest.approx(4.815, abs=1e-9)
    assert round(100 * grid.architecture_effect["mnist"].relative) == 458
    assert grid.architecture_effect["cifar10"].delta == pytest.approx(0.614, abs=1e-9)
    assert round(100 * grid.architecture_effect["cifar10"].relative) == 68
    assert round(100 * grid.dataset_effect["MLP-5"].relative) == -14
    assert round(100 * grid.dataset_effect["ResNet-20"].relative) == -74
    assert grid.multiplicative_prediction == pytest.approx(1.052 * 1.515 / 0.901, rel=1e-12)
    assert round(100 * grid.multiplicative_miss) == 232
    with pytest.raises(ValueError, match="missing cells"):
        stats.architecture_dataset_effects({("a", "x"): 1.0, ("b", "y"): 2.0}, ("a", "b"), ("x", "y"))


def test_crossing_epoch_starts_in_phase_2():
    # fn dips below 2.5 at epoch 2 (Phase 1) but the first Phase-2 epoch (≥ 3) below it is epoch 4.
    epochs, fn = [1, 2, 3, 4, 5, 6], [5.0, 1.0, 3.0, 2.0, 1.0, 0.5]
    assert stats.crossing_epoch(epochs, fn, 2.5, start_epoch=3) == 4.0
    assert stats.crossing_epoch(epochs, fn, 2.5) == 2.0
    assert math.isnan(stats.crossing_epoch(epochs, fn, 0.1, start_epoch=3))


def test_loso_fn_ref_is_the_mean_of_the_other_seeds():
    # {1, 2, 6}: seed 0 → (2 + 6)/2 = 4; seed 1 → (1 + 6)/2 = 3.5; seed 2 → (1 + 2)/2 = 1.5.
    assert stats.loso_fn_ref({0: 1.0, 1: 2.0, 2: 6.0}) == {0: 4.0, 1: 3.5, 2: 1.5}
    alone = stats.loso_fn_ref({0: 1.0})
    assert math.isnan(alone[0])


def test_lead_time_stats_in_sample_and_leave_one_out():
    # T_NC 100, 120, 150; T_cross 50, 60, 80 → leads 50, 60, 70: mean 60, std 10.
    # T_cross + 65 = 115, 125, 145 → errors 15, 5, 5 → MAE 25/3.
    # LOSO lead of each run = mean of the other two: 65, 60, 55 → predictions 115, 120, 135
    # → errors 15, 0, 15 → MAE 10.
    # A fourth run that never crossed (NaN) is left out of both and counted.
    result = stats.lead_time_stats([100, 120, 150, 90], [50, 60, 80, math.nan], lead=65,
                                   t_cross_loso=[50, 60, 80, math.nan])
    assert (result.n, result.n_no_cross) == (3, 1)
    assert (result.lead_mean, result.lead_std) == (60.0, 10.0)
    assert result.abs_errors == (15.0, 5.0, 5.0)
    assert result.mae == pytest.approx(25 / 3, rel=1e-12)
    assert (result.loso_n, result.loso_lead_mean, result.loso_mae) == (3, 60.0, 10.0)
    default = stats.lead_time_stats([100], [50])
    assert math.isnan(default.loso_mae)  # no LOSO T_cross given
    assert default.lead == DEFAULT_LEAD  # the paper's lead unless told otherwise
