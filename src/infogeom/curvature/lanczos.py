"""Lanczos with full re-orthogonalization on any :class:`~infogeom.geometry.CurvatureOperator`.

One Krylov engine serves three estimators:

- :func:`eigsh` — top-k eigenpairs of a symmetric A (thick-restart Lanczos, Wu & Simon 2000), stopped by a
  residual test ‖A v − θ v‖ ≤ max(tol·|θ|, 10ε‖A‖) rather than a fixed iteration count;
- :func:`generalized_eigsh` — the pencil A v = θ B v with B symmetric positive definite (Lanczos on B⁻¹A in
  the B-inner product ⟨u, v⟩_B = uᵀBv); used for preconditioned and Fisher–Rao sharpness;
- :func:`lanczos_quadrature` — m-point Gauss quadrature nodes/weights of vᵀ f(A) v for a batch of probes
  (SLQ).

The basis Q is kept B-orthonormal by two passes of classical Gram–Schmidt per step ("twice is enough") and
the projected matrix T = Qᵀ A Q is stored densely (tridiagonal up to round-off). With r the current residual
vector, A Q = B Q T + r e_mᵀ, so the Ritz pair (θ_i, Q y_i) has residual |y_{m,i}|·‖r‖ (in B⁻¹-norm) for
free. A thick restart keeps the wanted Ritz vectors and continues from r, which keeps memory at
``max_basis`` vectors. Cost per step: one operator product (plus one B product and one B-solve for the
generalized problem) and O(m·P) for re-orthogonalization; memory O(m·P).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ..errors import InfogeomError
from ..operators import CurvatureOperator

MatMat = Callable[[torch.Tensor], torch.Tensor]
WHICH = ("LA", "SA", "LM")


@dataclass
class EigenResult:
    """Eigenpairs ``values [k]`` (ordered by ``which``), ``vectors [P, k]`` (B-orthonormal), explicit
    residual norms ``residuals [k]`` = ‖A v − θ B v‖, ``converged`` (all k passed the test) and ``matvecs``
    (A products)."""

    values: torch.Tensor
    vectors: torch.Tensor
    residuals: torch.Tensor
    converged: bool
    matvecs: int

    def to_dict(self) -> dict:
        return {
            "eigenvalues": self.values.tolist(),
            "residuals": self.residuals.tolist(),
            "converged": self.converged,
            "matvecs": self.matvecs,
        }


class KrylovBasis:
    """B-orthonormal Krylov bases for ``b`` independent start vectors at once (batched over columns).

    ``apply(V [P, b]) -> S V`` with S = B⁻¹A (or A); ``metric(V) -> B V`` (None: B = I). ``Q [b, capacity,
    P]``, ``T [b, capacity, capacity]``; ``size`` vectors are in use. After a breakdown (invariant subspace
    found, ‖r‖ ≈ 0) the next vector is a random one orthogonalized against the basis, so T stays
    block-diagonal there; ``support [P, b]`` (0/1) confines those random vectors to each column's
    coordinates (``apply`` must keep them there too), and once a column's space is exhausted its further
    vectors are zero (Ritz weight 0).
    """

    def __init__(
        self,
        apply: MatMat,
        start: torch.Tensor,
        capacity: int,
        metric: MatMat | None = None,
        generator: torch.Generator | None = None,
        support: torch.Tensor | None = None,
    ):
        P, b = start.shape
        self.apply, self.metric, self.generator = apply, metric, generator
        self.support = None if support is None else support.T.to(start.dtype)
        self.dtype, self.device = start.dtype, start.device
        self.Q = torch.zeros(b, capacity, P, dtype=self.dtype, device=self.device)
        self.BQ = torch.zeros_like(self.Q) if metric is not None else self.Q
        self.T = torch.zeros(b, capacity, capacity, dtype=self.dtype, device=self.device)
        self.size = 0
        self.matvecs = 0
        self.r = start.T.clone()
        self.Br, self.beta = self._b_norm(self.r)
        self.scale = torch.zeros(b, dtype=self.dtype, device=self.device)

    def _b_norm(self, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        Br = r if self.metric is None else self.metric(r.T).T
        return Br, (r * Br).sum(1).clamp_min(0).sqrt()

    def _orthogonalize(self, w: torch.Tensor, j: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Remove the components of ``w [b, P]`` along the first ``j`` basis vectors (two CGS passes)."""
        h = torch.zeros(w.shape[0], j, dtype=self.dtype, device=self.device)
        for _ in range(2):  # row-vector bmm, not einsum: 2.5–6× faster on CPU (P = 3.2M, b = 2, j = 16)
            c = torch.bmm(w[:, None, :], self.BQ[:, :j].transpose(1, 2)).squeeze(1)
            w = torch.baddbmm(w[:, None, :], c[:, None, :], self.Q[:, :j], alpha=-1).squeeze(1)
            h = h + c
        return w, h

    def _fresh_direction(self, rows: torch.Tensor) -> None:
        """Replace the residual of the broken-down ``rows`` by a random direction B-orthogonal to the
        basis."""
        P = self.Q.shape[2]
        noise = torch.randn(self.r.shape[0], P, generator=self.generator, dtype=torch.float64)
        noise = noise.to(dtype=self.dtype, device=self.device)
        if self.support is not None:
            noise = noise * self.support
        noise, _ = self._orthogonalize(noise, self.size)
        Bn, nb = self._b_norm(noise)
        exhausted = nb <= 1e3 * torch.finfo(self.dtype).eps * torch.linalg.vector_norm(
            noise, dim=1
        ).clamp_min(1)
        scale = torch.where(exhausted, torch.zeros_like(nb), 1 / nb.clamp_min(torch.finfo(self.dtype).tiny))
        keep = ~rows[:, None]
        self.r = torch.where(keep, self.r, noise * scale[:, None])
        self.Br = torch.where(keep, self.Br, Bn * scale[:, None])
        self.beta = torch.where(rows, torch.ones_like(self.beta), self.beta)

    def step(self) -> None:
        """Append one basis vector per batch element and the new column of T."""
        j = self.size
        if j == self.Q.shape[1]:
            raise InfogeomError("Krylov basis is full; restart it or raise its capacity")
        eps = torch.finfo(self.dtype).eps
        broken = self.beta <= 100 * eps * self.scale.clamp_min(eps)
        if j > 0 and bool(broken.any()):
            self._fresh_direction(broken)
        self.Q[:, j] = self.r / self.beta[:, None]
        if self.metric is not None:
            self.BQ[:, j] = self.Br / self.beta[:, None]
        w = self.apply(self.Q[:, j].T).T
        self.matvecs += 1
        w, h = self._orthogonalize(w, j + 1)
        if j > 0 and bool(broken.any()):  # a fresh direction is not coupled to the invariant subspace found
            h[broken, :j] = 0
        self.T[:, : j + 1, j] = h
        self.T[:, j, : j + 1] = h
        self.size = j + 1
        self.r = w
        self.Br, self.beta = self._b_norm(w)
        self.scale = torch.maximum(self.scale, h.abs().amax(1))

    def ritz(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Ritz values ``[b, m]`` (ascending) and coordinates ``Y [b, m, m]`` of the current projected
        matrix."""
        m = self.size
        return torch.linalg.eigh(self.T[:, :m, :m])

    def residual_estimates(self, Y: torch.Tensor) -> torch.Tensor:
        """‖S (Q y) − θ (Q y)‖_B = ‖r‖_B · |y_m| for each Ritz coordinate column of ``Y [b, m, m]``."""
        return self.beta[:, None] * Y[:, -1, :].abs()

    def restart(self, Y: torch.Tensor, theta: torch.Tensor) -> None:
        """Thick restart: keep the Ritz vectors ``Q Y [b, m, k]`` (B-orthonormal) with T = diag(θ)."""
        k = Y.shape[2]
        m = self.size
        self.Q[:, :k] = torch.bmm(Y.transpose(1, 2), self.Q[:, :m])
        if self.metric is not None:
            self.BQ[:, :k] = torch.bmm(Y.transpose(1, 2), self.BQ[:, :m])
        self.T.zero_()
        self.T[:, torch.arange(k), torch.arange(k)] = theta
        self.size = k


def _order(theta: torch.Tensor, which: str) -> torch.Tensor:
    """Indices of ``theta [m]`` from most to least wanted."""
    if which == "LA":
        return torch.argsort(theta, descending=True)
    if which == "SA":
        return torch.argsort(theta)
    return torch.argsort(theta.abs(), descending=True)


def _remaining_steps(history: Sequence[float], cap: int) -> int | None:
    """Steps until log(residual / threshold) in ``history`` reaches 0 at its mean rate of decrease over the
    last 10 steps (at most ``cap``), or None while it is not decreasing: the progress bar's total is the
    products so far plus this, and keeps its previous value while there is no estimate."""
    if len(history) < 2:
        return None
    window = history[-11:]
    rate = (window[0] - window[-1]) / (len(window) - 1)
    return None if rate <= 0 else min(cap, max(1, math.ceil(history[-1] / rate)))


def _krylov_eigsh(
    apply: MatMat,
    dim: int,
    dtype: torch.dtype,
    device: torch.device,
    k: int,
    which: str,
    tol: float,
    max_basis: int | None,
    max_matvecs: int | None,
    generator: torch.Generator | None,
    metric: MatMat | None,
    v0: torch.Tensor | None,
    progress: bool,
) -> tuple:
    if which not in WHICH:
        raise InfogeomError(f"unknown which={which!r}; choose one of {', '.join(WHICH)}")
    if not 1 <= k <= dim:
        raise InfogeomError(f"k must be between 1 and the operator dimension {dim}, got {k}")
    if not tol > 0:
        raise InfogeomError(f"tol must be positive, got {tol}")
    capacity = min(dim, max_basis or max(2 * k + 20, 40))
    if capacity <= k and capacity < dim:
        raise InfogeomError(f"max_basis ({capacity}) must exceed k ({k})")
    budget = max_matvecs or max(20 * capacity, 200)
    if v0 is None:
        v0 = torch.randn(dim, generator=generator, dtype=torch.float64)
    basis = KrylovBasis(apply, v0.to(dtype=dtype, device=device).reshape(dim, 1), capacity, metric, generator)
    eps = torch.finfo(dtype).eps
    converged = False
    bar = tqdm(total=None, desc="lanczos", unit="product", disable=not progress, leave=False)
    history: list[float] = []  # log of the worst residual / its threshold, per step
    while basis.matvecs < budget:
        basis.step()
        bar.update(1)
        if basis.size < k and basis.size < dim:
            continue
        theta, Y = basis.ritz()
        wanted = _order(theta[0], which)[:k]
        res = basis.residual_estimates(Y)[0, wanted]
        floor = (
            10 * eps * theta[0].abs().max()
        )  # residuals below this are round-off (float32: ≈ 1e-6 relative)
        threshold = torch.clamp(tol * theta[0, wanted].abs(), min=floor)
        converged = bool((res <= threshold).all()) or basis.size == dim
        if converged:
            break
        history.append(float((res / threshold).max().clamp_min(1e-30).log()))
        if progress:
            remaining = _remaining_steps(history, budget - basis.matvecs)
            if remaining is not None or (bar.total is not None and bar.total <= basis.matvecs):
                bar.total = basis.matvecs + (remaining or 1)
                bar.refresh()
        if basis.size == capacity:
            keep = _order(theta[0], which)[: max(k, (capacity + k) // 2)]
            basis.restart(Y[:, :, keep], theta[:, keep])
    bar.close()
    theta, Y = basis.ritz()
    wanted = _order(theta[0], which)[:k]
    vectors = basis.Q[0, : basis.size].T @ Y[0][:, wanted]
    return theta[0, wanted], vectors, basis.residual_estimates(Y)[0, wanted], converged, basis.matvecs


def eigsh(
    op: CurvatureOperator,
    k: int = 1,
    which: str = "LA",
    tol: float = 1e-4,
    max_basis: int | None = None,
    max_matvecs: int | None = None,
    generator: torch.Generator | None = None,
    v0: torch.Tensor | None = None,
    residuals: bool = True,
    progress: bool = False,
    sketch: bool = False,
) -> EigenResult:
    """Top-k eigenpairs of the symmetric operator ``op`` (``which``: 'LA' largest algebraic, 'SA' smallest,
    'LM' largest magnitude) by thick-restart Lanczos with full re-orthogonalization.

    Stops when every wanted Ritz pair has ‖A v − θ v‖ ≤ max(``tol``·|θ|, 10ε·max|θ|) (estimated from the
    Krylov relation; ε the dtype's machine epsilon), or after ``max_matvecs`` products
    (``converged=False``). ``max_basis`` vectors are stored (default max(2k + 20, 40)). The explicit
    residuals ‖A v − θ v‖ cost k extra products (``residuals=False`` skips them and returns the Krylov
    estimates |y_m|·‖r‖ instead).

    ``sketch=True``: the Krylov space is built from :meth:`~CurvatureOperator.sketch` (A + E, the Hessian's
    gradient differences on the CPU: one gradient per column instead of an HVP's 2.3, ‖E‖ ≈ 1e-3‖A‖), then the
    k Ritz vectors get one exact product each: the values are their exact Rayleigh quotients vᵀAv and the
    residuals their exact ‖Av − θv‖ (whatever ``residuals`` says). A vector off by an angle φ ≈ ‖E‖/gap gives
    a value off by ≈ ‖A‖φ², so the values keep ≈ 1e-5–1e-4 relative accuracy where the gap is ≥ 10% of ‖A‖.
    Where an exact residual is above ``tol``·|θ| (E large along a wanted direction: on the 3.2M-parameter GPT of
    ``benchmarks/curvature_scaling.py`` the one-sided difference is 70% off along its λ = −695 eigenvector), the
    Lanczos iteration is finished with exact products from the sketch's Ritz vectors, so the result meets the
    same residual test as without the sketch. ``matvecs`` counts sketch columns and products.
    """
    values, vectors, res, converged, matvecs = _krylov_eigsh(
        op.sketch if sketch else op.matmat,
        op.dim,
        op.dtype,
        op.device,
        k,
        which,
        tol,
        max_basis,
        max_matvecs,
        generator,
        None,
        v0,
        progress,
    )
    if sketch:  # exact Rayleigh quotients of the (unit) Ritz vectors, reordered, and their exact residuals
        AV = op.matmat(vectors)
        values = (vectors * AV).sum(0) / vectors.square().sum(0)
        order = _order(values, which)
        values, vectors, AV = values[order], vectors[:, order], AV[:, order]
        res, matvecs = torch.linalg.vector_norm(AV - vectors * values, dim=0), matvecs + k
        floor = 10 * torch.finfo(op.dtype).eps * values.abs().max()
        if bool((res <= torch.clamp(tol * values.abs(), min=floor)).all()):
            return EigenResult(values, vectors, res, converged, matvecs)
        # the sketch's error left a residual above tol (a direction where the loss is far from quadratic at the
        # difference step): finish with exact products, started from the sketch's Ritz vectors
        budget = None if max_matvecs is None else max(max_matvecs - matvecs, 1)
        exact = eigsh(op, k, which, tol, max_basis, budget, generator, vectors.sum(1), residuals, progress)
        return EigenResult(exact.values, exact.vectors, exact.residuals, exact.converged, matvecs + exact.matvecs)
    if residuals:
        res = torch.linalg.vector_norm(op.matmat(vectors) - vectors * values, dim=0)
        matvecs += k
    return EigenResult(values, vectors, res, converged, matvecs)


def generalized_eigsh(
    A: CurvatureOperator,
    B: CurvatureOperator,
    k: int = 1,
    damping: float = 0.0,
    which: str = "LA",
    tol: float = 1e-4,
    solve_tol: float = 1e-8,
    max_basis: int | None = None,
    max_matvecs: int | None = None,
    generator: torch.Generator | None = None,
    residuals: bool = True,
    progress: bool = False,
    v0: torch.Tensor | None = None,
) -> EigenResult:
    """Top-k eigenpairs of the pencil A v = θ (B + δI) v, δ = ``damping``, B + δI symmetric positive
    definite; ``v0``: a start vector (e.g. the previous top eigenvector, a warm start).

    Lanczos on S = (B + δI)⁻¹A, which is self-adjoint in ⟨u, v⟩_{B+δI}: each step costs one A product, one
    (B + δI) product and one ``B.solve(·, damping)`` (exact for diagonal/dense/K-FAC operators, CG with
    ``solve_tol`` otherwise). Eigenvectors are (B + δI)-orthonormal; residuals are ‖A v − θ (B + δI) v‖.
    """
    if A.dim != B.dim:
        raise InfogeomError(f"operators have different dimensions ({A.dim} vs {B.dim})")

    def metric(V: torch.Tensor) -> torch.Tensor:
        return B.matmat(V) + damping * V

    def apply(V: torch.Tensor) -> torch.Tensor:
        AV = A.matmat(V)
        return torch.stack(
            [B.solve(AV[:, j], damping=damping, tol=solve_tol) for j in range(V.shape[1])], dim=1
        )

    values, vectors, res, converged, matvecs = _krylov_eigsh(
        apply,
        A.dim,
        A.dtype,
        A.device,
        k,
        which,
        tol,
        max_basis,
        max_matvecs,
        generator,
        metric,
        v0,
        progress,
    )
    if residuals:
        res = torch.linalg.vector_norm(A.matmat(vectors) - metric(vectors) * values, dim=0)
        matvecs += k
    return EigenResult(values, vectors, res, converged, matvecs)


def lanczos_quadrature(
    op: CurvatureOperator | MatMat,
    probes: torch.Tensor,
    steps: int,
    generator: torch.Generator | None = None,
    support: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gauss quadrature of vᵀ f(A) v / vᵀv for each probe column of ``probes [P, n]`` with m = ``steps``
    nodes.

    Returns ``nodes [n, m]`` (Ritz values of the m-step Lanczos matrix T started at v/‖v‖) and ``weights [n,
    m]`` (squared first components of T's eigenvectors; each row sums to 1). The rule is exact for
    polynomials of degree ≤ 2m − 1: Σ_i w_i θ_i^p = vᵀA^p v / vᵀv. All probes advance together (one
    ``matmat`` per step); ``generator`` draws the restart vectors after a breakdown (only when m exceeds a
    Krylov space's dimension). ``op`` may also be a function ``V [P, n] -> A V`` (e.g. masked products for
    several blocks at once, with ``support [P, n]`` the columns' coordinate masks; see
    :class:`KrylovBasis`).
    """
    apply = op.matmat if isinstance(op, CurvatureOperator) else op
    m = min(int(steps), probes.shape[0])
    if m < 1:
        raise InfogeomError(f"Lanczos steps must be positive, got {steps}")
    basis = KrylovBasis(apply, probes, m, generator=generator, support=support)
    for _ in range(m):
        basis.step()
    theta, Y = basis.ritz()
    return theta, Y[:, 0, :] ** 2
