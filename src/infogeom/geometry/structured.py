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
- :func:`diagonal_approximation` (the exact diagonal as a :class:`~infogeom.operators.DiagonalOperator`) and
  :func:`low_rank_approximation` (top-k eigenpairs as a :class:`~infogeom.operators.LowRankOperator`).

Both K-FAC classes are :class:`~infogeom.operators.KroneckerOperator` s (the eigen form shared with the
Kronecker optimizers' preconditioners): a linear layer's block has L = G, R = A; an embedding's L = diag(A)
(identity basis), R = G.

K-FAC/EK-FAC cover only the parameters of Linear/Embedding layers (``op.names``; LayerNorm gains and biases
are not covered); a matvec costs two small matmuls per layer, O(Σ d_out d_in (d_out + d_in)).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn as nn

from ..errors import InfogeomError
from ..models.linear import CONV1D
from ..operators import (
    CurvatureOperator,
    DenseOperator,
    DiagonalOperator,
    KroneckerBlock,
    KroneckerOperator,
    LowRankOperator,
)
from .functional import Batch
from .kfac import LayerFactors, ekfac_factors, kfac_factors


def _layout(model: nn.Module, factors: Sequence[LayerFactors]) -> tuple[list[str], list[torch.Size]]:
    owned = {n for f in factors for n in (f.info.weight, f.info.bias) if n is not None}
    params = [(n, p) for n, p in model.named_parameters() if n in owned]
    return [n for n, _ in params], [p.shape for _, p in params]


def _eig(M: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Eigenvalues and basis of a factor side (a vector is a diagonal side: its own eigenvalues, no basis)."""
    return (M, None) if M.ndim == 1 else torch.linalg.eigh(M)


def kfac_block(f: LayerFactors) -> KroneckerBlock:
    """K-FAC block L ⊗ R of a layer (:meth:`LayerFactors.oriented`): grid e_L ⊗ e_R in the factors' eigenbases."""
    (eL, QL), (eR, QR) = (_eig(M) for M in f.oriented())
    return KroneckerBlock(f.info.weight, f.info.bias, QL, QR, torch.outer(eL, eR), eL, eR, f.info.kind == CONV1D)


def ekfac_block(f: LayerFactors) -> KroneckerBlock:
    """EK-FAC block: the K-FAC eigenbasis with the re-estimated second moments as its grid."""
    if f.moments is None or f.eigenbasis is None:
        raise InfogeomError(f"layer {f.info.name} has no EK-FAC moments (capture them with set_eigenbasis)")
    QA, QG = f.eigenbasis
    if f.info.kind == "linear":
        return KroneckerBlock(f.info.weight, f.info.bias, QG, QA, f.moments)
    if f.info.kind == CONV1D:  # X = [∇W; ∇b] is [d_in(+1), d_out]: the input side on the left
        return KroneckerBlock(f.info.weight, f.info.bias, QA, QG, f.moments, bias_row=True)
    return KroneckerBlock(f.info.weight, f.info.bias, None, QG, f.moments)


class _FactoredOperator(KroneckerOperator):
    """A Kronecker operator built from a model's layer factors: ``_factors`` computes them for a batch,
    ``_block`` turns one layer's into its eigen-block."""

    _factors = staticmethod(kfac_factors)
    _block = staticmethod(kfac_block)

    def __init__(self, model: nn.Module, batch: Batch, approx: str = "expand", fisher: str = "mc",
                 mc_samples: int = 1, generator: torch.Generator | None = None,
                 modules: Sequence[str] | None = None):
        factors = self._factors(model, batch, approx, fisher, mc_samples, generator, modules)
        self._wrap(model, factors)

    def _wrap(self, model: nn.Module, factors: dict[str, LayerFactors]) -> None:
        self._init([self._block(f) for f in factors.values()], *_layout(model, list(factors.values())))

    @classmethod
    def from_factors(cls, model: nn.Module, factors: dict[str, LayerFactors]):
        """Wrap factors captured elsewhere (e.g. by an optimizer)."""
        op = cls.__new__(cls)
        op._wrap(model, factors)
        return op


class KFACOperator(_FactoredOperator):
    """K-FAC ``⊕_layers G ⊗ A`` of the Fisher (normalized like the mean token loss) for one batch.

    ``approx``: ``"expand"``/``"reduce"``; ``fisher``: ``"mc"`` (``mc_samples`` labels from ``generator``),
    ``"exact"`` (per-class square root, V backward passes) or ``"empirical"``. See
    :mod:`infogeom.geometry.kfac`.
    ``KFACOperator.from_factors(model, factors)`` wraps factors captured elsewhere (e.g. by an optimizer).
    """


class EKFACOperator(_FactoredOperator):
    """EK-FAC: K-FAC's eigenbasis with per-coordinate second moments re-estimated in it (two passes over the
    batch with the same MC labels; arguments as :class:`KFACOperator`)."""

    _factors = staticmethod(ekfac_factors)
    _block = staticmethod(ekfac_block)


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
