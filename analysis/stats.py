"""Statistics on plain arrays, each returning a small dataclass of estimates and intervals.

Nothing here knows about MLflow or pandas frames: `analysis.aggregate` passes arrays in
(the rliable `metrics.py` pattern), so every function can be checked against a hand-worked toy array.

Choices, stated once:
- Spread is the sample standard deviation (ddof = 1); CV = std / mean (a fraction, not %).
- The t-interval is mean ± t_{(1+c)/2, n-1} · std/√n (`scipy.stats.t`).
- The bootstrap interval is the **percentile** bootstrap of the mean (`scipy.stats.bootstrap`,
  10,000 resamples, fixed seed). The paper's bootstrap numbers match percentile, not BCa: for
  ResNet-20/CIFAR-10 fn* {1.521, 1.517, 1.506} the percentile interval is [1.506, 1.521], the paper's
  §5.1 value, whereas BCa gives [1.506, 1.520].
- `t_test` is Welch's (unequal variances) unless `equal_var=True`. The paper's intervention
  p-values (0.22, 0.42) are reproduced by Student's pooled test, so Table 8 reports both.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Hashable, Mapping, Sequence

import numpy as np
from scipy import stats as sps

from ncshared.schema import DEFAULT_LEAD

CONFIDENCE = 0.95
N_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
NAN_INTERVAL = (math.nan, math.nan)


@dataclass(frozen=True)
class Summary:
    """Mean, spread and 95 % intervals of one sample."""

    n: int
    mean: float
    std: float  # ddof = 1; NaN for n < 2
    cv: float  # std / mean (fraction)
    t_ci: tuple[float, float]  # Student-t interval of the mean
    bootstrap_ci: tuple[float, float]  # percentile bootstrap interval of the mean
    confidence: float = CONFIDENCE


@dataclass(frozen=True)
class AnovaResult:
    f: float
    p: float
    df_between: int  # k − 1
    df_within: int  # N − k


@dataclass(frozen=True)
class TTestResult:
    t: float
    p: float  # two-sided
    df: float  # Welch–Satterthwaite df for Welch's test, n_a + n_b − 2 for Student's
    welch: bool


@dataclass(frozen=True)
class RegressionResult:
    """log y = intercept + slope · log x (natural logs), i.e. y ∝ x^slope."""

    slope: float
    intercept: float
    r_squared: float
    p: float  # two-sided, H0: slope = 0
    stderr: float
    n: int


@dataclass(frozen=True)
class Correlation:
    r: float
    p: float
    n: int


@dataclass(frozen=True)
class Effect:
    """Change from a reference value: delta = new − ref, relative = delta / ref (fraction)."""

    reference: float
    value: float
    delta: float
    relative: float


@dataclass(frozen=True)
class GridEffects:
    """The paper's §5.5/§6.2 decomposition of a 2 × 2 (architecture × dataset) grid of fn*."""

    archs: tuple[Hashable, Hashable]  # (reference, other), e.g. ("MLP-5", "ResNet-20")
    datasets: tuple[Hashable, Hashable]  # (reference, other), e.g. ("mnist", "cifar10")
    architecture_effect: dict[Hashable, Effect]  # per dataset: reference arch → other arch
    dataset_effect: dict[Hashable, Effect]  # per arch: reference dataset → other dataset
    multiplicative_prediction: float  # fn*(other arch, ref dataset) predicted from the other three cells
    multiplicative_miss: float  # observed / predicted − 1 (paper: 2.32, "under-predicts by 232 %")


@dataclass(frozen=True)
class LeadTimeStats:
    """How well T_cross + lead predicts T_NC, in-sample and leave-one-out."""

    n: int  # runs with both T_NC and T_cross
    n_no_cross: int  # runs left out because fn never crossed fn_ref (or T_NC is missing)
    lead_mean: float  # mean of T_NC − T_cross
    lead_std: float  # ddof = 1
    lead: float  # the fixed lead used for `mae` (the paper's `DEFAULT_LEAD`)
    mae: float  # mean |T_cross + lead − T_NC|, in-sample (fn_ref and lead fitted on the same runs)
    abs_errors: tuple[float, ...]
    loso_n: int  # runs with a leave-one-seed-out T_cross
    loso_lead_mean: float
    loso_mae: float  # mean |T_cross_loso,i + mean_{j≠i}(T_NC,j − T_cross_loso,j) − T_NC,i|


