"""K-FAC natural-gradient optimizer (Martens & Grosse 2015) for transformer language models.

For each preconditioned layer (gradient matrix X, Fisher block L ⊗ R, see :mod:`.kronecker`) with eigenbases
L = Q_L diag(e_L) Q_Lᵀ, R = Q_R diag(e_R) Q_Rᵀ the direction is

    Δ = Q_L [ (Q_Lᵀ X Q_R) ⊘ D ] Q_Rᵀ,
    D_ij = (e_L,i + √λ/π)(e_R,j + π√λ)     (``damping_mode="pi"``: π-corrected factored Tikhonov damping),
    D_ij = (e_L,i + √λ ē_L)(e_R,j + √λ ē_R) (``"relative"``: the π-corrected damping with λ measured in
                                            units of ē_L ē_R, the mean eigenvalues: dimensionless, per
                                            layer), or
    D_ij = e_L,i e_R,j + λ                  (``damping_mode="exact"``: exactly (L ⊗ R + λI)^{-1} X).

Heavy-ball momentum b ← μ b + Δ (kept in the eigenbasis, re-expressed when the bases change), then KL
clipping (trust region) of the *applied* update: with η₀ the layer's base learning rate (a scheduler's
``initial_lr``) and the K-FAC quadratic form bᵀF̂b = Σ_ij e_L,i e_R,j (Q_Lᵀ b Q_R)_ij², every buffer is scaled
by ν = min(1, √(κ / Σ_layers η₀² bᵀF̂b)), κ = ``kl_clip`` (None disables), so the predicted KL ½η₀²bᵀF̂b of a
step at the base rate stays ≤ κ/2 and a schedule's factor η/η₀ still scales the step. Then
θ ← θ(1 − η·wd) − η b (decoupled weight decay), η the current rate. Per step: two small matmuls per side
per layer; eigendecompositions every ``inv_every`` steps, factors every ``cov_every`` steps
(:mod:`.kronecker`).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from ..errors import InfogeomError
from ..operators import from_eigenbasis, pi_correction, to_eigenbasis
from .kronecker import KroneckerCore, KroneckerOptimizer, select_layers
from .preconditioner import heavy_ball_factor
from .registry import register_optimizer
from .step import decoupled_update_

DAMPING_MODES = ("pi", "relative", "exact")


class KFACCore(KroneckerCore):
    label = "kfac"
    nu = 1.0  # the last step's KL-clip factor

    def extra_state(self) -> dict:
        return {**super().extra_state(), "nu": self.nu}

    def load_extra_state(self, extra: dict) -> None:
        super().load_extra_state(extra)
        self.nu = float(extra.get("nu", 1.0))

    def _basis_changed(self, layer, old, new) -> None:
        st = self.state[layer.weight]
        if "momentum" in st:  # the buffer lives in the eigenbasis: re-express it in the new one
            st["momentum"] = to_eigenbasis(from_eigenbasis(st["momentum"], *old), *new)

    def _denominator(self, eL: torch.Tensor, eR: torch.Tensor) -> torch.Tensor:
        """D with (damped F̂)^{-1} X = Q_L [(Q_Lᵀ X Q_R) ⊘ D] Q_Rᵀ for the configured damping mode."""
        lam, mode = self.step_damping, self.defaults["damping_mode"]
        if mode == "exact":
            return eL[:, None] * eR[None, :] + lam
        if mode == "pi":
            sL = math.sqrt(lam) / pi_correction(eL, eR)
            sR = math.sqrt(lam) * pi_correction(eL, eR)
        else:
            sL, sR = math.sqrt(lam) * float(eL.mean()), math.sqrt(lam) * float(eR.mean())
        return (eL + sL)[:, None] * (eR + sR)[None, :]

    def _apply(self) -> None:
        d = self.defaults
        lrs, base = self.lr_of(), self.lr_of("initial_lr")
        bufs, quad = [], 0.0
        for layer in self.layers:
            eL, eR, QL, QR = self.eigenbasis(layer)
            direction = to_eigenbasis(layer.grad_matrix(), QL, QR) / self._denominator(eL, eR)
            st = self.state[layer.weight]
            if d["momentum"] and "momentum" in st:
                direction = st["momentum"].mul_(d["momentum"]).add_(direction)
            bufs.append(direction)
            if d["kl_clip"] is not None:
                curvature = eL[:, None] * eR[None, :]
                quad += base[id(layer.weight)] ** 2 * float((curvature * direction.square()).sum())
        nu = min(1.0, math.sqrt(d["kl_clip"] / quad)) if d["kl_clip"] is not None and quad > 0 else 1.0
        self.nu = nu
        wds = {id(p): g["weight_decay"] for g in self.param_groups for p in g["params"]}
        for layer, buf in zip(self.layers, bufs):
            _, _, QL, QR = self.eigenbasis(layer)
            buf.mul_(nu)
            if d["momentum"]:
                self.state[layer.weight]["momentum"] = buf
            lr = lrs[id(layer.weight)]
            for p, u in zip(layer.params, layer.split(from_eigenbasis(buf, QL, QR))):
                decoupled_update_(p, u, lr, wds[id(p)])

    def _grid(self, layer) -> torch.Tensor:
        """P = the damped factors over the step's KL-clip factor ν: the applied update is −η ν(μ b + P̂⁻¹ g)."""
        eL, eR, _, _ = self.eigenbasis(layer)
        return self._denominator(eL, eR) / self.nu

    def _stability(self) -> tuple[float, str]:
        """Heavy ball with momentum μν (ν the last KL-clip factor): c = 2 + 2μν."""
        return heavy_ball_factor(self.defaults["momentum"] * self.nu), "kfac"


