"""Baseline: ``torch.optim.Muon`` on the hidden weight matrices, AdamW on everything else (modded-nanogpt
recipe).

Muon orthogonalizes the Nesterov momentum of each hidden matrix with a quintic Newton–Schulz iteration
(O ~ U Vᵀ of the momentum's SVD, ≈ 5 matmuls of the matrix size per step). Embeddings, the LM head, norms and
biases are not "hidden matrices" and get AdamW. With ``adjust_lr_fn="match_rms_adamw"`` (Moonshot's scaling,
lr·0.2·√max(m, n)) one learning rate serves both parts; ``muon_lr`` overrides the Muon part's rate.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import InfogeomError
from .hybrid import HybridOptimizer
from .params import HEAD_NAMES, adamw_groups, linear_layers
from .registry import register_optimizer


@register_optimizer("muon")
class MuonAdamW(HybridOptimizer):
    """One optimizer: Muon on ``linear_layers(model)`` weights (no head, no tied/embedding weights), AdamW on
    the rest (weight decay on the remaining matrices only)."""

    def __init__(self, model: nn.Module, lr: float = 1e-3, weight_decay: float = 0.0,
                 muon_lr: float | None = None,
                 momentum: float = 0.95, nesterov: bool = True, ns_steps: int = 5,
                 adjust_lr_fn: str = "match_rms_adamw", betas=(0.9, 0.95), eps: float = 1e-8,
                 head_names=HEAD_NAMES):
        hidden = [m.weight for m in linear_layers(model, head_names=head_names).values()]
        if not hidden:
            raise InfogeomError("muon: the model has no hidden nn.Linear weight matrices")
        muon = torch.optim.Muon(hidden, lr=lr if muon_lr is None else muon_lr, weight_decay=weight_decay,
                                momentum=momentum, nesterov=nesterov, ns_steps=ns_steps,
                                adjust_lr_fn=adjust_lr_fn)
        adamw = torch.optim.AdamW(adamw_groups(model, hidden, weight_decay), lr=lr, betas=tuple(betas),
                                  eps=eps)
        super().__init__([muon, adamw])

