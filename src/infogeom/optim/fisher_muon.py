"""Fisher–Muon: Muon's orthogonalized step taken in the K-FAC-whitened coordinates of each layer.

Muon is steepest descent under the spectral norm ‖Δ‖₂ of a weight matrix, a norm that ignores the statistics
of the layer's inputs and output gradients. With the layer's Kronecker factors L, R (:mod:`.kronecker`: the
Fisher block is F X ≈ L X R) normalized to unit mean eigenvalue and damped, L̂ = L/ē_L + λI, R̂ = R/ē_R + λI
(λ = ``damping``, dimensionless), Fisher–Muon is steepest descent under the whitened spectral norm
‖L̂^p Δ R̂^p‖₂: with the Nesterov momentum M̃ = (1−μ)X + μ·buf, buf ← μ·buf + (1−μ)X (torch Muon's recursion),

    Z = L̂^{−p} M̃ R̂^{−p},   O = NS₅(Z) ≈ U Vᵀ,   D = L̂^{−p} O R̂^{−p},
    Δ = c · (‖O‖_F / ‖D‖_F) · D,   c = 0.2·√max(d_L, d_R),   θ ← θ(1 − η·wd) − η Δ.

p = ``exponent``: 0 is Muon itself (Moonshot's RMS-matched scale c, the same η as the AdamW part); ½ the
steepest descent in the K-FAC Fisher's own operator norm; ¼ halfway, as in Shampoo. The step length is set by
the norm (‖Δ‖_F = c‖O‖_F, as Muon's), not by the quadratic model: the measurements in docs/optimizers.md show
the Fisher model's optimal scale overshoots on held-out data. All of it runs in the factors' eigenbases
(orthogonal changes of basis commute with the polar factor): Y = Q_Lᵀ M̃ Q_R, Z = w_L ⊙ Y ⊙ w_Rᵀ with
w = (e/ē + λ)^{−p}, O = NS₅(Z), Δ = Q_L (w_L ⊙ O ⊙ w_Rᵀ) Q_Rᵀ·scale. Cost per step: Muon's Newton–Schulz
plus four small rotations (none on a side kept diagonal by ``max_basis_dim``); factors every ``cov_every``
steps and ``eigh`` every ``inv_every`` (:mod:`.kronecker`). ``ns_dtype``: the Newton–Schulz dtype (default
the parameters'; torch Muon uses bfloat16). Newton–Schulz runs once per shape on the stacked layers of that
shape, on the Gram side where it is cheaper (``ns_gram``, :func:`~.polar.newton_schulz`).

Metric (:mod:`.preconditioner`): with P_Z the polar metric of Z (P_Z⁻¹Z = NS(Z) on its smaller side,
:func:`~.polar.polar_metric`), the update is Δ = P⁻¹M̃ with, in the eigenbasis, P⁻¹ = s·(w_L P_Z⁻¹ w_L) ⊗ w_R²
(left side smaller; mirrored otherwise), s the scale above; P is that operator frozen at the last momentum.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from ..errors import InfogeomError
from ..operators import KroneckerBlock, from_eigenbasis, to_eigenbasis
from .kronecker import KroneckerCore, KroneckerOptimizer, select_layers
from .polar import NS_COEFFICIENTS, NS_DTYPES, NS_STEPS, newton_schulz, polar_metric
from .polar import ns_dtype as ns_dtype_of
from .preconditioner import ema_factor
from .registry import register_optimizer
from .step import decoupled_update_


class FisherMuonCore(KroneckerCore):
    label = "fisher-muon"

    def whitening(self, layer) -> tuple[torch.Tensor, torch.Tensor]:
        """(w_L, w_R) = ((e/ē + λ)^{−p}) of the layer's two factors (λ the step's damping)."""
        eL, eR, _, _ = self.eigenbasis(layer)
        p, lam = self.defaults["exponent"], self.step_damping
        return tuple((e / e.mean().clamp_min(torch.finfo(e.dtype).tiny) + lam).pow(-p) for e in (eL, eR))

    def momentum(self, layer, X: torch.Tensor | None = None) -> torch.Tensor:
        """M̃ of the last step from the gradient matrix ``X`` (default: the layer's) and the buffer; the buffer
        alone once ``.grad`` is gone (as for torch's Muon)."""
        buf = self.state[layer.weight]["momentum"]
        if not self.defaults["nesterov"] or (X is None and layer.weight.grad is None):
            return buf
        return (layer.grad_matrix() if X is None else X).lerp(buf, self.defaults["momentum"])

    def _apply(self) -> None:
        d = self.defaults
        lrs = self.lr_of()
        wds = {id(p): g["weight_decay"] for g in self.param_groups for p in g["params"]}
        todo = []
        for layer in self.layers:
            st = self.state[layer.weight]
            X = layer.grad_matrix()
            if "momentum" not in st:
                st["momentum"] = torch.zeros_like(X)
            st["momentum"].lerp_(X, 1 - d["momentum"])
            _, _, QL, QR = self.eigenbasis(layer)
            wL, wR = self.whitening(layer)
            Z = to_eigenbasis(self.momentum(layer, X), QL, QR) * wL[:, None] * wR[None, :]
            todo.append((layer, QL, QR, wL, wR, Z))
        polar = {}  # one batched Newton–Schulz per shape (the layers of a transformer share a few shapes)
        for shape in dict.fromkeys(Z.shape for *_, Z in todo):
            same = [i for i, t in enumerate(todo) if t[-1].shape == shape]
            O = newton_schulz(torch.stack([todo[i][-1] for i in same]), d["ns_steps"], NS_COEFFICIENTS,
                              dtype=NS_DTYPES[d["ns_dtype"]], gram=d["ns_gram"])
            polar.update(zip(same, O.unbind()))
        for i, (layer, QL, QR, wL, wR, Z) in enumerate(todo):
            O = polar[i]
            D = O * wL[:, None] * wR[None, :]
            scale = 0.2 * math.sqrt(max(Z.shape)) * O.norm() / D.norm().clamp_min(torch.finfo(D.dtype).tiny)
            lr = lrs[id(layer.weight)]
            for p, u in zip(layer.params, layer.split(from_eigenbasis(D * scale, QL, QR))):
                decoupled_update_(p, u, lr, wds[id(p)])

    def _block(self, layer, names: dict[int, str]) -> KroneckerBlock:
        """P of the layer (module doc), exact for the float64 Newton–Schulz polynomial, as one Kronecker block:
        in the eigenbasis P⁻¹ = K ⊗ diag(w_far²) with K = s·w P_Z⁻¹ w on Z's smaller side, K = V diag(k) Vᵀ."""
        _, _, QL, QR = self.eigenbasis(layer)
        wL, wR = (w.double() for w in self.whitening(layer))
        M = self.momentum(layer)
        Z = to_eigenbasis(M, QL, QR).double() * wL[:, None] * wR[None, :]
        U, e, left = polar_metric(Z, self.defaults["ns_steps"], NS_COEFFICIENTS, 1e-7)
        inv = (U / e) @ U.T  # P_Z⁻¹
        O = inv @ Z if left else Z @ inv
        s = 0.2 * math.sqrt(max(M.shape)) * O.norm() / (O * wL[:, None] * wR[None, :]).norm()
        w_near, w_far, Q_near = (wL, wR, QL) if left else (wR, wL, QR)
        k, V = torch.linalg.eigh(s * w_near[:, None] * inv * w_near[None, :])
        Q_near = V if Q_near is None else Q_near.double() @ V
        grid = torch.outer(1 / k, 1 / w_far.square())
        QL, QR, grid = (Q_near, QR, grid) if left else (QL, Q_near, grid.T)
        cast = [None if Q is None else Q.to(M.dtype) for Q in (QL, QR)]
        return KroneckerBlock(names[id(layer.weight)], None if layer.bias is None else names[id(layer.bias)],
                              *cast, grid.to(M.dtype), bias_row=layer.bias_row)

    def _stability(self) -> tuple[float, str]:
        """Muon's momentum: EMA μ with the Nesterov look-ahead by default, c = ema_factor(μ, nesterov)."""
        mu, nesterov = self.defaults["momentum"], self.defaults["nesterov"]
        return ema_factor(mu, nesterov), "fisher-muon-nesterov" if nesterov else "fisher-muon"


@register_optimizer("fisher-muon")
class FisherMuon(KroneckerOptimizer):
    """Fisher–Muon (module doc) on the model's Linear layers, AdamW (``adamw_lr``, default ``lr``) on the
    rest. Factor and layer-selection options as :class:`~.kfac.KFAC`; ``exponent`` p ∈ [0, 1] of the
    whitening, ``damping`` λ relative to each factor's mean eigenvalue."""

    def __init__(self, model: nn.Module, lr: float = 1e-2, weight_decay: float = 0.0, exponent: float = 0.25,
                 damping: float = 1e-2, momentum: float = 0.95, nesterov: bool = True, ns_steps: int = NS_STEPS,
                 ns_dtype: str | None = None, ns_gram: bool = True, cov_every: int = 2, inv_every: int = 10,
                 factor_decay: float = 0.8, approx: str = "reduce", fisher: str = "empirical", mc_samples: int = 1,
                 head: bool | str = "auto", embeddings: bool = False, max_factor_dim: int = 2048,
                 max_basis_dim: int | None = None, adamw_lr: float | None = None, betas=(0.9, 0.95),
                 eps: float = 1e-8, damping_boost: float = 10.0, seed: int = 0):
        if not 0.0 <= exponent <= 1.0:
            raise InfogeomError(f"exponent must be in [0, 1], got {exponent}")
        if not 0.0 <= momentum < 1.0:
            raise InfogeomError(f"momentum must be in [0, 1), got {momentum}")
        ns_dtype_of(ns_dtype)  # validates
        modules = select_layers(model, head, embeddings, max_factor_dim)
        core = FisherMuonCore(model, modules, lr, weight_decay, damping, approx, fisher, mc_samples, cov_every,
                              inv_every, factor_decay, damping_boost, seed, exponent=float(exponent),
                              momentum=float(momentum), nesterov=bool(nesterov), ns_steps=int(ns_steps),
                              ns_dtype=ns_dtype, ns_gram=bool(ns_gram), max_basis_dim=max_basis_dim)
        super().__init__(model, core, lr if adamw_lr is None else adamw_lr, weight_decay, betas, eps,
                         (head, embeddings, max_factor_dim))
