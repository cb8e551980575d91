"""Diagonal and low-rank operators: diag(d) (an adaptive optimizer's preconditioner, a Fisher diagonal, the
identity) and U diag(μ) Uᵀ (top-k eigenpairs)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import InfogeomError
from .base import CurvatureOperator


def _layout(n: int, names: Sequence[str] | None, shapes: Sequence[torch.Size] | None
            ) -> tuple[list[str], list[torch.Size]]:
    shapes = list(shapes) if shapes is not None else [torch.Size([n])]
    names = list(names) if names is not None else [f"p{i}" for i in range(len(shapes))]
    if sum(torch.Size(s).numel() for s in shapes) != n:
        raise InfogeomError(f"shapes add up to {sum(torch.Size(s).numel() for s in shapes)} entries, expected {n}")
    return names, shapes


class DiagonalOperator(CurvatureOperator):
    """``diag(d)`` for ``d [P]`` with exact diagonal, trace and solve ``b / (d + λ)``."""

    def __init__(self, values: torch.Tensor, names: Sequence[str] | None = None,
                 shapes: Sequence[torch.Size] | None = None):
        if values.ndim != 1:
            raise InfogeomError(f"DiagonalOperator needs a flat [P] tensor, got shape {tuple(values.shape)}")
        self.values = values
        self.names, self.shapes = _layout(values.numel(), names, shapes)
        self.dtype, self.device = values.dtype, values.device

    @classmethod
    def identity(cls, names: Sequence[str], shapes: Sequence[torch.Size], dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu") -> DiagonalOperator:
        """The identity on parameters ``names``/``shapes`` (plain gradient descent's metric)."""
        n = sum(torch.Size(s).numel() for s in shapes)
        return cls(torch.ones(n, dtype=dtype, device=device), names, shapes)

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        return self.values[:, None] * V

    def diagonal(self, num_probes: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.values

    def trace(self) -> torch.Tensor:
        return self.values.sum()

    def _solve(self, B, damping, tol, maxiter, x0, reduce):
        return B / (self.values + damping)[:, None]


class LowRankOperator(CurvatureOperator):
    """``U diag(μ) Uᵀ`` with orthonormal ``U [P, k]``; Woodbury solve (b − U diag(μ/(μ+λ)) Uᵀ b)/λ for λ > 0."""

    def __init__(self, U: torch.Tensor, eigenvalues: torch.Tensor, names: Sequence[str] | None = None,
                 shapes: Sequence[torch.Size] | None = None):
        self.U, self.eigenvalues = U, eigenvalues
        self.names, self.shapes = _layout(U.shape[0], names, shapes)
        self.dtype, self.device = U.dtype, U.device

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        return self.U @ (self.eigenvalues[:, None] * (self.U.T @ V))

    def diagonal(self, num_probes: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        return (self.U.square() * self.eigenvalues).sum(dim=1)

    def _solve(self, B, damping, tol, maxiter, x0, reduce):
        if damping <= 0:
            raise InfogeomError("a low-rank operator is singular: solve needs a positive damping")
        shrink = self.eigenvalues / (self.eigenvalues + damping)
        return (B - self.U @ (shrink[:, None] * (self.U.T @ B))) / damping
