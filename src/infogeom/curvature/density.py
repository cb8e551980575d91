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

Splitting a budget of products (:func:`adaptive_spectral_density`). The L1 error of ρ̂ has two parts: the
quadrature error of each probe's m-node rule (a bias that shrinks with m, geometrically once m resolves the
spectrum's range at width σ) and the probe variance ∫ sd_probe(ρ̂_i(t)) dt / √n, which for a P-dimensional
operator shrinks like 1/√(nP) in the bulk (one probe already averages P eigen-directions). So steps are added
until the quadrature has converged to the target, and probes only while their measured spread says so —
at large P a few probes at converged depth beat a fixed n × m split.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import InfogeomError
from ..operators import CurvatureOperator, rademacher
from .lanczos import KrylovBasis, lanczos_quadrature
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


def probe_densities(nodes: torch.Tensor, weights: torch.Tensor, grid: torch.Tensor, sigma: float) -> torch.Tensor:
    """Each probe's Σ_i w_i N(t; θ_i, σ²) on ``grid [G]`` for ``nodes, weights [n, m]``: ``[n, G]``."""
    if not sigma > 0:
        raise InfogeomError(f"broadening width sigma must be positive, got {sigma}")
    z = (grid[None, :, None] - nodes[:, None, :]) / sigma
    kernel = torch.exp(-0.5 * z**2) / (sigma * math.sqrt(2 * math.pi))
    return (kernel * weights[:, None, :]).sum(-1)


def broaden(nodes: torch.Tensor, weights: torch.Tensor, grid: torch.Tensor, sigma: float) -> torch.Tensor:
    """ρ̂(t) on ``grid [G]`` = mean over probes of Σ_i w_i N(t; θ_i, σ²) for ``nodes, weights [n, m]``."""
    return probe_densities(nodes, weights, grid, sigma).mean(0)


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
    sketch: bool = False,
) -> SpectralDensity:
    """SLQ spectral density of ``op`` from ``num_probes`` Rademacher probes × ``steps`` Lanczos steps.

    ``sigma`` (absolute) overrides ``sigma_rel`` (relative to the node range); ``grid`` overrides the
    default grid. ``sketch=True`` runs the Lanczos steps on :meth:`~CurvatureOperator.sketch` (A + E, the
    Hessian's gradient differences on the CPU: one gradient per step and probe instead of an HVP's 2.3): every
    node moves by at most ≈ ‖E‖ — ≈ 1e-3‖A‖ on the 210k benchmark GPT, a tenth of the default σ (1% of the node
    range), but 70% along the sharpest direction of a 3.2M one; nothing checks it, so it is an option.
    """
    if int(num_probes) < 1:
        raise InfogeomError(f"need at least one probe, got {num_probes}")
    probes = rademacher((op.dim, int(num_probes)), op.dtype, op.device, generator)
    nodes, weights = lanczos_quadrature(op.sketch if sketch else op, probes, steps, generator)
    nodes, weights = nodes.to("cpu", torch.float64), weights.to("cpu", torch.float64)
    sigma = float(sigma) if sigma is not None else default_sigma(nodes, sigma_rel)
    grid = default_grid(nodes, sigma, num_points) if grid is None else grid.to(torch.float64)
    return SpectralDensity(grid, broaden(nodes, weights, grid, sigma), nodes, weights, sigma, op.dim)


#: Lanczos depths at which :func:`adaptive_spectral_density` checks the quadrature's convergence.
CHECKPOINTS = (8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256)


def _quadrature(basis: KrylovBasis) -> tuple[torch.Tensor, torch.Tensor]:
    """The m-step Gauss rule (nodes, weights) ``[n, m]`` (float64, CPU) of the basis' probes."""
    theta, Y = basis.ritz()
    return theta.to("cpu", torch.float64), (Y[:, 0, :] ** 2).to("cpu", torch.float64)


def _l1(f: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """∫|f| dt on the equispaced ``grid`` along the last axis."""
    return f.abs().sum(-1) * float(grid[1] - grid[0])


@dataclass
class AdaptiveDensity:
    """:class:`SpectralDensity` of :func:`adaptive_spectral_density` with its error budget: ``products``
    spent, ``quadrature_change`` (mean L1 change of a probe's density over its last depth increase) and
    ``probe_stderr`` (∫ SE(t) dt across probes)."""

    density: SpectralDensity
    products: int
    quadrature_change: float
    probe_stderr: float


def adaptive_spectral_density(
    op: CurvatureOperator,
    tol: float = 0.05,
    max_products: int = 512,
    num_probes: int = 2,
    sigma_rel: float = 0.01,
    num_points: int = 512,
    generator: torch.Generator | None = None,
    sketch: bool = False,
) -> AdaptiveDensity:
    """SLQ density to an L1 tolerance ``tol`` (∫|ρ̂ − ρ_σ| ≲ tol, densities integrating to 1) within
    ``max_products`` products, the budget split as in the module docstring.

    1. ``num_probes`` (≥ 2) probes advance together; at each depth of :data:`CHECKPOINTS` the mean L1
       change of a probe's broadened density since the previous checkpoint (on one grid and σ =
       ``sigma_rel``·range of the current nodes) is the quadrature's error estimate; depth stops growing
       when it is ≤ tol/2 (or the budget would not allow one more probe at that depth).
    2. The probe SE ∫ sd_i(ρ̂_i(t)) dt/√n then asks for n' = n (SE/(tol/2))² probes; the missing ones run
       at the same depth, budget permitting.
    Returns the density with the products spent and both error estimates. ``sketch``: as in
    :func:`spectral_density` (``products`` then counts sketch columns)."""
    n = int(num_probes)
    if n < 2:
        raise InfogeomError(f"the adaptive density needs at least 2 probes to measure their spread, got {n}")
    if not tol > 0:
        raise InfogeomError(f"density tolerance must be positive, got {tol}")
    cap = min(max(c for c in CHECKPOINTS if c * n <= max_products) if max_products >= 8 * n else 0, op.dim)
    if cap < 8:
        raise InfogeomError(f"max_products {max_products} is below {8 * n} ({n} probes × 8 Lanczos steps)")
    apply = op.sketch if sketch else op.matmat
    basis = KrylovBasis(apply, rademacher((op.dim, n), op.dtype, op.device, generator), cap, generator=generator)
    previous, change = None, math.inf
    for depth in (c for c in CHECKPOINTS if c <= cap):
        while basis.size < depth:
            basis.step()
        nodes, weights = _quadrature(basis)
        sigma = default_sigma(nodes, sigma_rel)
        grid = default_grid(nodes, sigma, num_points)
        current = probe_densities(nodes, weights, grid, sigma)
        if previous is not None:
            change = float(_l1(current - probe_densities(*previous, grid, sigma), grid).mean())
            if change <= tol / 2:
                break
        previous = nodes, weights
    m = basis.size
    spread = float(_l1(current.std(0), grid)) / math.sqrt(n)
    extra = max(0, min(math.ceil(n * (spread / (tol / 2)) ** 2), max_products // m) - n)
    if extra:
        more = lanczos_quadrature(apply, rademacher((op.dim, extra), op.dtype, op.device, generator), m, generator)
        nodes, weights = torch.cat([nodes, more[0].to("cpu", torch.float64)]), torch.cat(
            [weights, more[1].to("cpu", torch.float64)])
        current = probe_densities(nodes, weights, grid, sigma)
    stderr = float(_l1(current.std(0), grid)) / math.sqrt(n + extra)
    density = SpectralDensity(grid, current.mean(0), nodes, weights, sigma, op.dim)
    return AdaptiveDensity(density, (n + extra) * m, change, stderr)