def _as_array(values: Sequence[float] | np.ndarray) -> np.ndarray:
    array = np.asarray(values, dtype=float).ravel()
    return array[np.isfinite(array)]


def _rng_kwargs(seed: int) -> dict[str, object]:
    """scipy ≥ 1.15 takes `rng`; older releases take `random_state`."""
    name = "rng" if "rng" in inspect.signature(sps.bootstrap).parameters else "random_state"
    return {name: np.random.default_rng(seed)}


def t_interval(values: Sequence[float] | np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Student-t interval of the mean (df = n − 1); NaNs for n < 2."""
    x = _as_array(values)
    if x.size < 2:
        return NAN_INTERVAL
    if np.all(x == x[0]):
        return float(x[0]), float(x[0])  # zero spread: the interval is the point
    low, high = sps.t.interval(confidence, x.size - 1, loc=x.mean(), scale=sps.sem(x))
    return float(low), float(high)


def bootstrap_interval(
    values: Sequence[float] | np.ndarray,
    confidence: float = CONFIDENCE,
    n_resamples: int = N_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean; reproducible for a seed; NaNs for n < 2."""
    x = _as_array(values)
    if x.size < 2:
        return NAN_INTERVAL
    if np.all(x == x[0]):
        return float(x[0]), float(x[0])  # every resample has the same mean
    result = sps.bootstrap(
        (x,), np.mean, n_resamples=n_resamples, confidence_level=confidence, method="percentile",
        vectorized=True, **_rng_kwargs(seed),
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def describe(
    values: Sequence[float] | np.ndarray,
    confidence: float = CONFIDENCE,
    n_resamples: int = N_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> Summary:
    """n, mean, std (ddof 1), CV, t-interval and percentile-bootstrap interval; non-finite values dropped."""
    x = _as_array(values)
    mean = float(x.mean()) if x.size else math.nan
    std = float(x.std(ddof=1)) if x.size >= 2 else math.nan
    cv = std / mean if x.size >= 2 and mean != 0.0 else math.nan
    return Summary(
        n=int(x.size),
        mean=mean,
        std=std,
        cv=cv,
        t_ci=t_interval(x, confidence),
        bootstrap_ci=bootstrap_interval(x, confidence, n_resamples, seed),
        confidence=confidence,
    )


def one_way_anova(groups: Sequence[Sequence[float]]) -> AnovaResult:
    """One-way ANOVA across groups (`scipy.stats.f_oneway`); groups with no finite value are dropped."""
    arrays = [_as_array(group) for group in groups]
    arrays = [array for array in arrays if array.size]
    k, n = len(arrays), sum(array.size for array in arrays)
    if k < 2 or n <= k:
        return AnovaResult(math.nan, math.nan, k - 1, n - k)
    result = sps.f_oneway(*arrays)
    return AnovaResult(float(result.statistic), float(result.pvalue), k - 1, n - k)


def t_test(a: Sequence[float], b: Sequence[float], equal_var: bool = False) -> TTestResult:
    """Two-sample two-sided t-test of mean(a) − mean(b): Welch's by default, Student's with equal_var."""
    x, y = _as_array(a), _as_array(b)
    if x.size < 2 or y.size < 2:
        return TTestResult(math.nan, math.nan, math.nan, not equal_var)
    result = sps.ttest_ind(x, y, equal_var=equal_var)
    return TTestResult(float(result.statistic), float(result.pvalue), float(result.df), not equal_var)


def loglog_regression(x: Sequence[float], y: Sequence[float]) -> RegressionResult:
    """Least squares of log y on log x (`scipy.stats.linregress`): slope is the power-law exponent."""
    lx, ly = np.log(np.asarray(x, dtype=float)), np.log(np.asarray(y, dtype=float))
    keep = np.isfinite(lx) & np.isfinite(ly)
    lx, ly = lx[keep], ly[keep]
    if lx.size < 3 or np.all(lx == lx[0]):
        return RegressionResult(math.nan, math.nan, math.nan, math.nan, math.nan, int(lx.size))
    fit = sps.linregress(lx, ly)
    return RegressionResult(
        float(fit.slope), float(fit.intercept), float(fit.rvalue**2), float(fit.pvalue), float(fit.stderr), int(lx.size)
    )


def pearson(x: Sequence[float], y: Sequence[float]) -> Correlation:
    """Pearson r with its two-sided p (`scipy.stats.pearsonr`); NaNs for fewer than 3 pairs."""
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    if a.size < 3:
        return Correlation(math.nan, math.nan, int(a.size))
    result = sps.pearsonr(a, b)
    return Correlation(float(result.statistic), float(result.pvalue), int(a.size))


def effect(reference: float, value: float) -> Effect:
    """`value` relative to `reference`: delta and delta / reference."""
    delta = value - reference
    return Effect(reference, value, delta, delta / reference if reference else math.nan)


def relative_effect_interval(
    reference: Sequence[float], values: Sequence[float], confidence: float = CONFIDENCE,
    n_resamples: int = N_RESAMPLES, seed: int = BOOTSTRAP_SEED,
) -> tuple[float, float]:
    """Percentile bootstrap interval of mean(values) / mean(reference) − 1, each sample resampled on its own (the
    relative effect of `effect`, e.g. of the architecture on fn* within a data set); NaNs with fewer than 2 of
    either."""
    x, y = _as_array(reference), _as_array(values)
    if x.size < 2 or y.size < 2:
        return NAN_INTERVAL

    def relative(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
        return b.mean(axis=axis) / a.mean(axis=axis) - 1.0

    result = sps.bootstrap((x, y), relative, n_resamples=n_resamples, confidence_level=confidence,
                           method="percentile", vectorized=True, paired=False, **_rng_kwargs(seed))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def architecture_dataset_effects(
    fn_star_by_cell: Mapping[tuple[Hashable, Hashable], float],
    archs: tuple[Hashable, Hashable] | None = None,
    datasets: tuple[Hashable, Hashable] | None = None,
) -> GridEffects:
    """Conditional effects in a 2 × 2 grid of mean fn* keyed by (arch, dataset), as in the paper's Table 6.

    archs/datasets give (reference, other); by default the first-seen key of each is the reference.
    Architecture effect on dataset d: fn*(arch₁, d) / fn*(arch₀, d) − 1 (paper: +458 % MNIST, +68 % CIFAR-10).
    Dataset effect for arch a: fn*(a, d₁) / fn*(a, d₀) − 1 (paper: −14 % MLP-5, −74 % ResNet-20).
    Multiplicative (log-additive) model: fn*(a₁, d₀) ≈ fn*(a₀, d₀) · fn*(a₁, d₁) / fn*(a₀, d₁);
    the miss is observed / predicted − 1 (paper: 5.867 / 1.769 − 1 = +232 %).
    """
    seen_archs = list(dict.fromkeys(arch for arch, _ in fn_star_by_cell))
    seen_datasets = list(dict.fromkeys(dataset for _, dataset in fn_star_by_cell))
    a0, a1 = archs if archs is not None else tuple(seen_archs[:2])
    d0, d1 = datasets if datasets is not None else tuple(seen_datasets[:2])
    cell = {key: float(value) for key, value in fn_star_by_cell.items()}
    missing = [key for key in ((a0, d0), (a0, d1), (a1, d0), (a1, d1)) if key not in cell]
    if missing:
        raise ValueError(f"architecture_dataset_effects: a 2 x 2 grid is needed; missing cells {missing}")
    predicted = cell[a0, d0] * cell[a1, d1] / cell[a0, d1]
    return GridEffects(
        archs=(a0, a1),
        datasets=(d0, d1),
        architecture_effect={d: effect(cell[a0, d], cell[a1, d]) for d in (d0, d1)},
        dataset_effect={a: effect(cell[a, d0], cell[a, d1]) for a in (a0, a1)},
        multiplicative_prediction=predicted,
        multiplicative_miss=cell[a1, d0] / predicted - 1.0,
    )


def _ordered(epochs: Sequence[float], values: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    e, v = np.asarray(epochs, dtype=float), np.asarray(values, dtype=float)
    order = np.argsort(e, kind="stable")
    return e[order], v[order]


def switch_transient_end(epochs: Sequence[float], fn: Sequence[float], start_epoch: float) -> float:
    """The end of the MSE switch's transient (docs/metrics.md): the first epoch ≥ start_epoch (the first Phase-2 epoch)
    whose fn no later epoch exceeds — after the switch's dip, the top of fn's rebound, from which it decays. NaN when
    the run has no such epoch (no Phase 2, or no finite fn)."""
    e, f = _ordered(epochs, fn)
    keep = (e >= start_epoch) & np.isfinite(f)
    if not keep.any():
        return math.nan
    e, f = e[keep], f[keep]
    return float(e[int(np.argmax(f))])  # argmax: the first of equal maxima


def sustained_crossing_epoch(epochs: Sequence[float], fn: Sequence[float], fn_ref: float, after_epoch: float) -> float:
    """The sustained crossing (beyond the paper): the first epoch after `after_epoch` (the switch transient's end) from
    which fn stays below fn_ref to the run's last epoch; NaN when fn ends at or above fn_ref, or fn_ref is not finite.

    >>> sustained_crossing_epoch([1, 2, 3, 4, 5, 6], [9, 1, 5, 2, 4, 1], 3.0, after_epoch=3)  # dips at 2 and 4
    6.0
    """
    e, f = _ordered(epochs, fn)
    keep = e > after_epoch
    e, f = e[keep], f[keep]
    if not e.size or not math.isfinite(fn_ref) or not f[-1] < fn_ref:
        return math.nan
    above = np.flatnonzero(~(f < fn_ref))  # NaN counts as not below
    return float(e[above[-1] + 1]) if above.size else float(e[0])


def crossing_epoch(
    epochs: Sequence[float], fn: Sequence[float], fn_ref: float, start_epoch: float = -math.inf
) -> float:
    """T_cross: the first epoch ≥ start_epoch (the first Phase-2 epoch) with fn < fn_ref; NaN if none."""
    e, f = np.asarray(epochs, dtype=float), np.asarray(fn, dtype=float)
    order = np.argsort(e, kind="stable")
    e, f = e[order], f[order]
    hits = np.flatnonzero((e >= start_epoch) & (f < fn_ref))
    return float(e[hits[0]]) if hits.size and math.isfinite(fn_ref) else math.nan


def loso_fn_ref(fn_star_by_seed: Mapping[Hashable, float]) -> dict[Hashable, float]:
    """Leave-one-seed-out reference: for each seed, the mean fn* of the *other* seeds (NaN if there are none)."""
    values = {key: float(value) for key, value in fn_star_by_seed.items() if math.isfinite(float(value))}
    total, count = sum(values.values()), len(values)
    out: dict[Hashable, float] = {}
    for key in fn_star_by_seed:
        others = count - (key in values)
        rest = total - values.get(key, 0.0)
        out[key] = rest / others if others else math.nan
    return out


def lead_time_stats(
    t_nc: Sequence[float],
    t_cross: Sequence[float],
    lead: float = DEFAULT_LEAD,
    t_cross_loso: Sequence[float] | None = None,
) -> LeadTimeStats:
    """Lead time T_NC − T_cross (mean ± std) and the MAE of the rule T̂_NC = T_cross + lead.

    In-sample, as the paper: T_cross from an fn_ref that includes the run itself, and a fixed `lead` (the
    paper's `DEFAULT_LEAD` was itself the mean over the same runs). Leave-one-seed-out: pass `t_cross_loso`
    (T_cross from `loso_fn_ref`); run i is predicted as T_cross_loso,i + the mean lead of the other runs.
    Runs with a missing T_NC or T_cross are left out and counted.
    """
    nc, cross = np.asarray(t_nc, dtype=float), np.asarray(t_cross, dtype=float)
    keep = np.isfinite(nc) & np.isfinite(cross)
    leads = nc[keep] - cross[keep]
    errors = np.abs(cross[keep] + lead - nc[keep])
    loso_n, loso_mean, loso_mae = 0, math.nan, math.nan
    if t_cross_loso is not None:
        loso = np.asarray(t_cross_loso, dtype=float)
        ok = np.isfinite(nc) & np.isfinite(loso)
        loso_leads, loso_cross, loso_nc = nc[ok] - loso[ok], loso[ok], nc[ok]
        loso_n = int(ok.sum())
        if loso_n:
            loso_mean = float(loso_leads.mean())
        if loso_n >= 2:
            others_mean = (loso_leads.sum() - loso_leads) / (loso_n - 1)
            loso_mae = float(np.mean(np.abs(loso_cross + others_mean - loso_nc)))
    return LeadTimeStats(
        n=int(keep.sum()),
        n_no_cross=int((~keep).sum()),
        lead_mean=float(leads.mean()) if leads.size else math.nan,
        lead_std=float(leads.std(ddof=1)) if leads.size >= 2 else math.nan,
        lead=float(lead),
        mae=float(errors.mean()) if errors.size else math.nan,
        abs_errors=tuple(float(e) for e in errors),
        loso_n=loso_n,
        loso_lead_mean=loso_mean,
        loso_mae=loso_mae,
    )
