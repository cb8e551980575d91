"""Stochastic trace and diagonal estimators with standard errors, on any curvature operator.

- Hutchinson: tr(A) ≈ (1/m) Σ_i v_iᵀ A v_i, v_i Rademacher; unbiased, SE = sd(v_iᵀAv_i)/√m, error O(1/√m).
  Optionally adaptive: probes are added in chunks until SE ≤ ``rtol``·|estimate|.
- Hutch++ (Meyer, Musco, Musco & Woodruff 2021): with m products split in three, Q = orth(A S) for a random
  S [P, m/3]; tr(A) ≈ tr(QᵀAQ) + (3/m) Σ_i g_iᵀ (I−QQᵀ) A (I−QQᵀ) g_i. The low-rank part is exact, the
  deflated remainder is Hutchinson's, so the error is O(1/m) for PSD A; the SE is the remainder's
  (conditional on Q the estimate is unbiased).
- Diagonal: diag(A) ≈ (1/m) Σ_i v_i ⊙ A v_i (Bekas et al. 2007), with per-coordinate SEs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

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
        se = samples.std() / math.sqrt(len(samples))
        if se <= rtol * samples.mean().abs():
            break
        more = min(num_probes, max_probes - len(samples))
        samples = torch.cat([samples, hutchinson_samples(op, more, generator, chunk)])
    m = len(samples)
    return TraceEstimate(float(samples.mean()), float(samples.std() / math.sqrt(m)), m, "hutchinson")


def hutchpp(
    op: CurvatureOperator, num_probes: int = 48, generator: torch.Generator | None = None
) -> TraceEstimate:
    """Hutch++ trace estimate from ``num_probes`` products (rounded down to a multiple of 3, at least 6)."""
    _check(num_probes, 6)
    k = int(num_probes) // 3
    S = rademacher((op.dim, k), op.dtype, op.device, generator)
    G = rademacher((op.dim, k), op.dtype, op.device, generator)
    Q, _ = torch.linalg.qr(op.matmat(S))
    low_rank = torch.trace(Q.T @ op.matmat(Q))
    Gp = G - Q @ (Q.T @ G)
    rest = (Gp * op.matmat(Gp)).sum(0)
    return TraceEstimate(float(low_rank + rest.mean()), float(rest.std() / math.sqrt(k)), 3 * k, "hutch++")


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
    return DiagonalEstimate(mean, stderr, int(num_probes))