@register_optimizer("kfac")
class KFAC(KroneckerOptimizer):
    """K-FAC on the model's Linear layers (see module doc), AdamW (``adamw_lr``) on everything else.

    ``approx``: ``"reduce"`` (default, cheap: factors from sequence sums) or ``"expand"`` (every token an
    example); ``fisher``: ``"mc"`` (labels sampled from the model, default), ``"empirical"`` or ``"exact"``
    (V backward passes; tests). ``head``: precondition the LM head (``"auto"``: only when untied);
    ``embeddings``: also the untied embeddings (diagonal A); layers wider than ``max_factor_dim`` stay with
    AdamW.
    """

    def __init__(self, model: nn.Module, lr: float = 3e-3, weight_decay: float = 0.0, damping: float = 1e-3,
                 damping_mode: str = "pi", kl_clip: float | None = 1e-2, momentum: float = 0.9,
                 cov_every: int = 2, inv_every: int = 10, factor_decay: float = 0.8, approx: str = "reduce",
                 fisher: str = "mc", mc_samples: int = 1, head: bool | str = "auto", embeddings: bool = False,
                 max_factor_dim: int = 2048, max_basis_dim: int | None = None, adamw_lr: float = 8e-3,
                 betas=(0.9, 0.95), eps: float = 1e-8, damping_boost: float = 10.0, seed: int = 0):
        if damping_mode not in DAMPING_MODES:
            raise InfogeomError(f"unknown damping_mode {damping_mode!r}; "
                                f"choose one of {', '.join(DAMPING_MODES)}")
        if kl_clip is not None and not kl_clip > 0:
            raise InfogeomError(f"kl_clip must be positive or None, got {kl_clip}")
        modules = select_layers(model, head, embeddings, max_factor_dim)
        core = KFACCore(model, modules, lr, weight_decay, damping, approx, fisher, mc_samples, cov_every,
                        inv_every, factor_decay, damping_boost, seed, damping_mode=damping_mode,
                        kl_clip=kl_clip, momentum=momentum, max_basis_dim=max_basis_dim)
        super().__init__(model, core, adamw_lr, weight_decay, betas, eps, (head, embeddings, max_factor_dim))

