"""K-FAC natural-gradient optimizer (Martens & Grosse 2015) for transformer language models.

For each preconditioned layer (gradient matrix X, Fisher block L ⊗ R, see :mod:`.kronecker`) with eigenbases
L = Q_L diag(e_L) Q_Lᵀ, R = Q_R diag(e_R) Q_Rᵀ the direction is

    Δ = Q_L [ (Q_Lᵀ X Q_R) ⊘ D ] Q_Rᵀ,
    D_ij = (e_L,i + √λ/π)(e_R,j + π√λ)     (``damping_mode="pi"``: π-corrected factored Tikhonov damping), or
    D_ij = e_L,i e_R,j + λ                  (``damping_mode="exact"``: exactly (L ⊗ R + λI)^{-1} X).

KL clipping (trust region): with η the layer's learning rate and the K-FAC quadratic form
ΔᵀF̂Δ = Σ_ij e_L,i e_R,j (Q_Lᵀ Δ Q_R)_ij², all directions are scaled by ν = min(1, √(κ / Σ_layers η² ΔᵀF̂Δ)),
κ = ``kl_clip`` (None disables), so the predicted KL ½η²ΔᵀF̂Δ of the step stays ≤ κ/2. Then heavy-ball
momentum b ← μ b + ν Δ and θ ← θ(1 − η·wd) − η b (decoupled weight decay). Per step: two small matmuls per
side per layer; eigendecompositions every ``inv_every`` steps, factors every ``cov_every`` steps
(:mod:`.kronecker`).
"""

from __future__ import annotations

import math

import torch.nn as nn

from ..errors import InfogeomError
from .kronecker import (
    KroneckerCore,
    KroneckerOptimizer,
    from_eigenbasis,
    pi_correction,
    select_layers,
    to_eigenbasis,
)
from .registry import register_optimizer

DAMPING_MODES = ("pi", "exact")


class KFACCore(KroneckerCore):
    def _apply(self) -> None:
        d, lam = self.defaults, self.damping
        lrs = self.lr_of()
        directions, quad = [], 0.0
        for layer in self.layers:
            eL, eR, QL, QR = self.eigenbasis(layer)
            Y = to_eigenbasis(layer.grad_matrix(), QL, QR)
            if d["damping_mode"] == "pi":
                pi = pi_correction(eL, eR)
                D = (eL + math.sqrt(lam) / pi)[:, None] * (eR + pi * math.sqrt(lam))[None, :]
            else:
                D = eL[:, None] * eR[None, :] + lam
            Y = Y / D
            directions.append(Y)
            if d["kl_clip"] is not None:
                quad += lrs[id(layer.weight)] ** 2 * float((eL[:, None] * eR[None, :] * Y.square()).sum())
        nu = min(1.0, math.sqrt(d["kl_clip"] / quad)) if d["kl_clip"] is not None and quad > 0 else 1.0
        wds = {id(p): g["weight_decay"] for g in self.param_groups for p in g["params"]}
        for layer, Y in zip(self.layers, directions):
            _, _, QL, QR = self.eigenbasis(layer)
            delta = from_eigenbasis(Y, QL, QR) * nu
            st = self.state[layer.weight]
            if d["momentum"]:
                buf = st.get("momentum")
                st["momentum"] = buf = delta if buf is None else buf.mul_(d["momentum"]).add_(delta)
                delta = buf
            lr = lrs[id(layer.weight)]
            for p, u in zip(layer.params, layer.split(delta)):
                p.mul_(1 - lr * wds[id(p)]).add_(u, alpha=-lr)


class KFAC(KroneckerOptimizer):
    """K-FAC on the model's Linear layers (see module doc), AdamW (``adamw_lr``) on everything else.

    ``approx``: ``"reduce"`` (default, cheap: factors from sequence sums) or ``"expand"`` (every token an
    example); ``fisher``: ``"mc"`` (labels sampled from the model, default), ``"empirical"`` or ``"exact"`` (V
    backward passes; tests). ``head``: precondition the LM head (``"auto"``: only when untied);
    ``embeddings``: also the untied embeddings (diagonal A); layers wider than ``max_factor_dim`` stay with
    AdamW.
    """

    def __init__(self, model: nn.Module, lr: float = 0.1, weight_decay: float = 0.0, damping: float = 1e-3,
                 damping_mode: str = "pi", kl_clip: float | None = 1e-3, momentum: float = 0.9,
                 cov_every: int = 10, inv_every: int = 50, factor_decay: float = 0.95, approx: str = "reduce",
                 fisher: str = "mc", mc_samples: int = 1, head: bool | str = "auto", embeddings: bool = False,
                 max_factor_dim: int = 2048, adamw_lr: float = 3e-3, betas=(0.9, 0.95), eps: float = 1e-8,
                 damping_boost: float = 10.0, seed: int = 0):
        if damping_mode not in DAMPING_MODES:
            raise InfogeomError(f"unknown damping_mode {damping_mode!r}; "
                                f"choose one of {', '.join(DAMPING_MODES)}")
        if kl_clip is not None and not kl_clip > 0:
            raise InfogeomError(f"kl_clip must be positive or None, got {kl_clip}")
        modules = select_layers(model, head, embeddings, max_factor_dim)
        core = KFACCore(model, modules, lr, weight_decay, damping, approx, fisher, mc_samples, cov_every,
                        inv_every, factor_decay, damping_boost, seed, damping_mode=damping_mode,
                        kl_clip=kl_clip, momentum=momentum)
        super().__init__(model, core, adamw_lr, weight_decay, betas, eps)


@register_optimizer("kfac")
def _kfac(model: nn.Module, lr: float, weight_decay: float, **options) -> KFAC:
    return KFAC(model, lr=lr, weight_decay=weight_decay, **options)
