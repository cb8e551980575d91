"""Statistics of the study: confidence intervals, rank correlations, multiple-testing correction.

- :func:`mean_ci` — the pre-registered interval of a mean: BCa bootstrap (Efron & Tibshirani 1993, §14.3) with
  ``n_resamples`` (10k) resamples when n ≥ 8, the Student-t interval x̄ ± t_{n−1} s/√n below. :func:`bootstrap_ci`
  is BCa for any vectorized statistic: θ* on resamples, bias z₀ = Φ⁻¹(#{θ* < θ̂} + #{θ* ≤ θ̂})/2B), acceleration
  a = Σ U³ / (6 (Σ U²)^{3/2}) from the jackknife U_i = (n−1)(θ̄₍.₎ − θ₍i₎), bounds the percentiles
  Φ(z₀ + (z₀ + z_α)/(1 − a(z₀ + z_α))) of θ* (linear interpolation) — as ``scipy.stats.bootstrap(method='BCa')``.
- :func:`kendall_tau` — τ-b (tie-corrected, as ``scipy.stats.kendalltau``) or τ-a = Σ_{i≠j} sign(Δx)sign(Δy) /
  n(n−1); :func:`kendall_ci` bootstraps τ over the (x, y) pairs.
- :func:`granulated_kendall` — Jiang et al. 2020's Ψ: for each hyperparameter axis i, ψ_i is the mean τ-a over
  the groups of configurations that agree on every other axis (only axis i varies), Ψ = mean_i ψ_i;
  :func:`granulated_kendall_ci` bootstraps Ψ over the configurations (BCa).
- :func:`holm` — Holm–Bonferroni adjusted p-values p̃_(k) = max_{j≤k} min(1, (m − j + 1) p_(j)).
- :func:`paired_difference` / :func:`paired_ratio` — CI of the mean of a − b (or the geometric mean of a/b via
  log ratios) over paired replicates, with a two-sided one-sample t-test p-value for Holm.

Every routine is seeded (``seed``) and vectorized over resamples (10k resamples of n = 50 take milliseconds).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import special
from scipy import stats as sps

N_RESAMPLES = 10_000
BCA_MIN_N = 8


@dataclass
class Interval:
    """A point estimate with its two-sided ``level`` interval [lo, hi]; ``method``: 'bca', 't', 'exact' or
    'degenerate' (fewer than two finite values or zero spread)."""

    value: float
    lo: float
    hi: float
    n: int
    method: str
    level: float = 0.95

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    def __str__(self) -> str:
        return fmt(self)


def _fmt_num(x: float, digits: int) -> str:
    if not math.isfinite(x):
        return str(x)
    return f"{x:.{digits}g}"


def fmt(ci: Interval, digits: int = 3, unit: str = "") -> str:
    """``'0.56 [0.51, 0.61]'`` (plus ``unit``); the interval is omitted when degenerate."""
    u = f" {unit}" if unit else ""
    if ci.method == "degenerate" or not (math.isfinite(ci.lo) and math.isfinite(ci.hi)):
        return f"{_fmt_num(ci.value, digits)}{u} (n={ci.n})"
    return f"{_fmt_num(ci.value, digits)} [{_fmt_num(ci.lo, digits)}, {_fmt_num(ci.hi, digits)}]{u}"


def _clean(x: Sequence[float]) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64).reshape(-1)
    return a[np.isfinite(a)]


def _flat(a: np.ndarray) -> bool:
    """No spread beyond round-off (an interval would be meaningless)."""
    return a.size < 2 or float(np.ptp(a)) <= 1e-12 * max(1.0, float(np.abs(a).max()))


def resample_indices(n: int, n_resamples: int = N_RESAMPLES, seed: int = 0) -> np.ndarray:
    """``[n_resamples, n]`` bootstrap indices from ``np.random.default_rng(seed)`` (scipy's draw order)."""
    return np.random.default_rng(seed).integers(0, n, (n_resamples, n))


def bca_bounds(theta_hat: float, theta_b: np.ndarray, theta_jack: np.ndarray, level: float) -> tuple[float, float]:
    """BCa interval from the bootstrap replicates ``theta_b [B]`` and jackknife values ``theta_jack [n]``."""
    B = theta_b.size
    z0 = special.ndtri((np.count_nonzero(theta_b < theta_hat) + np.count_nonzero(theta_b <= theta_hat)) / (2 * B))
    u = (theta_jack.size - 1) * (theta_jack.mean() - theta_jack)
    den = np.sum(u**2)
    a = np.sum(u**3) / (6 * den**1.5) if den > 0 else 0.0
    z = special.ndtri((1 - level) / 2)
    alphas = [special.ndtr(z0 + (z0 + s) / (1 - a * (z0 + s))) for s in (z, -z)]
    if not all(np.isfinite(alphas)):  # all replicates on one side of θ̂: fall back to the percentile interval
        alphas = [(1 - level) / 2, (1 + level) / 2]
    lo, hi = np.percentile(theta_b, [100 * alphas[0], 100 * alphas[1]])
    return float(lo), float(hi)


def bootstrap_ci(
    x: Sequence[float],
    statistic: Callable[..., np.ndarray] = np.mean,
    level: float = 0.95,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
) -> Interval:
    """BCa bootstrap interval of ``statistic(x, axis=-1)`` (vectorized over rows of resamples); see module doc."""
    a = _clean(x)
    n = a.size
    if _flat(a):
        value = float(statistic(a, axis=-1)) if n else math.nan
        return Interval(value, value, value, n, "degenerate", level)
    theta_hat = float(statistic(a, axis=-1))
    theta_b = statistic(a[resample_indices(n, n_resamples, seed)], axis=-1)
    jack = statistic(np.broadcast_to(a, (n, n))[~np.eye(n, dtype=bool)].reshape(n, n - 1), axis=-1)
    lo, hi = bca_bounds(theta_hat, theta_b, jack, level)
    return Interval(theta_hat, lo, hi, n, "bca", level)


def t_interval(x: Sequence[float], level: float = 0.95) -> Interval:
    """Student-t interval of the mean: x̄ ± t_{(1+level)/2, n−1} s/√n."""
    a = _clean(x)
    n = a.size
    if _flat(a):
        value = float(a.mean()) if n else math.nan
        return Interval(value, value, value, n, "degenerate", level)
    m, se = float(a.mean()), float(a.std(ddof=1) / math.sqrt(n))
    h = float(sps.t.ppf((1 + level) / 2, n - 1)) * se
    return Interval(m, m - h, m + h, n, "t", level)


def mean_ci(x: Sequence[float], level: float = 0.95, n_resamples: int = N_RESAMPLES, seed: int = 0) -> Interval:
    """The study's interval of a mean: BCa bootstrap when n ≥ 8, Student-t below (non-finite values dropped)."""
    if _clean(x).size >= BCA_MIN_N:
        return bootstrap_ci(x, np.mean, level, n_resamples, seed)
    return t_interval(x, level)


def median_ci(x: Sequence[float], level: float = 0.95, n_resamples: int = N_RESAMPLES, seed: int = 0) -> Interval:
    """BCa bootstrap interval of the median (any n ≥ 2; a t-interval is not defined for medians)."""
    return bootstrap_ci(x, np.median, level, n_resamples, seed)


# --- rank correlation ----------------------------------------------------------------------------------------


def _tau_from_signs(sx: np.ndarray, sy: np.ndarray, variant: str) -> np.ndarray:
    """τ from sign matrices ``[..., n, n]`` (the diagonal is zero)."""
    s = (sx * sy).sum((-1, -2))
    if variant == "a":
        n = sx.shape[-1]
        return s / (n * (n - 1))
    den = np.sqrt((sx != 0).sum((-1, -2)) * (sy != 0).sum((-1, -2)).astype(np.float64))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, s / np.where(den > 0, den, 1), np.nan)


