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
from ..operators import BlockDiagonalOperator, CurvatureOperator, DenseOperator
from .circuit import Circuit
from .geometry import classical_fisher, fubini_study_metric

KINDS = ("fubini-study", "qfi", "classical")


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
