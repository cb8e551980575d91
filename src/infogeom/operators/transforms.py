"""Small composable transforms of an operator: a damped copy A + λI, a scaled copy c·A and a counted copy (A
itself, counting its products for progress bars).

Both keep the wrapped operator's exact solve when it has one: (A + λI + δI)^{-1} = A.solve(·, λ + δ) and
(cA + δI)^{-1} b = A.solve(b, δ/c)/c. Used for the preconditioners of NGCG (F + λI), QNG (G + λI) and for
rescaling a hybrid optimizer's parts to one learning rate.
"""

from __future__ import annotations

import torch

from ..errors import InfogeomError
from .base import CurvatureOperator


class DampedOperator(CurvatureOperator):
    """``A + λI`` for an operator ``A`` and λ = ``damping`` ≥ 0."""

    def __init__(self, op: CurvatureOperator, damping: float):
        if not damping >= 0:
            raise InfogeomError(f"damping must be non-negative, got {damping}")
        self.op, self.damping = op, float(damping)
        self.names, self.shapes, self.dtype, self.device = op.names, op.shapes, op.dtype, op.device

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        return self.op.matmat(V) + self.damping * V

    def diagonal(self, num_probes: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.op.diagonal(num_probes, generator) + self.damping

    def trace(self) -> torch.Tensor:
        return self.op.trace() + self.damping * self.dim

    def to_dense(self, chunk: int = 256, force: bool = False) -> torch.Tensor:
        A = self.op.to_dense(chunk, force)
        return A + self.damping * torch.eye(self.dim, dtype=A.dtype, device=A.device)

    def _solve(self, B, damping, tol, maxiter, x0, reduce):
        return self.op.solve(B, self.damping + damping, tol, maxiter, x0, reduce)

    def _sketch(self, V: torch.Tensor) -> torch.Tensor:
        return self.op.sketch(V) + self.damping * V

    def _quadratic_forms(self, V: torch.Tensor, symmetric: bool = False) -> torch.Tensor:
        return self.op.quadratic_forms(V, symmetric) + self.damping * V.square().sum(0)


class ScaledOperator(CurvatureOperator):
    """``c·A`` for an operator ``A`` and a scale c > 0."""

    def __init__(self, op: CurvatureOperator, scale: float):
        if not scale > 0:
            raise InfogeomError(f"scale must be positive, got {scale}")
        self.op, self.scale = op, float(scale)
        self.names, self.shapes, self.dtype, self.device = op.names, op.shapes, op.dtype, op.device

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        return self.scale * self.op.matmat(V)

    def diagonal(self, num_probes: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.scale * self.op.diagonal(num_probes, generator)

    def trace(self) -> torch.Tensor:
        return self.scale * self.op.trace()

    def to_dense(self, chunk: int = 256, force: bool = False) -> torch.Tensor:
        return self.scale * self.op.to_dense(chunk, force)

    def _solve(self, B, damping, tol, maxiter, x0, reduce):
        x0 = None if x0 is None else self.scale * x0
        return self.op.solve(B, damping / self.scale, tol, maxiter, x0, reduce) / self.scale

    def _sketch(self, V: torch.Tensor) -> torch.Tensor:
        return self.scale * self.op.sketch(V)

    def _quadratic_forms(self, V: torch.Tensor, symmetric: bool = False) -> torch.Tensor:
        return self.scale * self.op.quadratic_forms(V, symmetric)


class CountedOperator(CurvatureOperator):
    """``op`` unchanged, counting its products (``products``: columns multiplied; ``forms``: quadratic forms;
    ``sketches``: :meth:`sketch` columns) and advancing an optional progress bar (anything with ``update(n)``,
    e.g. tqdm) by the columns of each."""

    def __init__(self, op: CurvatureOperator, bar=None):
        self.op, self.bar, self.products, self.forms, self.sketches = op, bar, 0, 0, 0
        self.names, self.shapes, self.dtype, self.device = op.names, op.shapes, op.dtype, op.device

    def _tally(self, counter: str, out: torch.Tensor, columns: int) -> torch.Tensor:
        setattr(self, counter, getattr(self, counter) + columns)
        if self.bar is not None:
            self.bar.update(columns)
        return out

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        return self._tally("products", self.op.matmat(V), V.shape[1])

    def _sketch(self, V: torch.Tensor) -> torch.Tensor:
        return self._tally("sketches", self.op.sketch(V), V.shape[1])

    def _quadratic_forms(self, V: torch.Tensor, symmetric: bool = False) -> torch.Tensor:
        return self._tally("forms", self.op.quadratic_forms(V, symmetric), V.shape[1])
