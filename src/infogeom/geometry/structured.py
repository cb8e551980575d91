"""Structured curvature approximations as :class:`CurvatureOperator` s with exact damped solves.

- :class:`KFACOperator`: block-diagonal over layers, each block ``G ⊗ A`` (factors of :mod:`.kfac`),
  stored in eigen form A = Q_A diag(α) Q_Aᵀ, G = Q_G diag(γ) Q_Gᵀ, so that a block is
  (Q_G ⊗ Q_A) diag(γ ⊗ α) (Q_G ⊗ Q_A)ᵀ and ``solve`` is exact: ``(F + λI)^{-1}`` divides by γ_i α_j + λ in
  the rotated basis. With ``pi_correction=True`` it inverts the π-corrected Tikhonov split
  (A + π√λ I) ⊗ (G + √λ/π I), π² = (tr A / dim A)/(tr G / dim G) (Martens & Grosse 2015, §6.3), i.e.
  divides by (α_j + π√λ)(γ_i + √λ/π).
- :class:`EKFACOperator`: the same eigenbasis with the eigenvalues replaced by the re-estimated
  per-coordinate second moments S_ij of the per-sequence gradients (George et al. 2018); solve divides by
  S_ij + λ.
- :class:`DiagonalOperator` (e.g. the exact Fisher diagonal) and :class:`LowRankOperator` U diag(μ) Uᵀ
  (top-k eigenpairs; Woodbury solve (b − U diag(μ/(μ+λ)) Uᵀ b)/λ).

K-FAC/EK-FAC cover only the parameters of Linear/Embedding layers (``op.names``; LayerNorm gains and biases
are not covered); a matvec costs two small matmuls per layer, O(Σ d_out d_in (d_out + d_in)).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from ..errors import InfogeomError
from .functional import Batch
from .kfac import LayerFactors, eigenbasis, ekfac_factors, kfac_factors
from .operator import CurvatureOperator, DenseOperator, flatten, unflatten


@dataclass
class EigenBlock:
    """One layer in eigen form: weight-shaped ``grid`` of eigenvalues in the basis ``QG`` ⊗ ``QA`` (``QA``
    None for an embedding, whose A is diagonal with values ``ea``); ``ea``/``eg``: the factor eigenvalues."""

    factors: LayerFactors
    QA: torch.Tensor | None
    QG: torch.Tensor
    grid: torch.Tensor
    ea: torch.Tensor
    eg: torch.Tensor

    @property
    def linear(self) -> bool:
        return self.factors.info.kind == "linear"

    def rotate(self, M: torch.Tensor, back: bool = False) -> torch.Tensor:
        """``Q_Gᵀ M Q_A`` (``back``: ``Q_G M Q_Aᵀ``) for ``M [k, d_out, d_in']`` (embedding:
        ``M [k, num, dim]``,
        ``M Q_G`` / ``M Q_Gᵀ``); batched matmuls."""
        if not self.linear:
            return M @ (self.QG.T if back else self.QG)
        if back:
            return self.QG @ M @ self.QA.T
        return self.QG.T @ M @ self.QA

    def pi_grid(self, damping: float) -> torch.Tensor:
        """(α + π√λ)(γ + √λ/π) on the eigenvalue grid (π from the factor traces)."""
        ta, tg = self.ea.clamp_min(0).mean(), self.eg.clamp_min(0).mean()
        pi = torch.sqrt(ta / tg) if ta > 0 and tg > 0 else torch.ones((), dtype=self.ea.dtype)
        s = math.sqrt(damping)
        a, g = self.ea + pi * s, self.eg + s / pi
        return torch.outer(g, a) if self.linear else torch.outer(a, g)


class KroneckerOperator(CurvatureOperator):
    """Block-diagonal operator with one :class:`EigenBlock` per layer (base of K-FAC and EK-FAC)."""

    def _setup(self, model: nn.Module, blocks: list[EigenBlock]) -> None:
        owned = set()
        for b in blocks:
            owned.update(n for n in (b.factors.info.weight, b.factors.info.bias) if n is not None)
        params = [(n, p) for n, p in model.named_parameters() if n in owned]
        self.names = [n for n, _ in params]
        self.shapes = [p.shape for _, p in params]
        self.dtype, self.device = params[0][1].dtype, params[0][1].device
        self.blocks = blocks

    def _apply(self, V: torch.Tensor, scale: Callable[[EigenBlock], torch.Tensor]) -> torch.Tensor:
        """Per layer: rotate into the eigenbasis, scale by ``scale(block)`` (weight-shaped), rotate back."""
        k = V.shape[1]
        parts = {n: t.movedim(-1, 0) for n, t in zip(self.names, unflatten(V, self.shapes))}  # [k, *shape]
        out = {}
        for b in self.blocks:
            info = b.factors.info
            M = parts[info.weight]
            if info.bias is not None:
                M = torch.cat([M, parts[info.bias][..., None]], dim=-1)
            R = b.rotate(b.rotate(M) * scale(b), back=True)
            if info.bias is not None:
                out[info.bias] = R[..., -1]
                R = R[..., :-1]
            out[info.weight] = R
        return torch.cat([out[n].reshape(k, -1) for n in self.names], dim=1).T

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        return self._apply(V, lambda b: b.grid)

    def diagonal(self, num_probes: int | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Exact diagonal from the eigen form, (Q_G∘Q_G) grid (Q_A∘Q_A)ᵀ per layer (no probes needed)."""
        out = {}
        for b in self.blocks:
            info = b.factors.info
            if b.linear:
                d = b.QG.square() @ b.grid @ b.QA.square().T
            else:
                d = b.grid @ b.QG.square().T
            if info.bias is not None:
                out[info.bias] = d[:, -1]
                d = d[:, :-1]
            out[info.weight] = d
        return flatten([out[n] for n in self.names])

    def trace(self) -> torch.Tensor:
        return sum(b.grid.sum() for b in self.blocks)

    def solve(self, b: torch.Tensor | Sequence[torch.Tensor], damping: float = 0.0, tol: float = 1e-6,
              maxiter: int | None = None, pi_correction: bool = False):
        """Exact ``(A + λI)^{-1} b`` in the eigenbasis (``tol``/``maxiter`` unused). ``pi_correction`` (K-FAC
        only): invert the π-corrected split instead (module docstring)."""
        if not isinstance(b, torch.Tensor):
            return unflatten(self.solve(flatten(b), damping, pi_correction=pi_correction), self.shapes)
        if pi_correction:
            if not isinstance(self, KFACOperator) or damping <= 0:
                raise InfogeomError("pi_correction needs a K-FAC operator and a positive damping")
            scale = lambda blk: 1.0 / blk.pi_grid(damping)  # noqa: E731
        else:
            scale = lambda blk: 1.0 / (blk.grid + damping)  # noqa: E731
        x = b.to(self.dtype)
        return self._apply(x[:, None], scale)[:, 0] if x.ndim == 1 else self._apply(x, scale)


