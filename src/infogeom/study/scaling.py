"""Scaling-law fits of the study (E3): Chinchilla approach 3 and the critical batch size.

**Chinchilla approach 3** (Hoffmann et al. 2022, App. D.2; as re-done by Besiroglu et al. 2024). The loss of a run
with N parameters trained on D tokens is modelled as L(N, D) = E + A/N^α + B/D^β, fitted on log L through the
log-sum-exp form

    log L̂ = LSE(a − α log N, b − β log D, e),      A = eᵃ, B = eᵇ, E = eᵉ,

by minimizing the *summed* (not averaged) Huber loss Σ_i w_i Huber_δ(log L̂_i − log L_i), δ = 1e-3, with L-BFGS
from Hoffmann's initialization grid (α, β ∈ {0, 0.5, …, 2}, e ∈ {−1, −0.5, …, 1.5}, a, b ∈ {0, 5, …, 25}:
5,400 starts; every start runs :data:`SCREEN_ITER` iterations, the :data:`KEEP` best distinct end points run to
convergence, see :func:`grid_search`); the best end point is the estimate. :func:`lbfgs` is a batched L-BFGS
(two-loop recursion, Armijo backtracking, one independent problem per row), so the starts — and the bootstrap
refits — run as one vectorized problem; it is checked against ``scipy.optimize.minimize(method='L-BFGS-B')``.

Intervals: a bootstrap over runs (each data point is one training run, resampled with replacement as
multiplicity weights w_i), each refit started from the full fit's best :data:`REFIT_STARTS` distinct end points
(at most :data:`REFIT_ITER` L-BFGS iterations);
BCa bounds (:func:`~infogeom.study.stats.bca_bounds`, with the leave-one-run-out jackknife refits) per parameter
and for the compute-optimal exponent a = β/(α+β) (N_opt ∝ C^a).

**Which N.** The fitter takes N as given. The study's E3 passes the *total* parameter count (embeddings and
positions included, the tied head counted once), as Chinchilla does and as Pearce & Song 2024 recommend for
small models; Kaplan et al. 2020 used non-embedding parameters, which E3 reports as a second fit.

**Critical batch** (McCandlish et al. 2018, eq. 2.11): the steps S and examples E = B·S to reach a fixed loss obey
(S/S_min − 1)(E/E_min − 1) = 1, i.e. S(B) = S_min + E_min/B, with B_crit = E_min/S_min. :func:`critical_batch_fit`
fits log S on log(S_min + E_min/B) by least squares (positive S_min, E_min) with a bootstrap over batch sizes.

**Spectral tail exponent** (exploratory; Bahri et al. 2021 relate a spectrum λ_i ∝ i^−ν to a data-scaling exponent
β ≈ ν − 1): :func:`spectral_tail_exponent` is the Hill estimator on the top k eigenvalues,
â = k / Σ_{i≤k} log(λ_i / λ_{k+1}), the tail index of a Pareto density p(λ) ∝ λ^−(a+1), whose rank-ordered values
decay as λ_(i) ∝ i^−1/a, so ν = 1/â. Exact interval for Pareto tails: a·Σ log(λ_i/λ_{k+1}) ~ Gamma(k, 1).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import optimize
from scipy import stats as sstats

from .stats import Interval, bca_bounds

HUBER_DELTA = 1e-3
_STEP_TRIES = (np.ones(1), 0.5 ** np.arange(1, 4), 0.5 ** np.arange(4, 13), 0.5 ** np.arange(13, 41))
#: Hoffmann et al. 2022's grid of L-BFGS starts, in the order of the parameter vector (a, b, e, α, β)
HOFFMANN_GRID = (tuple(range(0, 30, 5)), tuple(range(0, 30, 5)), (-1.0, -0.5, 0.0, 0.5, 1.0, 1.5),
                 (0.0, 0.5, 1.0, 1.5, 2.0), (0.0, 0.5, 1.0, 1.5, 2.0))
PARAMS = ("E", "A", "B", "alpha", "beta")
REFIT_STARTS = 4
REFIT_ITER = 300
SCREEN_ITER = 10
KEEP = 64
N_BOOT = 2000


def grid_starts(grid: Sequence[Sequence[float]] = HOFFMANN_GRID) -> np.ndarray:
    """All grid points as ``[5400, 5]`` rows (a, b, e, α, β)."""
    return np.array(list(itertools.product(*grid)), dtype=np.float64)


def chinchilla_log_loss(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """log L̂ ``[P, n]`` for parameter rows ``theta [P, 5]`` and the softmax weights ``[P, n, 3]`` of its LSE."""
    a, b, e, al, be = (theta[:, k, None] for k in range(5))
    z1, z2 = a - al * log_n, b - be * log_d
    m = np.maximum(np.maximum(z1, z2), e)
    ez = np.stack([np.exp(z1 - m), np.exp(z2 - m), np.exp(e - m)], axis=-1)
    s = ez.sum(-1)
    return m + np.log(s), ez / s[..., None]


def huber_objective(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_l: np.ndarray,
                    weights: np.ndarray | None = None, delta: float = HUBER_DELTA) -> tuple[np.ndarray, np.ndarray]:
    """Σ_i w_i Huber_δ(log L̂_i − log L_i) per row of ``theta [P, 5]`` and its gradient ``[P, 5]``;
    ``weights [P, n]`` (multiplicities of a bootstrap resample) or None (all ones)."""
    with np.errstate(over="ignore", invalid="ignore"):
        pred, p = chinchilla_log_loss(theta, log_n, log_d)
    r = pred - log_l
    ar = np.abs(r)
    w = np.ones_like(r) if weights is None else weights
    f = (w * np.where(ar <= delta, 0.5 * np.minimum(ar, delta) ** 2, delta * (ar - 0.5 * delta))).sum(-1)
    hp = w * np.clip(r, -delta, delta)
    g1, g2, g3 = hp * p[..., 0], hp * p[..., 1], hp * p[..., 2]
    grad = np.stack([g1.sum(-1), g2.sum(-1), g3.sum(-1), -(g1 * log_n).sum(-1), -(g2 * log_d).sum(-1)], axis=-1)
    return f, grad


def lbfgs(fun: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]], x0: np.ndarray,
          max_iter: int = 1000, history: int = 10, gtol: float = 1e-12, ftol: float = 1e-15
          ) -> tuple[np.ndarray, np.ndarray]:
    """Minimize P independent problems at once. ``fun(x [k, d], rows [k]) -> (f [k], grad [k, d])`` evaluates
    problem ``rows[j]`` at ``x[j]``. L-BFGS two-loop recursion with ``history`` pairs (a pair with
    sᵀy ≤ 1e-10‖s‖‖y‖ is skipped), initial scaling γ = sᵀy/yᵀy, Armijo backtracking (c₁ = 1e-4; t = 1, else the
    largest of 2⁻¹ … 2⁻⁴⁰, tried in three vectorized blocks; the first step has length ≤ 1); a row stops when
    max|∇f| ≤ ``gtol``, when an iteration lowers f by ≤ ``ftol``·max(1, |f|), or when its line search fails.
    Returns (x, f) ``[P, d], [P]``."""
    x = np.array(x0, dtype=np.float64)
    P, d = x.shape
    f, g = fun(x, np.arange(P))
    S, Y = np.zeros((history, P, d)), np.zeros((history, P, d))
    rho = np.zeros((history, P))
    active = np.isfinite(f) & (np.abs(g).max(1) > gtol)
    k = 0
    for _ in range(max_iter):
        idx = np.flatnonzero(active)
        if idx.size == 0:
            break
        gi = g[idx]
        q = gi.copy()
        order = [(k - 1 - j) % history for j in range(min(k, history))]
        alphas = []
        for j in order:
            al = rho[j, idx] * (S[j, idx] * q).sum(1)
            q -= al[:, None] * Y[j, idx]
            alphas.append(al)
        if order:
            j0 = order[0]
            sy, yy = (S[j0, idx] * Y[j0, idx]).sum(1), (Y[j0, idx] ** 2).sum(1)
            gamma = np.where((rho[j0, idx] > 0) & (yy > 0), sy / np.where(yy > 0, yy, 1.0), 1.0)
        else:
            gamma = 1.0 / np.maximum(1.0, np.sqrt((gi**2).sum(1)))
        r = gamma[:, None] * q
        for j, al in zip(reversed(order), reversed(alphas)):
            r += (al - rho[j, idx] * (Y[j, idx] * r).sum(1))[:, None] * S[j, idx]
        step = -r
        slope = (step * gi).sum(1)
        bad = ~(slope < 0)  # not a descent direction: steepest descent for that row
        step[bad] = -gi[bad] * gamma[bad, None]
        slope[bad] = (step[bad] * gi[bad]).sum(1)
        x_new, f_new, g_new = x[idx].copy(), f[idx].copy(), gi.copy()
        todo = np.arange(idx.size)
        for ts in _STEP_TRIES:  # t = 1, then blocks of halvings, each block in one call
            rows = np.repeat(todo, ts.size)
            tt = np.tile(ts, todo.size)
            cand = x[idx[rows]] + tt[:, None] * step[rows]
            fc, gc = fun(cand, idx[rows])
            ok = (np.isfinite(fc) & (fc <= f[idx[rows]] + 1e-4 * tt * slope[rows])).reshape(todo.size, ts.size)
            hit = ok.any(1)
            first = np.argmax(ok, 1)[hit]
            pick = np.flatnonzero(hit) * ts.size + first
            acc = todo[hit]
            x_new[acc], f_new[acc], g_new[acc] = cand[pick], fc[pick], gc[pick]
            todo = todo[~hit]
            if todo.size == 0:
                break
        failed = np.zeros(idx.size, bool)
        failed[todo] = True
        s_k, y_k = x_new - x[idx], g_new - gi
        sy = (s_k * y_k).sum(1)
        slot = k % history
        S[slot, idx], Y[slot, idx] = s_k, y_k
        # a pair with sᵀy ≤ 1e-10‖s‖‖y‖ (or below 1e-300) carries no curvature: 1/sᵀy would overflow to inf and the
        # next two-loop pass to nan (the quick E3 fit's two numpy warnings), so it is skipped
        keep = (sy > 1e-10 * np.linalg.norm(s_k, axis=1) * np.linalg.norm(y_k, axis=1)) & (sy > 1e-300)
        rho[slot, idx] = np.where(keep, 1.0 / np.where(keep, sy, 1.0), 0.0)
        k += 1
        stalled = f[idx] - f_new <= ftol * np.maximum(1.0, np.abs(f[idx]))
        x[idx], f[idx], g[idx] = x_new, f_new, g_new
        active[idx[failed | stalled | (np.abs(g_new).max(1) <= gtol)]] = False
    return x, f


def _fit_rows(starts: np.ndarray, weights: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_l: np.ndarray,
              delta: float, max_iter: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """L-BFGS from ``starts [P, 5]``, problem j weighted by ``weights [P, n]``."""
    def fun(x: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return huber_objective(x, log_n, log_d, log_l, weights[rows], delta)

    return lbfgs(fun, starts, max_iter=max_iter)


def grid_search(log_n: np.ndarray, log_d: np.ndarray, log_l: np.ndarray, delta: float = HUBER_DELTA,
                grid: Sequence[Sequence[float]] = HOFFMANN_GRID, screen_iter: int = SCREEN_ITER,
                keep: int = KEEP) -> tuple[np.ndarray, np.ndarray]:
    """L-BFGS from every grid start for ``screen_iter`` iterations, then the ``keep`` distinct best end points
    to convergence (all starts to convergence cost ~100× more and, on the oracle tests, find the same optimum).
    Returns the end points and objectives of the continued rows."""
    starts = grid_starts(grid)
    ones = np.ones((starts.shape[0], log_l.size))
    x, f = _fit_rows(starts, ones, log_n, log_d, log_l, delta, max_iter=screen_iter)
    top = _distinct_best(x, f, keep)
    return _fit_rows(top, ones[: top.shape[0]], log_n, log_d, log_l, delta)


def _to_params(theta: np.ndarray) -> np.ndarray:
    """(a, b, e, α, β) rows -> (E, A, B, α, β) rows (a degenerate refit may overflow to inf)."""
    with np.errstate(over="ignore"):
        return np.stack([np.exp(theta[..., 2]), np.exp(theta[..., 0]), np.exp(theta[..., 1]), theta[..., 3],
                         theta[..., 4]], axis=-1)


def _distinct_best(x: np.ndarray, f: np.ndarray, k: int, tol: float = 1e-3) -> np.ndarray:
    """The ``k`` lowest-objective rows of ``x`` that differ from each other by more than ``tol`` (max norm)."""
    keep: list[np.ndarray] = []
    for i in np.argsort(f):
        if np.isfinite(f[i]) and all(np.abs(x[i] - y).max() > tol for y in keep):
            keep.append(x[i])
            if len(keep) == k:
                break
    return np.array(keep)


@dataclass
class ChinchillaFit:
    """Fitted L(N, D) = E + A/N^α + B/D^β: ``params`` {E, A, B, alpha, beta, a_opt}, their bootstrap ``intervals``,
    the objective, the bootstrap replicates ``boot [n_boot, 6]`` (columns as ``params``), the in-sample RMS of
    log-residuals and the number of runs."""

    params: dict
    intervals: dict
    objective: float
    rms_log_residual: float
    n: int
    boot: np.ndarray = field(repr=False)
    theta: np.ndarray = field(repr=False)
    boot_theta: np.ndarray = field(repr=False)  # the replicates as (a, b, e, α, β)

    def predict(self, n: Sequence[float], d: Sequence[float]) -> np.ndarray:
        """L̂(N, D) at the point estimate."""
        log_l, _ = chinchilla_log_loss(self.theta[None], np.log(np.asarray(n, float)), np.log(np.asarray(d, float)))
        return np.exp(log_l[0])

    def predict_boot(self, n: Sequence[float], d: Sequence[float]) -> np.ndarray:
        """L̂(N, D) under every bootstrap replicate ``[n_boot, len(n)]``."""
        log_l, _ = chinchilla_log_loss(self.boot_theta, np.log(np.asarray(n, float)), np.log(np.asarray(d, float)))
        return np.exp(log_l)

    def to_dict(self) -> dict:
        return {"params": self.params, "intervals": {k: v.to_dict() for k, v in self.intervals.items()},
                "objective": self.objective, "rms_log_residual": self.rms_log_residual, "n": self.n}


def chinchilla_fit(n: Sequence[float], d: Sequence[float], loss: Sequence[float], delta: float = HUBER_DELTA,
                   n_boot: int = N_BOOT, level: float = 0.95, seed: int = 0,
                   grid: Sequence[Sequence[float]] = HOFFMANN_GRID) -> ChinchillaFit:
    """Fit L(N, D) = E + A/N^α + B/D^β to runs (N_i, D_i, L_i) by Chinchilla approach 3 (module doc), with BCa
    bootstrap intervals over runs (``n_boot`` resamples; ``n_boot=0``: no intervals)."""
    log_n, log_d, log_l = (np.log(np.asarray(v, np.float64)) for v in (n, d, loss))
    m = log_l.size
    if not (log_n.size == log_d.size == m) or m < 5 or not np.isfinite(np.stack([log_n, log_d, log_l])).all():
        raise ValueError(f"need at least 5 runs with positive finite N, D, L of equal length, got {m}")
    x, f = grid_search(log_n, log_d, log_l, delta, grid)
    best = int(np.nanargmin(f))
    theta = x[best]
    refit = _distinct_best(x, f, REFIT_STARTS)
    est = _with_aopt(_to_params(theta[None]))[0]
    intervals: dict[str, Interval] = {}
    boot, boot_theta = np.empty((0, 6)), np.empty((0, 5))
    if n_boot > 0:
        rng = np.random.default_rng(seed)
        w_boot = np.stack([np.bincount(rng.integers(0, m, m), minlength=m) for _ in range(n_boot)]).astype(float)
        w_jack = 1.0 - np.eye(m)
        W = np.concatenate([w_boot, w_jack])
        k = refit.shape[0]
        xs, fs = _fit_rows(np.tile(refit, (W.shape[0], 1)), np.repeat(W, k, axis=0), log_n, log_d, log_l, delta,
                           max_iter=REFIT_ITER)
        xs, fs = xs.reshape(W.shape[0], k, 5), fs.reshape(W.shape[0], k)
        boot_theta = xs[np.arange(W.shape[0]), np.nanargmin(fs, 1)]
        sol = _with_aopt(_to_params(boot_theta))
        boot, jack = sol[:n_boot], sol[n_boot:]
        for j, name in enumerate((*PARAMS, "a_opt")):
            with np.errstate(invalid="ignore", divide="ignore"):  # degenerate BCa falls back to percentiles
                lo, hi = bca_bounds(float(est[j]), boot[:, j], jack[:, j], level)
            intervals[name] = Interval(float(est[j]), lo, hi, m, "bca", level)
    pred, _ = chinchilla_log_loss(theta[None], log_n, log_d)
    rms = float(np.sqrt(np.mean((pred[0] - log_l) ** 2)))
    params = dict(zip((*PARAMS, "a_opt"), map(float, est)))
    return ChinchillaFit(params, intervals, float(f[best]), rms, m, boot, theta, boot_theta[:n_boot])


def _with_aopt(p: np.ndarray) -> np.ndarray:
    """Append a = β/(α+β) (the exponent of N_opt ∝ C^a) as a sixth column."""
    with np.errstate(invalid="ignore", divide="ignore"):
        a = p[:, 4] / (p[:, 3] + p[:, 4])
    return np.concatenate([p, a[:, None]], axis=1)


def leave_largest_out(n: Sequence[float], d: Sequence[float], loss: Sequence[float], n_boot: int = N_BOOT,
                      level: float = 0.95, seed: int = 0, grid: Sequence[Sequence[float]] = HOFFMANN_GRID) -> dict:
    """Fit without the runs of the largest N and predict them: per held-out run the measured and predicted loss with
    a bootstrap ``level`` interval of the prediction; the mean and largest |L̂/L − 1|. Needs ≥ 5 other runs."""
    n, d, loss = (np.asarray(v, np.float64) for v in (n, d, loss))
    held = n == n.max()
    fit = chinchilla_fit(n[~held], d[~held], loss[~held], n_boot=n_boot, level=level, seed=seed, grid=grid)
    pred = fit.predict(n[held], d[held])
    rel = pred / loss[held] - 1.0
    rows = []
    pb = fit.predict_boot(n[held], d[held]) if n_boot > 0 else None
    for i, (ni, di, li) in enumerate(zip(n[held], d[held], loss[held])):
        lo, hi = (np.quantile(pb[:, i], [(1 - level) / 2, (1 + level) / 2]) if pb is not None else (math.nan,) * 2)
        rows.append({"N": float(ni), "D": float(di), "loss": float(li), "predicted": float(pred[i]),
                     "lo": float(lo), "hi": float(hi), "rel_error": float(rel[i])})
    return {"fit": fit.to_dict(), "held_out_N": float(n.max()), "runs": rows,
            "mean_abs_rel_error": float(np.mean(np.abs(rel))), "max_abs_rel_error": float(np.max(np.abs(rel)))}


# --- critical batch size ---------------------------------------------------------------------------------------


@dataclass
class CriticalBatch:
    """S(B) = S_min + E_min/B fitted to steps-to-target; B_crit = E_min/S_min, with bootstrap intervals."""

    s_min: float
    e_min: float
    b_crit: float
    intervals: dict
    n: int

    def steps(self, b: Sequence[float]) -> np.ndarray:
        return self.s_min + self.e_min / np.asarray(b, np.float64)

    def to_dict(self) -> dict:
        return {"s_min": self.s_min, "e_min": self.e_min, "b_crit": self.b_crit, "n": self.n,
                "intervals": {k: v.to_dict() for k, v in self.intervals.items()}}


def _cb_lsq(b: np.ndarray, s: np.ndarray) -> np.ndarray:
    """(log S_min, log E_min) minimizing Σ (log S_i − log(S_min + E_min/B_i))²."""
    def res(p: np.ndarray) -> np.ndarray:
        return np.logaddexp(p[0], p[1] - np.log(b)) - np.log(s)

    x0 = np.array([np.log(s.min()), np.log(np.median(s * b))])
    return optimize.least_squares(res, x0, method="lm", xtol=1e-14, ftol=1e-14, gtol=1e-14).x


def critical_batch_fit(batch: Sequence[float], steps: Sequence[float], n_boot: int = N_BOOT, level: float = 0.95,
                       seed: int = 0) -> CriticalBatch:
    """Fit McCandlish et al.'s (S/S_min − 1)(E/E_min − 1) = 1 to (batch size, steps to a fixed loss) pairs, E = B·S.

    Point estimate: Levenberg–Marquardt; intervals: percentile bootstrap over the (B, S) pairs (resamples with
    fewer than 3 distinct B are left out), the refits by :func:`lbfgs` from the estimate, all at once."""
    b, s = np.asarray(batch, np.float64), np.asarray(steps, np.float64)
    ok = np.isfinite(b) & np.isfinite(s) & (b > 0) & (s > 0)
    b, s = b[ok], s[ok]
    if np.unique(b).size < 3:
        raise ValueError(f"need steps at >= 3 distinct batch sizes, got {np.unique(b).size}")
    ls, le = _cb_lsq(b, s)
    est = np.array([math.exp(ls), math.exp(le), math.exp(le - ls)])
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, b.size, (4 * n_boot + 16, b.size))
    distinct = (np.sort(b[idx], 1)[:, 1:] != np.sort(b[idx], 1)[:, :-1]).sum(1) + 1
    idx = idx[distinct >= 3][:n_boot]
    w = np.stack([np.bincount(i, minlength=b.size) for i in idx]).astype(float) if idx.size else np.zeros((0, b.size))
    logb, logs = np.log(b), np.log(s)

    def fun(x: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        z = np.logaddexp(x[:, :1], x[:, 1:] - logb)
        r, q0 = z - logs, np.exp(x[:, :1] - z)
        wr = 2 * w[rows] * r
        return (w[rows] * r * r).sum(1), np.stack([(wr * q0).sum(1), (wr * (1 - q0)).sum(1)], 1)

    intervals = {}
    if w.shape[0]:
        x, _ = lbfgs(fun, np.tile([ls, le], (w.shape[0], 1)), max_iter=500)
        r = np.exp(np.column_stack([x[:, 0], x[:, 1], x[:, 1] - x[:, 0]]))
        for j, name in enumerate(("s_min", "e_min", "b_crit")):
            lo, hi = np.quantile(r[:, j], [(1 - level) / 2, (1 + level) / 2])
            intervals[name] = Interval(float(est[j]), float(lo), float(hi), int(b.size), "percentile", level)
    return CriticalBatch(float(est[0]), float(est[1]), float(est[2]), intervals, int(b.size))


# --- spectral tail exponent -------------------------------------------------------------------------------------


@dataclass
class TailFit:
    """Hill fit of the top ``k`` eigenvalues: tail index ``a`` and rank-decay exponent ``nu`` = 1/a (λ_(i) ∝ i^−ν),
    each an :class:`~infogeom.study.stats.Interval` (exact for a Pareto tail)."""

    a: Interval
    nu: Interval
    k: int

    def to_dict(self) -> dict:
        return {"a": self.a.to_dict(), "nu": self.nu.to_dict(), "k": self.k}


def spectral_tail_exponent(eigenvalues: Sequence[float], k: int | None = None, level: float = 0.95) -> TailFit:
    """Hill estimator (module doc) on the ``k`` largest positive ``eigenvalues`` above the (k+1)-th (default: all
    but the smallest positive one); needs k ≥ 2."""
    lam = np.sort(np.asarray(eigenvalues, np.float64))[::-1]
    lam = lam[np.isfinite(lam) & (lam > 0)]
    k = lam.size - 1 if k is None else int(k)
    if k < 2 or lam.size < k + 1:
        raise ValueError(f"need k >= 2 and k + 1 positive eigenvalues, got k = {k} of {lam.size}")
    t = float(np.log(lam[:k] / lam[k]).sum())
    if not t > 0:
        raise ValueError("the top eigenvalues are all equal: no tail to fit")
    g_lo, g_hi = sstats.gamma.ppf([(1 - level) / 2, (1 + level) / 2], k)
    a = Interval(k / t, float(g_lo / t), float(g_hi / t), k, "exact", level)
    return TailFit(a, Interval(1 / a.value, 1 / a.hi, 1 / a.lo, k, "exact", level), k)
