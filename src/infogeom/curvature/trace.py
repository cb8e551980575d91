"""Stochastic trace and diagonal estimators with standard errors, on any curvature operator.

- Hutchinson: tr(A) ≈ (1/m) Σ_i v_iᵀ A v_i, v_i Rademacher; unbiased, error O(1/√m).
  Optionally adaptive: probes are added in chunks until SE ≤ ``rtol``·|estimate|.
- Hutch++ (Meyer, Musco, Musco & Woodruff 2021): with m products split in three, Q = orth(A S) for a random
  S [P, m/3]; tr(A) ≈ tr(QᵀAQ) + (3/m) Σ_i g_iᵀ (I−QQᵀ) A (I−QQᵀ) g_i. The low-rank part is exact, the
  deflated remainder is Hutchinson's, so the error is O(1/m) for PSD A. For *every* sketch Q the estimate is
  unbiased (tr(QᵀAQ) + tr((I−QQᵀ)A) = tr A), so the sketch adds no variance of its own: Var = E_Q Var(· | Q),
  and the remainder's sample variance estimates it without bias. What makes a naive error bar too short is
  the few samples (m/3) it rests on, as below.
- Diagonal: diag(A) ≈ (1/m) Σ_i v_i ⊙ A v_i (Bekas et al. 2007), with per-coordinate SEs.

Standard errors. Every ``stderr`` here is the sample standard error sd/√n of the n averaged quadratic forms
times t_{0.975}(n−1)/z_{0.975} (Student's t over the normal quantile; 1.04 at n = 32, 1.62 at n = 4), so
that ±2·stderr covers the truth about 95% of the time even for few probes (checked by a coverage test on
PSD, indefinite and low-rank-plus-noise matrices).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from scipy.special import ndtri, stdtrit  # not scipy.stats: 3× the import time of the command's startup

from ..errors import InfogeomError
from ..operators import CurvatureOperator, probe_diagonal, rademacher


@dataclass
class TraceEstimate:
    """``value`` ± ``stderr`` from ``num_probes`` operator products (``method``: 'hutchinson' |
    'hutch++')."""

    value: float
    stderr: float
    num_probes: int
    method: str

    def to_dict(self) -> dict:
        return {
            "trace": self.value,
            "stderr": self.stderr,
            "num_probes": self.num_probes,
            "method": self.method,
        }


def t_factor(n: int) -> float:
    """t_{0.975}(n−1)/z_{0.975}: widens sd/√n of n samples so that ±2·SE is a ≈95% interval for their mean
    (the plain sd/√n covers only 92% at n = 16, 85% at n = 4 for normal samples)."""
    return float(stdtrit(n - 1, 0.975) / ndtri(0.975))


def standard_error(samples: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Standard error of the mean of ``samples`` along ``dim``: sd/√n · :func:`t_factor` (n)."""
    n = samples.shape[dim]
    return samples.std(dim) / math.sqrt(n) * t_factor(n)


def _check(num_probes: int, minimum: int) -> None:
    if int(num_probes) < minimum:
        raise InfogeomError(f"need at least {minimum} probes, got {num_probes}")


def hutchinson_samples(
    op: CurvatureOperator, num_probes: int, generator: torch.Generator | None = None, chunk: int = 16
) -> torch.Tensor:
    """The quadratic forms v_iᵀ A v_i ``[num_probes]`` for Rademacher v_i (``chunk`` probes per
    ``matmat``)."""
    out = []
    for start in range(0, num_probes, chunk):
        V = rademacher((op.dim, min(chunk, num_probes - start)), op.dtype, op.device, generator)
        out.append((V * op.matmat(V)).sum(0))
    return torch.cat(out)


def hutchinson(
    op: CurvatureOperator,
    num_probes: int = 32,
    generator: torch.Generator | None = None,
    rtol: float | None = None,
    max_probes: int = 1024,
    chunk: int = 16,
) -> TraceEstimate:
    """Hutchinson trace estimate with standard error. With ``rtol``, probes are added ``num_probes`` at a
    time until SE ≤ rtol·|trace| or ``max_probes`` is reached."""
    _check(num_probes, 2)
    samples = hutchinson_samples(op, num_probes, generator, chunk)
    while rtol is not None and len(samples) < max_probes:
        se = standard_error(samples)
        if se <= rtol * samples.mean().abs():
            break
        more = min(num_probes, max_probes - len(samples))
        samples = torch.cat([samples, hutchinson_samples(op, more, generator, chunk)])
    return TraceEstimate(float(samples.mean()), float(standard_error(samples)), len(samples), "hutchinson")


MIN_ADAPTIVE = 16  # residual samples before an adaptive Hutch++ trusts its standard error


def hutchpp(
    op: CurvatureOperator,
    num_probes: int = 48,
    generator: torch.Generator | None = None,
    rtol: float | None = None,
    max_probes: int = 1024,
) -> TraceEstimate:
    """Hutch++ trace estimate from ``num_probes`` products (rounded down to a multiple of 3, at least 6).

    With ``rtol`` (adaptive, after A-Hutch++ of Persson, Cortinovis & Kressner 2022, keeping the sketch): a
    pilot of ``MIN_ADAPTIVE`` residual probes predicts, by SE ∝ 1/√n, how many reach SE ≈ rtol·|trace|;
    that many *fresh* probes (at most ``max_probes`` products in all, pilot included) give the estimate.
    The pilot is not reused: stopping on the same samples' SE under-covers (88% for 2 SE on heavy-tailed
    residuals), while the fresh sample's size is independent of its values, so its error bar keeps its
    coverage."""
    _check(num_probes, 6)
    k = int(num_probes) // 3
    S = rademacher((op.dim, k), op.dtype, op.device, generator)
    Q, _ = torch.linalg.qr(op.matmat(S))
    low_rank = torch.trace(Q.T @ op.matmat(Q))

    def residual(n: int, chunk: int = 16) -> torch.Tensor:  # chunked: memory O(P·(k + chunk)), not O(P·n)
        out = []
        for start in range(0, n, chunk):
            G = rademacher((op.dim, min(chunk, n - start)), op.dtype, op.device, generator)
            Gp = G - Q @ (Q.T @ G)
            out.append((Gp * op.matmat(Gp)).sum(0))
        return torch.cat(out)

    spent = 2 * k
    if rtol is None:
        rest = residual(k)
    else:
        pilot = residual(MIN_ADAPTIVE)
        spent += MIN_ADAPTIVE
        value, sd = abs(float(low_rank + pilot.mean())), float(pilot.std())
        wanted = math.ceil((sd / (rtol * value)) ** 2) if value > 0 else max_probes
        rest = residual(max(MIN_ADAPTIVE, min(wanted, max_probes - spent)))
    return TraceEstimate(float(low_rank + rest.mean()), float(standard_error(rest)), spent + len(rest), "hutch++")


@dataclass
class DiagonalEstimate:
    """Estimated diagonal ``value [P]`` with per-coordinate ``stderr [P]`` from ``num_probes`` products."""

    value: torch.Tensor
    stderr: torch.Tensor
    num_probes: int


def diagonal(
    op: CurvatureOperator, num_probes: int = 32, generator: torch.Generator | None = None, chunk: int = 16
) -> DiagonalEstimate:
    """Hutchinson diagonal estimate diag(A) ≈ mean_i v_i ⊙ A v_i with per-entry standard errors."""
    _check(num_probes, 2)
    mean, stderr = probe_diagonal(op, int(num_probes), generator, chunk)
    return DiagonalEstimate(mean, stderr * t_factor(int(num_probes)), int(num_probes))
