"""Operators built from other operators (restriction to a parameter subset, diagonal preconditioners) and a
factory that builds the standard metrics of a model on a batch by name.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from ..errors import InfogeomError
from ..geometry import FisherOperator, GGNOperator, HessianOperator
from ..geometry.functional import Batch
from ..geometry.operator import CurvatureOperator, flatten, unflatten

OPERATOR_KINDS = ("hessian", "ggn", "fisher", "fisher-mc", "fisher-empirical")


class RestrictedOperator(CurvatureOperator):
    """The principal sub-block A_SS = E_Sᵀ A E_S of ``op`` on the flat coordinates ``index [p]`` (E_S embeds
    a [p] vector into [P] with zeros elsewhere). Any operator works; each product costs one product of
    ``op``. The result is a single flat block named ``name``."""

    def __init__(self, op: CurvatureOperator, index: torch.Tensor, name: str = "block"):
        index = torch.as_tensor(index, dtype=torch.long, device=op.device)
        if index.numel() == 0:
            raise InfogeomError(f"block {name!r} is empty")
        if int(index.min()) < 0 or int(index.max()) >= op.dim:
            raise InfogeomError(f"block {name!r} indexes outside the operator's {op.dim} coordinates")
        self.op, self.index = op, index
        self.names, self.shapes = [name], [torch.Size([index.numel()])]
        self.dtype, self.device = op.dtype, op.device

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        full = torch.zeros(self.op.dim, V.shape[1], dtype=self.dtype, device=self.device)
        full[self.index] = V
        return self.op.matmat(full)[self.index]


class CountedOperator(CurvatureOperator):
    """``op`` unchanged, counting its products (``products``: columns multiplied) and advancing an optional
    progress bar (anything with ``update(n)``, e.g. tqdm) by the columns of each product."""

    def __init__(self, op: CurvatureOperator, bar=None):
        self.op, self.bar, self.products = op, bar, 0
        self.names, self.shapes, self.dtype, self.device = op.names, op.shapes, op.dtype, op.device

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        out = self.op.matmat(V)
        self.products += V.shape[1]
        if self.bar is not None:
            self.bar.update(V.shape[1])
        return out


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


class DiagonalOperator(CurvatureOperator):
    """diag(d) for ``d [P]`` (e.g. an adaptive optimizer's preconditioner), with exact diagonal, trace and
    solve (b / (d + λ))."""

    def __init__(
        self, d: torch.Tensor, names: Sequence[str] | None = None, shapes: Sequence[torch.Size] | None = None
    ):
        if d.ndim != 1:
            raise InfogeomError(f"DiagonalOperator needs a flat [P] tensor, got shape {tuple(d.shape)}")
        self.d = d
        self.shapes = list(shapes) if shapes is not None else [torch.Size([d.numel()])]
        self.names = list(names) if names is not None else [f"p{i}" for i in range(len(self.shapes))]
        self.dtype, self.device = d.dtype, d.device
        if self.dim != d.numel():
            raise InfogeomError(f"shapes add up to {self.dim} entries but the diagonal has {d.numel()}")

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        return self.d[:, None] * V

    def diagonal(
        self, num_probes: int | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        return self.d

    def trace(self) -> torch.Tensor:
        return self.d.sum()

    def solve(self, b, damping: float = 0.0, tol: float = 1e-6, maxiter: int | None = None):
        if not isinstance(b, torch.Tensor):
            return unflatten(self.solve(flatten(b), damping), self.shapes)
        return b.to(self.dtype) / (self.d + damping)


def build_operator(
    kind: str,
    model: nn.Module,
    batch: Batch,
    names: Sequence[str] | None = None,
    generator: torch.Generator | None = None,
) -> CurvatureOperator:
    """The curvature of the mean token loss on ``batch`` by name: 'hessian', 'ggn', 'fisher' (exact),
    'fisher-mc' (one sampled label per token from ``generator``) or 'fisher-empirical'."""
    if kind == "hessian":
        return HessianOperator(model, batch, names=names)
    if kind == "ggn":
        return GGNOperator(model, batch, names=names)
    if kind.startswith("fisher"):
        fisher_kind = {"fisher": "exact", "fisher-mc": "mc", "fisher-empirical": "empirical"}.get(kind)
        if fisher_kind is not None:
            return FisherOperator(model, batch, kind=fisher_kind, generator=generator, names=names)
    raise InfogeomError(f"unknown operator {kind!r}; choose one of {', '.join(OPERATOR_KINDS)}")
