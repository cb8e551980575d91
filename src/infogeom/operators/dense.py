"""Operators held as explicit matrices: a dense symmetric matrix, and a block-diagonal sum of operators."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import InfogeomError
from .base import CurvatureOperator


class DenseOperator(CurvatureOperator):
    """A given symmetric matrix ``[P, P]`` as an operator (tests, small models, quantum metrics); exact solve by
    ``torch.linalg.solve`` (O(P³))."""

    def __init__(self, matrix: torch.Tensor, shapes: Sequence[torch.Size] | None = None,
                 names: Sequence[str] | None = None):
        if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
            raise InfogeomError(f"DenseOperator needs a square matrix, got {tuple(matrix.shape)}")
        self.matrix = matrix
        self.shapes = list(shapes) if shapes is not None else [torch.Size([matrix.shape[0]])]
        self.names = list(names) if names is not None else [f"p{i}" for i in range(len(self.shapes))]
        self.dtype, self.device = matrix.dtype, matrix.device
        if self.dim != matrix.shape[0]:
            n = matrix.shape[0]
            raise InfogeomError(f"shapes add up to {self.dim} entries but the matrix is {n}x{n}")

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        return self.matrix @ V

    def to_dense(self, chunk: int = 256, force: bool = False) -> torch.Tensor:
        return self.matrix

    def diagonal(self, num_probes: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.matrix.diagonal() if num_probes is None else super().diagonal(num_probes, generator)

    def _solve(self, B, damping, tol, maxiter, x0, reduce):
        eye = torch.eye(self.dim, dtype=self.dtype, device=self.device)
        return torch.linalg.solve(self.matrix + damping * eye, B)


class BlockDiagonalOperator(CurvatureOperator):
    """A = ⊕_b A_b: block ``A_b`` (an operator, or a square tensor taken as a :class:`DenseOperator`) acts on the
    flat coordinates ``index[b]``; the index sets are disjoint and cover 0..P−1. Products, diagonal, trace and
    ``solve`` (exact whenever each block's is: O(Σ n_b³) for dense blocks) go block by block.

    :meth:`by_names` assembles operators on disjoint sets of named parameters into one operator on ``names`` (in
    that order): how a hybrid optimizer's preconditioner is put together from its parts'.
    """

    def __init__(self, blocks: Sequence[CurvatureOperator | torch.Tensor], index: Sequence[Sequence[int]],
                 shapes: Sequence[torch.Size] | None = None, names: Sequence[str] | None = None):
        ops = [b if isinstance(b, CurvatureOperator) else DenseOperator(b) for b in blocks]
        index = [torch.as_tensor(i, dtype=torch.long) if not isinstance(i, torch.Tensor) else i.long()
                 for i in index]
        flat = sorted(int(i) for idx in index for i in idx)
        if flat != list(range(len(flat))):
            raise InfogeomError("block indices must be disjoint and cover 0..P-1")
        if any(op.dim != len(i) for op, i in zip(ops, index)):
            raise InfogeomError("each block must be square with one row per index")
        self.blocks = ops
        self.index = [i.to(ops[0].device) for i in index]
        P = len(flat)
        self.shapes = list(shapes) if shapes is not None else [torch.Size([P])]
        self.names = list(names) if names is not None else [f"p{i}" for i in range(len(self.shapes))]
        self.dtype, self.device = ops[0].dtype, ops[0].device
        if self.dim != P:
            raise InfogeomError(f"shapes add up to {self.dim} entries but the blocks cover {P}")

    @classmethod
    def by_names(cls, ops: Sequence[CurvatureOperator], names: Sequence[str],
                 shapes: Sequence[torch.Size]) -> BlockDiagonalOperator:
        """The block-diagonal operator on parameters ``names`` (``shapes``) whose blocks are ``ops``, each on its
        own ``op.names``; every name must belong to exactly one block."""
        offsets, start = {}, 0
        for n, s in zip(names, shapes):
            offsets[n] = torch.arange(start, start + torch.Size(s).numel())
            start += torch.Size(s).numel()
        owners = [n for op in ops for n in op.names]
        missing = sorted(set(names) - set(owners))
        extra = sorted(set(owners) - set(names))
        if missing or extra or len(owners) != len(set(owners)):
            what = (f"no block for {', '.join(missing)}" if missing else
                    f"blocks name parameters outside the operator: {', '.join(extra)}" if extra else
                    "a parameter appears in two blocks")
            raise InfogeomError(f"cannot assemble a block-diagonal operator: {what}")
        index = [torch.cat([offsets[n] for n in op.names]) for op in ops]
        return cls(ops, index, shapes, names)

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(V)
        for op, idx in zip(self.blocks, self.index):
            out[idx] = op.matmat(V[idx]).to(out.dtype)
        return out

    def to_dense(self, chunk: int = 256, force: bool = False) -> torch.Tensor:
        if self.dim > self.max_dense and not force:
            return super().to_dense(chunk, force)
        out = torch.zeros(self.dim, self.dim, dtype=self.dtype, device=self.device)
        for op, idx in zip(self.blocks, self.index):
            out[idx[:, None], idx[None, :]] = op.to_dense(chunk, force=True).to(self.dtype)
        return out

    def diagonal(self, num_probes: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        if num_probes is not None:
            return super().diagonal(num_probes, generator)
        out = torch.zeros(self.dim, dtype=self.dtype, device=self.device)
        for op, idx in zip(self.blocks, self.index):
            out[idx] = op.diagonal().to(self.dtype)
        return out

    def trace(self) -> torch.Tensor:
        return sum(op.trace().to(self.dtype) for op in self.blocks)

    def _solve(self, B, damping, tol, maxiter, x0, reduce):
        out = torch.zeros_like(B)
        for op, idx in zip(self.blocks, self.index):
            out[idx] = op.solve(B[idx], damping, tol, maxiter, None if x0 is None else x0[idx], reduce).to(B.dtype)
        return out
