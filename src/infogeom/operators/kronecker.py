"""Kronecker eigen-blocks: one operator for K-FAC, EK-FAC and the Kronecker optimizers' preconditioners.

A layer's gradient is a matrix X ``[d_L, d_R]`` (an ``nn.Linear``: [∇W | ∇b], bias as the last column; an
``nn.Embedding``: ∇E) and its block of the operator acts as

    X ↦ Q_L [ grid ⊙ (Q_Lᵀ X Q_R) ] Q_Rᵀ,

with orthonormal eigenbases Q_L, Q_R of the two Kronecker factors (``None``: a diagonal side, identity basis)
and a ``grid [d_L, d_R]`` of eigenvalues in that basis: e_L ⊗ e_R for K-FAC L ⊗ R (Martens & Grosse 2015), the
re-estimated per-coordinate second moments for EK-FAC (George et al. 2018), (1 − β₁ᵗ)(√v̂ + ε) for Adam in the
eigenbasis. ``solve`` is exact: divide by grid + λ in the rotated basis. π-corrected factored Tikhonov damping,
(L + √λ/π I) ⊗ (R + π√λ I) with π² = (tr R / d_R)/(tr L / d_L), is :func:`pi_damped_grid`. Cost of a product:
two batched matmuls per side and layer, O(Σ d_L d_R (d_L + d_R)).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..errors import InfogeomError
from .base import CurvatureOperator, flatten, unflatten


def to_eigenbasis(X: torch.Tensor, QL: torch.Tensor | None, QR: torch.Tensor | None) -> torch.Tensor:
    """Q_Lᵀ X Q_R for ``X [..., d_L, d_R]`` (a missing Q is the identity of a diagonal side)."""
    X = X if QL is None else QL.T @ X
    return X if QR is None else X @ QR


def from_eigenbasis(Y: torch.Tensor, QL: torch.Tensor | None, QR: torch.Tensor | None) -> torch.Tensor:
    """Q_L Y Q_Rᵀ (inverse of :func:`to_eigenbasis`)."""
    Y = Y if QL is None else QL @ Y
    return Y if QR is None else Y @ QR.T


def pack_bias(W: torch.Tensor, b: torch.Tensor | None, row: bool = False) -> torch.Tensor:
    """The layer matrix [W | b] ``[..., d_out, d_in + 1]`` (just W without a bias); ``row``: W is stored
    transposed ``[d_in, d_out]`` (transformers' Conv1D) and b becomes the last row, ``[..., d_in + 1, d_out]``."""
    if b is None:
        return W
    return torch.cat([W, b[..., None, :]], dim=-2) if row else torch.cat([W, b[..., None]], dim=-1)


def unpack_bias(M: torch.Tensor, bias: bool, row: bool = False) -> list[torch.Tensor]:
    """Inverse of :func:`pack_bias`: ``[W]`` or ``[W, b]``."""
    if not bias:
        return [M]
    return [M[..., :-1, :], M[..., -1, :]] if row else [M[..., :-1], M[..., -1]]


def symmetric_eigh(M: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``eigh`` in the factor's dtype, retried in float64 when it fails or returns non-finite values (float32 is
    about twice as fast; the retry keeps it robust). Raises when float64 fails too."""
    try:
        e, Q = torch.linalg.eigh(M)
        if bool(torch.isfinite(e).all() and torch.isfinite(Q).all()):
            return e, Q
    except RuntimeError:
        if M.dtype == torch.float64:
            raise
    e, Q = torch.linalg.eigh(M.double())
    return e.to(M.dtype), Q.to(M.dtype)


def pi_correction(eL: torch.Tensor, eR: torch.Tensor) -> float:
    """Martens & Grosse's π = √((tr R / d_R) / (tr L / d_L)) from the eigenvalues (1 when a factor vanishes)."""
    mL, mR = float(eL.clamp_min(0).mean()), float(eR.clamp_min(0).mean())
    return math.sqrt(mR / mL) if mL > 0 and mR > 0 else 1.0


def pi_damped_grid(eL: torch.Tensor, eR: torch.Tensor, damping: float) -> torch.Tensor:
    """(e_L + √λ/π)(e_R + π√λ): the eigenvalues of the π-corrected damped factors' Kronecker product."""
    pi, s = pi_correction(eL, eR), math.sqrt(damping)
    return torch.outer(eL + s / pi, eR + pi * s)


@dataclass
class KroneckerBlock:
    """One layer's block: parameters ``weight`` (and ``bias``, the last column of X), bases ``QL``/``QR`` (None:
    diagonal side), eigenvalue ``grid [d_L, d_R]`` and the factors' eigenvalues ``eL [d_L]``, ``eR [d_R]``."""

    weight: str
    bias: str | None
    QL: torch.Tensor | None
    QR: torch.Tensor | None
    grid: torch.Tensor
    eL: torch.Tensor | None = None
    eR: torch.Tensor | None = None
    bias_row: bool = False  # the bias is X's last row (a transposed Conv1D weight), not its last column

    @property
    def names(self) -> list[str]:
        return [self.weight] if self.bias is None else [self.weight, self.bias]

    def pack(self, parts: dict[str, torch.Tensor]) -> torch.Tensor:
        """``[k, d_L, d_R]`` from the parameter-shaped ``parts[name] [k, *shape]``."""
        return pack_bias(parts[self.weight], None if self.bias is None else parts[self.bias], self.bias_row)

    def unpack(self, M: torch.Tensor) -> dict[str, torch.Tensor]:
        """Inverse of :meth:`pack`."""
        return dict(zip(self.names, unpack_bias(M, self.bias is not None, self.bias_row)))

    def apply(self, M: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """Q_L [scale ⊙ (Q_Lᵀ M Q_R)] Q_Rᵀ for ``M [..., d_L, d_R]``."""
        return from_eigenbasis(to_eigenbasis(M, self.QL, self.QR) * scale, self.QL, self.QR)

    def diagonal(self) -> torch.Tensor:
        """diag of the block as ``[d_L, d_R]``: (Q_L∘Q_L) grid (Q_R∘Q_R)ᵀ."""
        d = self.grid if self.QL is None else self.QL.square() @ self.grid
        return d if self.QR is None else d @ self.QR.square().T


class KroneckerOperator(CurvatureOperator):
    """Block-diagonal operator with one :class:`KroneckerBlock` per layer, on the parameters ``names``
    (``shapes``; every name belongs to one block)."""

    def __init__(self, blocks: Sequence[KroneckerBlock], names: Sequence[str], shapes: Sequence[torch.Size]):
        self._init(blocks, names, shapes)

    def _init(self, blocks: Sequence[KroneckerBlock], names: Sequence[str], shapes: Sequence[torch.Size]) -> None:
        if not blocks:
            raise InfogeomError("a Kronecker operator needs at least one layer block")
        owned = [n for b in blocks for n in b.names]
        if sorted(owned) != sorted(names):
            raise InfogeomError("the Kronecker blocks do not cover exactly the operator's parameters")
        self.blocks, self.names, self.shapes = list(blocks), list(names), [torch.Size(s) for s in shapes]
        self.dtype, self.device = blocks[0].grid.dtype, blocks[0].grid.device

    def apply(self, V: torch.Tensor, scale: Callable[[KroneckerBlock], torch.Tensor]) -> torch.Tensor:
        """Per block: rotate into the eigenbasis, multiply by ``scale(block)`` ``[d_L, d_R]``, rotate back."""
        k = V.shape[1]
        parts = {n: t.movedim(-1, 0) for n, t in zip(self.names, unflatten(V, self.shapes))}  # [k, *shape]
        out = {}
        for b in self.blocks:
            out.update(b.unpack(b.apply(b.pack(parts), scale(b))))
        return torch.cat([out[n].reshape(k, -1) for n in self.names], dim=1).T

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        return self.apply(V, lambda b: b.grid)

    def diagonal(self, num_probes: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Exact diagonal from the eigen form (no probes needed)."""
        out = {}
        for b in self.blocks:
            out.update(b.unpack(b.diagonal()))
        return flatten([out[n] for n in self.names])

    def trace(self) -> torch.Tensor:
        return sum(b.grid.sum() for b in self.blocks)

    def with_grid(self, grid: Callable[[KroneckerBlock], torch.Tensor]) -> KroneckerOperator:
        """The same bases with the eigenvalue grid of every block replaced by ``grid(block)``."""
        blocks = [KroneckerBlock(b.weight, b.bias, b.QL, b.QR, grid(b), b.eL, b.eR) for b in self.blocks]
        return KroneckerOperator(blocks, self.names, self.shapes)

    def pi_damped(self, damping: float) -> KroneckerOperator:
        """(L + √λ/π I) ⊗ (R + π√λ I) per block (needs the factors' eigenvalues and λ > 0)."""
        if not damping > 0 or any(b.eL is None or b.eR is None for b in self.blocks):
            raise InfogeomError("pi_correction needs a K-FAC operator and a positive damping")
        return self.with_grid(lambda b: pi_damped_grid(b.eL, b.eR, damping))

    def solve(self, b, damping: float = 0.0, tol: float = 1e-6, maxiter: int | None = None, x0=None,
              reduce=None, pi_correction: bool = False):
        """Exact ``(A + λI)^{-1} b`` in the eigenbasis; ``pi_correction``: invert the π-corrected damped
        factors instead (module doc). ``tol``/``maxiter``/``x0``/``reduce`` are not needed."""
        if pi_correction:
            return self.pi_damped(damping).solve(b)
        return super().solve(b, damping, tol, maxiter, x0, reduce)

    def _solve(self, B, damping, tol, maxiter, x0, reduce):
        return self.apply(B, lambda blk: 1.0 / (blk.grid + damping))