def _kfac_block(f: LayerFactors) -> EigenBlock:
    QA, QG, ea, eg = eigenbasis(f)
    grid = torch.outer(eg, ea) if f.info.kind == "linear" else torch.outer(ea, eg)
    return EigenBlock(f, QA, QG, grid, ea, eg)


class KFACOperator(KroneckerOperator):
    """K-FAC ``⊕_layers G ⊗ A`` of the Fisher (normalized like the mean token loss) for one batch.

    ``approx``: ``"expand"``/``"reduce"``; ``fisher``: ``"mc"`` (``mc_samples`` labels from ``generator``),
    ``"exact"`` (per-class square root, V backward passes) or ``"empirical"``. See
    :mod:`infogeom.geometry.kfac`.
    ``KFACOperator.from_factors(model, factors)`` wraps factors captured elsewhere (e.g. by an optimizer).
    """

    def __init__(self, model: nn.Module, batch: Batch, approx: str = "expand", fisher: str = "mc",
                 mc_samples: int = 1, generator: torch.Generator | None = None,
                 modules: Sequence[str] | None = None):
        factors = kfac_factors(model, batch, approx, fisher, mc_samples, generator, modules)
        self._setup(model, [_kfac_block(f) for f in factors.values()])

    @classmethod
    def from_factors(cls, model: nn.Module, factors: dict[str, LayerFactors]) -> KFACOperator:
        op = cls.__new__(cls)
        op._setup(model, [_kfac_block(f) for f in factors.values()])
        return op


