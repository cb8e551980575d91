"""EK-FAC-style optimizer: Adam's second moment in the eigenbasis of the K-FAC factors (SOAP-like).

With the K-FAC eigenbases Q_L, Q_R of a layer (:mod:`.kronecker`; Fisher factors, refreshed every
``inv_every`` steps) and gradient matrix X, at update t:

    Y = Q_Lᵀ X Q_R,   m ← β₁ m + (1−β₁) Y,   v ← β₂ v + (1−β₂) Y^{∘2}     (both moments in the eigenbasis)
    Δ = Q_L [ (m̃ / (1−β₁ᵗ)) ⊘ (√(v / (1−β₂ᵗ)) + ε) ] Q_Rᵀ,    θ ← θ(1 − η·wd) − η Δ,

with m̃ = β₁ m + (1−β₁) Y (Nesterov look-ahead, ``nesterov=True``, the default) or m̃ = m. v is a diagonal
rescaling in the Kronecker eigenbasis (George et al. 2018), estimated Adam-style from the batch gradients.
When the bases are refreshed, m is re-expressed in the new basis and v is kept (as in SOAP). SOAP (Vyas et
al. 2024) is the same update in the eigenbasis of gradient outer products (Shampoo factors); here the basis
is that of the Kronecker factors (by default the empirical ones from the training backward, refreshed often:
in our measurements fresh factors mattered more than sampled-label ones). ε plays the role of the damping
(raised when a step is skipped). Cost per step: four small matmuls per layer (two rotations).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..operators import from_eigenbasis, to_eigenbasis
from .kronecker import KroneckerCore, KroneckerOptimizer, select_layers
from .preconditioner import ema_factor
from .registry import register_optimizer
from .step import decoupled_update_


class EKFACCore(KroneckerCore):
    label = "ekfac"

    def _basis_changed(self, layer, old, new) -> None:
        st = self.state[layer.weight]
        if "exp_avg" in st:  # re-express the first moment in the new eigenbasis
            st["exp_avg"] = to_eigenbasis(from_eigenbasis(st["exp_avg"], *old), *new)

    def _apply(self) -> None:
        b1, b2 = self.defaults["betas"]
        t = self.steps + 1
        eps = self.step_damping
        lrs = self.lr_of()
        wds = {id(p): g["weight_decay"] for g in self.param_groups for p in g["params"]}
        for layer in self.layers:
            _, _, QL, QR = self.eigenbasis(layer)
            Y = to_eigenbasis(layer.grad_matrix(), QL, QR)
            st = self.state[layer.weight]
            if "exp_avg" not in st:
                st["exp_avg"], st["exp_avg_sq"] = Y.new_zeros(Y.shape), Y.new_zeros(Y.shape)
            m, v = st["exp_avg"], st["exp_avg_sq"]
            m.lerp_(Y, 1 - b1)
            v.mul_(b2).addcmul_(Y, Y, value=1 - b2)
            first = m.lerp(Y, 1 - b1) if self.defaults["nesterov"] else m  # Nesterov: look one step ahead
            step = (first / (1 - b1 ** t)).div_((v / (1 - b2 ** t)).sqrt_().add_(eps))
            lr = lrs[id(layer.weight)]
            for p, u in zip(layer.params, layer.split(from_eigenbasis(step, QL, QR))):
                decoupled_update_(p, u, lr, wds[id(p)])

    def _grid(self, layer) -> torch.Tensor:
        """P = Q diag((1 − β₁ᵗ)(√(v/(1 − β₂ᵗ)) + ε)) Qᵀ: the update is −η P⁻¹ m̃ (raw-space first moment)."""
        b1, b2 = self.defaults["betas"]
        t = self.steps
        v = self.state[layer.weight]["exp_avg_sq"]
        return (1 - b1 ** t) * ((v / (1 - b2 ** t)).sqrt() + self.step_damping)

    def _stability(self) -> tuple[float, str]:
        """EMA momentum β₁, with the Nesterov look-ahead by default: c = ema_factor(β₁, nesterov)."""
        b1 = self.defaults["betas"][0]
        nesterov = self.defaults["nesterov"]
        return ema_factor(b1, nesterov), "ekfac-nesterov" if nesterov else "ekfac"


@register_optimizer("ekfac")
class EKFAC(KroneckerOptimizer):
    """Adam in the K-FAC eigenbasis on the model's Linear layers, AdamW (``adamw_lr``, default ``lr``) on
    the rest. Options as :class:`~.kfac.KFAC` (factors, schedule, layer selection); ``betas``/``eps`` are
    shared with the AdamW part."""

    def __init__(self, model: nn.Module, lr: float = 1e-2, weight_decay: float = 0.0, betas=(0.9, 0.95),
                 eps: float = 1e-8, nesterov: bool = True, cov_every: int = 2, inv_every: int = 10,
                 factor_decay: float = 0.8, approx: str = "reduce", fisher: str = "empirical", mc_samples: int = 1,
                 head: bool | str = "auto", embeddings: bool = False, max_factor_dim: int = 2048,
                 max_basis_dim: int | None = None, adamw_lr: float | None = None, damping_boost: float = 10.0,
                 seed: int = 0):
        modules = select_layers(model, head, embeddings, max_factor_dim)
        core = EKFACCore(model, modules, lr, weight_decay, eps, approx, fisher, mc_samples, cov_every,
                         inv_every, factor_decay, damping_boost, seed, betas=tuple(betas),
                         nesterov=bool(nesterov), max_basis_dim=max_basis_dim)
        super().__init__(model, core, lr if adamw_lr is None else adamw_lr, weight_decay, betas, eps,
                         (head, embeddings, max_factor_dim))

