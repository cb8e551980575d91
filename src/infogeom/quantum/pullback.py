"""Pull-back metric of a model's output distribution onto (circuit) parameters.

For outputs z(θ) (logits) and a categorical (softmax) or Bernoulli (sigmoid) output distribution,

    G = (1/N) Σ_n J_nᵀ F_out(z_n) J_n,   J_n = ∂z_n/∂θ,
    F_out = diag(p) − p pᵀ (softmax)  or  p(1 − p) (sigmoid),

the Fisher information of the model's predictions restricted to θ (= the GGN of the cross-entropy). For a
hybrid model "circuit → linear readout W" it is G = (1/N) Σ_n (W J^Z_n)ᵀ F_out (W J^Z_n) with J^Z = ∂⟨Z⟩/∂θ —
the metric the author of arXiv 2506.15830 found to help where the raw Fubini–Study metric of the circuit hurt.
Cost: P forward-mode passes of the model (``torch.func.jacfwd``) plus O(N K P²).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.func import jacfwd

from ..errors import InfogeomError

OUTPUTS = ("softmax", "sigmoid")


def output_fisher_pullback(logits: torch.Tensor, J: torch.Tensor, output: str = "softmax") -> torch.Tensor:
    """G ``[P, P]`` from logits ``[..., K]`` (softmax) or ``[...]`` (sigmoid) and J ``[..., K, P]`` / ``[...,
    P]``."""
    if output == "softmax":
        p = logits.softmax(-1).reshape(-1, logits.shape[-1])
        J = J.reshape(-1, logits.shape[-1], J.shape[-1])
        pJ = torch.einsum("nk,nkp->np", p, J)
        G = torch.einsum("nkp,nk,nkq->pq", J, p, J) - pJ.T @ pJ
        return G / p.shape[0]
    if output == "sigmoid":
        p = torch.sigmoid(logits).reshape(-1)
        J = J.reshape(-1, J.shape[-1])
        return (J * (p * (1 - p))[:, None]).T @ J / p.shape[0]
    raise InfogeomError(f"output must be one of {', '.join(OUTPUTS)}, got {output!r}")


def pullback_metric(output_fn: Callable[[torch.Tensor], torch.Tensor], params: torch.Tensor,
                    output: str = "softmax") -> torch.Tensor:
    """G = (1/N) Σ_n J_nᵀ F_out J_n ``[P, P]`` for ``output_fn(params [P]) -> logits [..., K]`` (softmax over
    the last axis) or ``[...]`` (sigmoid), J by forward-mode autodiff."""
    if output not in OUTPUTS:
        raise InfogeomError(f"output must be one of {', '.join(OUTPUTS)}, got {output!r}")
    theta = params.detach()
    with torch.no_grad():
        logits = output_fn(theta)
    J = jacfwd(output_fn)(theta)
    return output_fisher_pullback(logits.detach(), J.detach(), output)