class EKFACOperator(KroneckerOperator):
    """EK-FAC: K-FAC's eigenbasis with per-coordinate second moments re-estimated in it (two passes over the
    batch with the same MC labels; arguments as :class:`KFACOperator`)."""

    def __init__(self, model: nn.Module, batch: Batch, approx: str = "expand", fisher: str = "mc",
                 mc_samples: int = 1, generator: torch.Generator | None = None,
                 modules: Sequence[str] | None = None):
        factors = ekfac_factors(model, batch, approx, fisher, mc_samples, generator, modules)
        self._setup(model, [_ekfac_block(f) for f in factors.values()])

    @classmethod
    def from_factors(cls, model: nn.Module, factors: dict[str, LayerFactors]) -> EKFACOperator:
        op = cls.__new__(cls)
        op._setup(model, [_ekfac_block(f) for f in factors.values()])
        return op


def _ekfac_block(f: LayerFactors) -> EigenBlock:
    if f.moments is None or f.eigenbasis is None:
        raise InfogeomError(f"layer {f.info.name} has no EK-FAC moments (capture them with set_eigenbasis)")
    QA, QG = f.eigenbasis
    ea = f.A if QA is None else torch.linalg.eigvalsh(f.A)
    return EigenBlock(f, QA, QG, f.moments, ea, torch.linalg.eigvalsh(f.G))


class DiagonalOperator(CurvatureOperator):
    """``diag(d)`` on the parameters ``names``/``shapes``; exact solve ``b / (d + λ)``."""

    def __init__(self, values: torch.Tensor, names: Sequence[str], shapes: Sequence[torch.Size]):
        self.values, self.names, self.shapes = values, list(names), list(shapes)
        self.dtype, self.device = values.dtype, values.device

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        return self.values[:, None] * V

    def diagonal(self, num_probes: int | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        return self.values

    def solve(self, b, damping: float = 0.0, tol: float = 1e-6, maxiter: int | None = None):
        if not isinstance(b, torch.Tensor):
            return unflatten(self.solve(flatten(b), damping), self.shapes)
        return b.to(self.dtype) / (self.values + damping)


class LowRankOperator(CurvatureOperator):
    """``U diag(μ) Uᵀ`` with orthonormal ``U [P, k]``; Woodbury solve for λ > 0."""

    def __init__(self, U: torch.Tensor, eigenvalues: torch.Tensor, names: Sequence[str],
                 shapes: Sequence[torch.Size]):
        self.U, self.eigenvalues, self.names, self.shapes = U, eigenvalues, list(names), list(shapes)
        self.dtype, self.device = U.dtype, U.device

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        return self.U @ (self.eigenvalues[:, None] * (self.U.T @ V))

    def diagonal(self, num_probes: int | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        return (self.U.square() * self.eigenvalues).sum(dim=1)

    def solve(self, b, damping: float = 0.0, tol: float = 1e-6, maxiter: int | None = None):
        if not isinstance(b, torch.Tensor):
            return unflatten(self.solve(flatten(b), damping), self.shapes)
        if damping <= 0:
            raise InfogeomError("a low-rank operator is singular: solve needs a positive damping")
        b = b.to(self.dtype)
        shrink = self.eigenvalues / (self.eigenvalues + damping)
        return (b - self.U @ (shrink * (self.U.T @ b))) / damping


def diagonal_approximation(op: CurvatureOperator) -> DiagonalOperator:
    """The exact diagonal of ``op`` as an operator (P matvecs unless ``op`` has a cheaper ``diagonal``)."""
    return DiagonalOperator(op.diagonal(), op.names, op.shapes)


def low_rank_approximation(op: CurvatureOperator, rank: int, seed: int = 0) -> LowRankOperator:
    """Top-``rank`` eigenpairs of ``op``: dense ``eigh`` for a :class:`DenseOperator`, otherwise matrix-free
    Lanczos (scipy ``eigsh`` on :meth:`to_scipy`, start vector from ``seed``)."""
    if not 0 < rank < op.dim:
        raise InfogeomError(f"rank must be in 1..{op.dim - 1}, got {rank}")
    if isinstance(op, DenseOperator):
        evals, evecs = torch.linalg.eigh(op.matrix)
        evals, U = evals[-rank:], evecs[:, -rank:]
    else:
        from scipy.sparse.linalg import eigsh
        v0 = np.random.default_rng(seed).standard_normal(op.dim)
        w, u = eigsh(op.to_scipy(), k=rank, which="LA", v0=v0)
        evals = torch.as_tensor(w, dtype=op.dtype, device=op.device)
        U = torch.as_tensor(u, dtype=op.dtype, device=op.device)
    return LowRankOperator(U, evals.clamp_min(0), op.names, op.shapes)
