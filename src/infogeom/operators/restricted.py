"""Sub-blocks of an operator: the principal block on a subset of flat coordinates or of named parameters."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import InfogeomError
from .base import CurvatureOperator


class RestrictedOperator(CurvatureOperator):
    """The principal sub-block A_SS = E_Sᵀ A E_S of ``op`` on the flat coordinates ``index [p]`` (E_S embeds a
    [p] vector into [P] with zeros elsewhere). Any operator works; each product costs one product of ``op``.
    The result is a single flat block named ``name``."""

    def __init__(self, op: CurvatureOperator, index: torch.Tensor, name: str = "block"):
        index = torch.as_tensor(index, dtype=torch.long, device=op.device)
        if index.numel() == 0:
            raise InfogeomError(f"block {name!r} is empty")
        if int(index.min()) < 0 or int(index.max()) >= op.dim:
            raise InfogeomError(f"block {name!r} indexes outside the operator's {op.dim} coordinates")
        self.op, self.index = op, index
        self.names, self.shapes = [name], [torch.Size([index.numel()])]
        self.dtype, self.device = op.dtype, op.device

    def _embed(self, V: torch.Tensor) -> torch.Tensor:
        full = torch.zeros(self.op.dim, V.shape[1], dtype=self.dtype, device=self.device)
        full[self.index] = V
        return full

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        return self.op.matmat(self._embed(V))[self.index]

    def _sketch(self, V: torch.Tensor) -> torch.Tensor:
        return self.op.sketch(self._embed(V))[self.index]

    def _quadratic_forms(self, V: torch.Tensor, symmetric: bool = False) -> torch.Tensor:
        return self.op.quadratic_forms(self._embed(V), symmetric)  # vᵀA_SSv = (E_S v)ᵀ A (E_S v)


def parameter_index(op: CurvatureOperator, names: Sequence[str]) -> torch.Tensor:
    """Flat coordinates of whole parameter tensors ``names`` in ``op``'s flat vector."""
    offsets, start = {}, 0
    for n, s in zip(op.names, op.shapes):
        offsets[n] = (start, start + torch.Size(s).numel())
        start = offsets[n][1]
    missing = [n for n in names if n not in offsets]
    if missing:
        raise InfogeomError(f"operator has no parameter(s) {', '.join(missing)}")
    return torch.cat([torch.arange(*offsets[n]) for n in names])


def restrict(op: CurvatureOperator, names: Sequence[str]) -> CurvatureOperator:
    """``op`` restricted to the parameter tensors ``names`` (keeps their names and shapes)."""
    sub = RestrictedOperator(op, parameter_index(op, names), "+".join(names))
    sub.names = list(names)
    sub.shapes = [op.shapes[op.names.index(n)] for n in names]
    return sub
