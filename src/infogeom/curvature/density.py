"""Spectral density by stochastic Lanczos quadrature (SLQ; Ubaru, Chen & Saad 2017; Ghorbani et al. 2019).

The empirical spectral density of a symmetric P×P operator is ρ(t) = (1/P) Σ_j δ(t − λ_j). For a Rademacher
probe v, vᵀ f(A) v / vᵀv = Σ_j (u_jᵀv)²/P f(λ_j) is a quadrature against ρ that m Lanczos steps from v/‖v‖
approximate by Gauss quadrature with nodes θ_i = eig(T_m) and weights w_i = (first component of T_m's i-th
eigenvector)² (Σ_i w_i = 1; exact for polynomials of degree ≤ 2m − 1). Averaging n probes and replacing each
node by a Gaussian of width σ gives

    ρ̂(t) = (1/n) Σ_probes Σ_i w_i N(t; θ_i, σ²),

whose moments (without the broadening) estimate tr(A^k)/P: ∫t^k ρ = (1/n) Σ Σ w_i θ_i^k (unbiased for k ≤
2m−1). Note the weights are the squared *first components*, not whole eigenvectors (PyHessian PR #23 fixed
exactly that). Cost: n·m operator products (probes batched in one ``matmat`` per step), memory O(n·m·P).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import InfogeomError
from ..operators import CurvatureOperator, rademacher
from .lanczos import lanczos_quadrature
from .trace import standard_error


@dataclass
class SpectralDensity:
    """SLQ density as data: ``grid [G]``, ``density [G]`` (integrates to ≈ 1), quadrature ``nodes [n, m]``
    and ``weights [n, m]`` (per probe; rows sum to 1), Gaussian width ``sigma``, operator dimension
    ``dim``."""

    grid: torch.Tensor
    density: torch.Tensor
    nodes: torch.Tensor
    weights: torch.Tensor
    sigma: float
    dim: int

    def moment(self, k: int) -> float:
        """∫ t^k ρ(t) dt of the quadrature (no broadening) ≈ tr(A^k)/P."""
        return float((self.weights * self.nodes**k).sum(1).mean())

    def moment_stderr(self, k: int) -> float:
        """Standard error of :meth:`moment` across probes (t-corrected as in :mod:`.trace`; nan for one
        probe)."""
        per_probe = (self.weights * self.nodes**k).sum(1)
        return float(standard_error(per_probe)) if per_probe.numel() > 1 else float("nan")

    def to_dict(self) -> dict:
        return {
            "grid": self.grid.tolist(),
            "density": self.density.tolist(),
            "nodes": self.nodes.tolist(),
            "weights": self.weights.tolist(),
            "sigma": self.sigma,
            "dim": self.dim,
            "trace_estimate": self.dim * self.moment(1),
        }


def broaden(nodes: torch.Tensor, weights: torch.Tensor, grid: torch.Tensor, sigma: float) -> torch.Tensor:
    """ρ̂(t) on ``grid [G]`` = mean over probes of Σ_i w_i N(t; θ_i, σ²) for ``nodes, weights [n, m]``."""
    if not sigma > 0:
        raise InfogeomError(f"broadening width sigma must be positive, got {sigma}")
    z = (grid[:, None, None] - nodes[None]) / sigma
    kernel = torch.exp(-0.5 * z**2) / (sigma * math.sqrt(2 * math.pi))
    return (kernel * weights[None]).sum(-1).mean(-1)


def default_sigma(nodes: torch.Tensor, sigma_rel: float = 0.01) -> float:
    """σ = ``sigma_rel``·(max θ − min θ), or ``sigma_rel``·max(|θ|, 1) when all nodes coincide."""
    lo, hi = float(nodes.min()), float(nodes.max())
    return sigma_rel * (hi - lo if hi > lo else max(abs(hi), 1.0))


def default_grid(nodes: torch.Tensor, sigma: float, num_points: int = 512) -> torch.Tensor:
    """``num_points`` equispaced points over [min θ − 5σ, max θ + 5σ]."""
    return torch.linspace(
        float(nodes.min()) - 5 * sigma, float(nodes.max()) + 5 * sigma, num_points, dtype=torch.float64
    )


def spectral_density(
    op: CurvatureOperator,
    num_probes: int = 4,
    steps: int = 64,
    sigma: float | None = None,
    sigma_rel: float = 0.01,
    num_points: int = 512,
    grid: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> SpectralDensity:
    """SLQ spectral density of ``op`` from ``num_probes`` Rademacher probes × ``steps`` Lanczos steps.

    ``sigma`` (absolute) overrides ``sigma_rel`` (relative to the node range); ``grid`` overrides the
    default grid.
    """
    if int(num_probes) < 1:
        raise InfogeomError(f"need at least one probe, got {num_probes}")
    probes = rademacher((op.dim, int(num_probes)), op.dtype, op.device, generator)
    nodes, weights = lanczos_quadrature(op, probes, steps, generator)
    nodes, weights = nodes.to("cpu", torch.float64), weights.to("cpu", torch.float64)
    sigma = float(sigma) if sigma is not None else default_sigma(nodes, sigma_rel)
    grid = default_grid(nodes, sigma, num_points) if grid is None else grid.to(torch.float64)
    return SpectralDensity(grid, broaden(nodes, weights, grid, sigma), nodes, weights, sigma, op.dim)