def kendall_tau(x: Sequence[float], y: Sequence[float], variant: str = "b") -> float:
    """Kendall's τ-b (``variant='b'``, = scipy's default) or τ-a (``'a'``) of the pairs (x_i, y_i)."""
    if variant not in ("a", "b"):
        raise ValueError(f"variant must be 'a' or 'b', got {variant!r}")
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError("x and y must be 1-D of equal length")
    if x.size < 2:
        return math.nan
    sx, sy = np.sign(x[:, None] - x[None, :]), np.sign(y[:, None] - y[None, :])
    return float(_tau_from_signs(sx, sy, variant))


def kendall_ci(
    x: Sequence[float], y: Sequence[float], variant: str = "b", level: float = 0.95,
    n_resamples: int = N_RESAMPLES, seed: int = 0,
) -> Interval:
    """τ with a BCa interval from resampling the (x, y) pairs (``n_resamples`` × n² sign products at once)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    n = x.size
    tau = kendall_tau(x, y, variant)
    if n < 3:
        return Interval(tau, math.nan, math.nan, n, "degenerate", level)
    sx, sy = np.sign(x[:, None] - x[None, :]), np.sign(y[:, None] - y[None, :])
    idx = resample_indices(n, n_resamples, seed)
    chunks = []
    for part in np.array_split(idx, max(1, n_resamples * n * n // 20_000_000)):
        sub = (part[:, :, None], part[:, None, :])
        chunks.append(_tau_from_signs(sx[sub], sy[sub], variant))
    theta_b = np.concatenate(chunks)
    theta_b = theta_b[np.isfinite(theta_b)]
    keep = ~np.eye(n, dtype=bool)
    jack = np.array([kendall_tau(x[keep[i]], y[keep[i]], variant) for i in range(n)])
    if theta_b.size < 2 or not np.isfinite(jack).all() or np.ptp(theta_b) == 0:
        return Interval(tau, math.nan, math.nan, n, "degenerate", level)
    lo, hi = bca_bounds(tau, theta_b, jack, level)
    return Interval(tau, lo, hi, n, "bca", level)


def granulated_kendall(
    configs: Sequence[dict], measure: Sequence[float], target: Sequence[float], axes: Sequence[str] | None = None,
) -> dict:
    """Jiang et al. 2020's granulated Kendall coefficient of ``measure`` vs ``target`` over ``configs``.

    For axis i, configurations are grouped by their values on every other axis; ψ_i is the mean τ-a over the
    groups of ≥ 2 configurations, Ψ = mean of the ψ_i (axes without any such group are left out). Returns
    ``{'psi': Ψ, 'per_axis': {axis: ψ_i}, 'groups': {axis: count}}``.
    """
    axes = list(axes if axes is not None else sorted(configs[0]))
    m, t = np.asarray(measure, np.float64), np.asarray(target, np.float64)
    per_axis, counts = {}, {}
    for ax in axes:
        groups: dict[tuple, list[int]] = defaultdict(list)
        for i, c in enumerate(configs):
            groups[tuple((k, repr(c[k])) for k in axes if k != ax)].append(i)
        taus = [kendall_tau(m[g], t[g], "a") for g in groups.values() if len(g) >= 2]
        counts[ax] = len(taus)
        if taus:
            per_axis[ax] = float(np.mean(taus))
    psi = float(np.mean(list(per_axis.values()))) if per_axis else math.nan
    return {"psi": psi, "per_axis": per_axis, "groups": counts}


def granulated_kendall_counts(
    configs: Sequence[dict], measure: Sequence[float], target: Sequence[float], axes: Sequence[str],
    counts: np.ndarray,
) -> np.ndarray:
    """Ψ of resamples given by multiplicity rows ``counts [B, n]`` (vectorized over B).

    A config drawn c_i times joins its group c_i times; pairs of a config with its own copies are left out (as
    a U-statistic's bootstrap does; counting them as ties would bias Ψ towards 0), so a group's τ-a is
    cᵀSc / (m² − Σc²), S_ij = sign(Δmeasure) sign(Δtarget), m = Σc; groups with fewer than two distinct configs
    and axes without any group are left out (NaN if none is left). For 0/1 counts (subsets, the jackknife) this
    is :func:`granulated_kendall` of the subset."""
    m, t = np.asarray(measure, np.float64), np.asarray(target, np.float64)
    S = np.sign(m[:, None] - m[None, :]) * np.sign(t[:, None] - t[None, :])
    counts = np.atleast_2d(np.asarray(counts, np.float64))
    per_axis = []
    for ax in axes:
        by: dict[tuple, list[int]] = defaultdict(list)
        for i, c in enumerate(configs):
            by[tuple((k, repr(c[k])) for k in axes if k != ax)].append(i)
        total, valid = np.zeros(counts.shape[0]), np.zeros(counts.shape[0])
        for g in map(np.asarray, by.values()):
            c = counts[:, g]
            pairs = c.sum(1) ** 2 - (c**2).sum(1)
            ok = pairs > 0
            num = np.einsum("bi,ij,bj->b", c, S[np.ix_(g, g)], c)
            total += np.where(ok, num / np.where(ok, pairs, 1), 0.0)
            valid += ok
        per_axis.append(np.where(valid > 0, total / np.maximum(valid, 1), np.nan))
    A = np.array(per_axis)
    k = np.isfinite(A).sum(0)
    return np.where(k > 0, np.nansum(A, 0) / np.maximum(k, 1), np.nan)


def granulated_kendall_ci(
    configs: Sequence[dict], measure: Sequence[float], target: Sequence[float], axes: Sequence[str] | None = None,
    level: float = 0.95, n_resamples: int = 1000, seed: int = 0,
) -> Interval:
    """Ψ of :func:`granulated_kendall` with a BCa interval from resampling the configurations
    (:func:`granulated_kendall_counts`; resamples without any group are dropped)."""
    axes = list(axes if axes is not None else sorted(configs[0]))
    n = len(configs)
    value = granulated_kendall(configs, measure, target, axes)["psi"]
    if n < 3 or not math.isfinite(value):
        return Interval(value, math.nan, math.nan, n, "degenerate", level)
    counts = np.zeros((n_resamples, n))
    np.add.at(counts, (np.arange(n_resamples)[:, None], resample_indices(n, n_resamples, seed)), 1.0)
    boot = granulated_kendall_counts(configs, measure, target, axes, counts)
    boot = boot[np.isfinite(boot)]
    jack = granulated_kendall_counts(configs, measure, target, axes, 1.0 - np.eye(n))
    if boot.size < 2 or not np.isfinite(jack).all() or np.ptp(boot) == 0:
        return Interval(value, math.nan, math.nan, n, "degenerate", level)
    lo, hi = bca_bounds(value, boot, jack, level)
    return Interval(value, lo, hi, n, "bca", level)


# --- tests across claims ---------------------------------------------------------------------------------------


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values, in the input order (reject H_k at level α iff p̃_k ≤ α)."""
    p = np.asarray(pvalues, np.float64)
    m = p.size
    order = np.argsort(p, kind="stable")
    adjusted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out = np.empty(m)
    out[order] = adjusted
    return out.tolist()


@dataclass
class PairedResult:
    """CI of the paired effect (mean difference, or geometric-mean ratio) and the t-test p-value (H0: none)."""

    interval: Interval
    pvalue: float
    n: int

    def to_dict(self) -> dict:
        return {"interval": self.interval.to_dict(), "pvalue": self.pvalue, "n": self.n}


def _paired(d: np.ndarray, level: float, n_resamples: int, seed: int) -> tuple[Interval, float]:
    ci = mean_ci(d, level, n_resamples, seed)
    if _flat(d):
        p = 1.0 if d.size and np.allclose(d, 0) else math.nan
    else:
        p = float(sps.ttest_1samp(d, 0.0).pvalue)
    return ci, p


def paired_difference(
    a: Sequence[float], b: Sequence[float], level: float = 0.95, n_resamples: int = N_RESAMPLES, seed: int = 0,
) -> PairedResult:
    """Mean of a_i − b_i over the pairs where both are finite, with :func:`mean_ci` and a paired t-test."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    ci, p = _paired(a[ok] - b[ok], level, n_resamples, seed)
    return PairedResult(ci, p, int(ok.sum()))


def paired_ratio(
    a: Sequence[float], b: Sequence[float], level: float = 0.95, n_resamples: int = N_RESAMPLES, seed: int = 0,
) -> PairedResult:
    """Geometric mean of a_i / b_i (positive pairs): the CI of mean log(a/b), exponentiated."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    ok = np.isfinite(a) & np.isfinite(b) & (a > 0) & (b > 0)
    ci, p = _paired(np.log(a[ok]) - np.log(b[ok]), level, n_resamples, seed)
    ex = Interval(math.exp(ci.value), math.exp(ci.lo), math.exp(ci.hi), ci.n, ci.method, ci.level)
    return PairedResult(ex, p, int(ok.sum()))
