"""Quantum metrics behind the common :class:`~infogeom.geometry.CurvatureOperator` interface.

:func:`circuit_metric_operator` averages a circuit metric over a batch of classical inputs,
E_x g(θ; x) — the metric of a data-dependent (angle-embedding) circuit — and returns a
:class:`~infogeom.geometry.DenseOperator`, or a :class:`BlockDiagonalOperator` for ``approx="block-diag"``
(exact per-block solves).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import InfogeomError
from ..geometry.operator import CurvatureOperator, DenseOperator, unflatten
from .circuit import Circuit
from .geometry import classical_fisher, fubini_study_metric

KINDS = ("fubini-study", "qfi", "classical")


class BlockDiagonalOperator(CurvatureOperator):
    """A = ⊕_b A_b: block ``A_b [n_b, n_b]`` acts on the flat coordinates ``index[b]`` (blocks may be any
    disjoint index sets covering 0..P−1). ``solve`` is exact per block: O(Σ n_b³)."""

    def __init__(self, blocks: Sequence[torch.Tensor], index: Sequence[Sequence[int]],
                 shapes: Sequence[torch.Size] | None = None, names: Sequence[str] | None = None):
        flat = sorted(i for idx in index for i in idx)
        if flat != list(range(len(flat))):
            raise InfogeomError("block indices must be disjoint and cover 0..P-1")
        if any(b.shape != (len(i), len(i)) for b, i in zip(blocks, index)):
            raise InfogeomError("each block must be square with one row per index")
        self.blocks = list(blocks)
        self.index = [torch.as_tensor(list(i), dtype=torch.long, device=blocks[0].device) for i in index]
        P = len(flat)
        self.shapes = list(shapes) if shapes is not None else [torch.Size([P])]
        self.names = list(names) if names is not None else [f"p{i}" for i in range(len(self.shapes))]
        self.dtype, self.device = blocks[0].dtype, blocks[0].device
        if self.dim != P:
            raise InfogeomError(f"shapes add up to {self.dim} entries but the blocks cover {P}")

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(V)
        for A, idx in zip(self.blocks, self.index):
            out[idx] = A @ V[idx]
        return out

    def to_dense(self, chunk: int = 256, force: bool = False) -> torch.Tensor:
        out = torch.zeros(self.dim, self.dim, dtype=self.dtype, device=self.device)
        for A, idx in zip(self.blocks, self.index):
            out[idx[:, None], idx[None, :]] = A
        return out

    def diagonal(self, num_probes: int | None = None, generator: torch.Generator | None = None
                 ) -> torch.Tensor:
        if num_probes is not None:
            return super().diagonal(num_probes, generator)
        out = torch.zeros(self.dim, dtype=self.dtype, device=self.device)
        for A, idx in zip(self.blocks, self.index):
            out[idx] = A.diagonal()
        return out

    def solve(self, b, damping: float = 0.0, tol: float = 1e-6, maxiter: int | None = None):
        """Exact (A + λI)^{-1} b block by block."""
        if not isinstance(b, torch.Tensor):
            return unflatten(self.solve(torch.cat([t.reshape(-1) for t in b]), damping), self.shapes)
        b = b.to(self.dtype)
        out = torch.zeros_like(b)
        for A, idx in zip(self.blocks, self.index):
            eye = torch.eye(len(idx), dtype=self.dtype, device=self.device)
            out[idx] = torch.linalg.solve(A + damping * eye, b[idx])
        return out


def circuit_metric(circuit: Circuit, params: torch.Tensor, inputs: torch.Tensor | None = None,
                   kind: str = "fubini-study", approx: str | None = None) -> torch.Tensor:
    """Metric ``[P, P]`` at one parameter point ``params [P]``, averaged over inputs ``[N, F]`` if batched:
    Fubini–Study g, QFI 4g, or the classical Fisher of computational-basis outcomes."""
    if kind not in KINDS:
        raise InfogeomError(f"metric kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if params.ndim != 1:
        raise InfogeomError(f"expected one parameter point [P], got shape {tuple(params.shape)}")
    if kind == "classical":
        if approx is not None:
            raise InfogeomError("approx applies to the Fubini-Study metric and the QFI only")
        G = classical_fisher(circuit, params, inputs)
    else:
        G = fubini_study_metric(circuit, params, inputs, approx) * (4 if kind == "qfi" else 1)
    return G.mean(0) if G.ndim == 3 else G


def circuit_metric_operator(circuit: Circuit, params: torch.Tensor, inputs: torch.Tensor | None = None,
                            kind: str = "fubini-study", approx: str | None = None,
                            shapes: Sequence[torch.Size] | None = None, names: Sequence[str] | None = None
                            ) -> CurvatureOperator:
    """:func:`circuit_metric` as a CurvatureOperator; block-diagonal when ``approx="block-diag"`` and no
    parameter is shared between layers."""
    G = circuit_metric(circuit, params, inputs, kind, approx)
    shapes = shapes if shapes is not None else [torch.Size([circuit.n_params])]
    names = names if names is not None else ["theta"]
    if approx == "block-diag":
        op_params = circuit.op_params()
        blocks = [sorted({op_params[g] for g in layer}) for layer in circuit.layers()]
        untouched = sorted(set(range(circuit.n_params)) - set(op_params))
        blocks += [[k] for k in untouched]
        if sum(len(b) for b in blocks) == circuit.n_params:  # each parameter in exactly one layer
            return BlockDiagonalOperator([G[b][:, b] for b in blocks], blocks, shapes, names)
    return DenseOperator(G, shapes, names)
