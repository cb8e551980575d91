"""Baseline: ``torch.optim.Muon`` on the hidden weight matrices, AdamW on everything else (modded-nanogpt
recipe).

Muon orthogonalizes the Nesterov momentum of each hidden matrix with a quintic Newton–Schulz iteration
(O ~ U Vᵀ of the momentum's SVD, ≈ 5 matmuls of the matrix size per step). Embeddings, the LM head, norms and
biases are not "hidden matrices" and get AdamW. With ``adjust_lr_fn="match_rms_adamw"`` (Moonshot's scaling,
lr·0.2·√max(m, n)) one learning rate serves both parts; ``muon_lr`` overrides the Muon part's rate.
``ns_dtype``: torch runs Newton–Schulz in bfloat16 (the default here too); ``"float32"`` runs the same step
with it in float32 (:class:`FloatNSMuon`), ≈ 15× cheaper on CPUs without native bfloat16 matmuls.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.optim._muon import _adjust_lr  # the lr scale torch applies; private but part of the step

from ..errors import InfogeomError
from .hybrid import HybridOptimizer
from .params import HEAD_NAMES, adamw_groups, linear_layers
from .polar import newton_schulz
from .polar import ns_dtype as ns_dtype_of
from .registry import register_optimizer
from .step import closure_loss


class FloatNSMuon(torch.optim.Muon):
    """torch.optim.Muon (same state, groups and update) with Newton–Schulz run in ``ns_dtype``."""

    def __init__(self, params, ns_dtype: torch.dtype, **options):
        super().__init__(params, **options)
        self.ns_dtype = ns_dtype

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure_loss(closure)
        for group in self.param_groups:
            params, grads, bufs = [], [], []
            self._init_group(group, params, grads, bufs)
            mu, lr = group["momentum"], group["lr"]
            for p, g, buf in zip(params, grads, bufs):
                buf.lerp_(g, 1 - mu)
                u = g.lerp(buf, mu) if group["nesterov"] else buf
                u = newton_schulz(u, group["ns_steps"], group["ns_coefficients"], group["eps"], self.ns_dtype)
                p.mul_(1 - lr * group["weight_decay"])
                p.add_(u, alpha=-_adjust_lr(lr, group["adjust_lr_fn"], p.shape))
        return loss


@register_optimizer("muon")
class MuonAdamW(HybridOptimizer):
    """One optimizer: Muon on ``linear_layers(model)`` weights (no head, no tied/embedding weights), AdamW on
    the rest (weight decay on the remaining matrices only)."""

    def __init__(self, model: nn.Module, lr: float = 1e-3, weight_decay: float = 0.0,
                 muon_lr: float | None = None,
                 momentum: float = 0.95, nesterov: bool = True, ns_steps: int = 5,
                 adjust_lr_fn: str = "match_rms_adamw", betas=(0.9, 0.95), eps: float = 1e-8,
                 ns_dtype: str | None = "bfloat16", head_names=HEAD_NAMES):
        hidden = [m.weight for m in linear_layers(model, head_names=head_names).values()]
        if not hidden:
            raise InfogeomError("muon: the model has no hidden nn.Linear weight matrices")
        options = dict(lr=lr if muon_lr is None else muon_lr, weight_decay=weight_decay, momentum=momentum,
                       nesterov=nesterov, ns_steps=ns_steps, adjust_lr_fn=adjust_lr_fn)
        dtype = ns_dtype_of(ns_dtype)
        muon = (torch.optim.Muon(hidden, **options) if dtype == torch.bfloat16
                else FloatNSMuon(hidden, dtype, **options))
        adamw = torch.optim.AdamW(adamw_groups(model, hidden, weight_decay), lr=lr, betas=tuple(betas),
                                  eps=eps)
        super().__init__([muon, adamw])

