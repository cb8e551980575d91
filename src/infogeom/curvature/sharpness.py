"""Sharpness measures: ε-ball (SAM/ASAM), Fisher–Rao, and an optimizer's preconditioned sharpness with its
edge-of-stability threshold.

- λ_max of the Hessian: :func:`~infogeom.curvature.eigsh` on a :class:`~infogeom.geometry.HessianOperator`.
- ε-sharpness (Foret et al. 2021, SAM): S_ρ = max_{‖T⁻¹ε‖ ≤ ρ} L(θ + ε) − L(θ), T = I. The first-order
  maximizer is ε = ρ g/‖g‖; ``steps`` > 1 continues by projected normalized ascent on u = T⁻¹ε, u ←
  Proj_{‖u‖≤ρ}(u + ρ ∇_u/‖∇_u‖), keeping the largest loss seen. Adaptive (Kwon et al. 2021, ASAM): T =
  diag(|θ| + η), so ε = ρ T² g / ‖T g‖ and the value is invariant to per-coordinate rescalings of θ (η = 0).
- Fisher–Rao sharpness: the largest eigenvalue of the pencil H v = λ (F + δI) v, λ_FR = max_v vᵀHv / vᵀ(F +
  δI)v — loss curvature per unit squared Fisher–Rao length (½vᵀFv ≈ KL between the model's predictions at θ
  and θ + v). Under a reparameterization θ = φ(ψ) with Jacobian J, F ↦ JᵀFJ and, at a critical point, H ↦
  JᵀHJ, so λ_FR is invariant as δ → 0 (δ > 0 is needed where F is singular).
- Preconditioned sharpness (Cohen et al. 2022): λ_max(P⁻¹H) for an optimizer stepping θ ← θ − η P⁻¹ m. For
  Adam/AdamW, P = (1 − β1ᵗ) diag(√v̂ + ε), v̂ = v/(1 − β2ᵗ) (``exp_avg_sq``, step t), and the stability
  threshold is (2 + 2β1)/((1 − β1) η) (38/η at β1 = 0.9); for SGD, P = I and the threshold is 2/η, or (2 +
  2β)/η with heavy-ball momentum β, (2 + 2β)/((1 + 2β) η) with Nesterov (Cohen et al. 2021). Any operator
  with ``solve`` (diagonal, K-FAC, Fisher) can serve as P.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..errors import InfogeomError
from ..geometry.functional import Batch
from ..geometry.operator import CurvatureOperator
from .lanczos import EigenResult, eigsh, generalized_eigsh
from .operators import DiagonalOperator
from .params import FlatLoss, FlatModel, value_and_grad


@dataclass
class BallSharpness:
    """``value`` = L(θ + ε*) − L(θ) for the best ε* found; ``loss`` = L(θ); ``epsilon_norm`` = ‖ε*‖."""

    value: float
    loss: float
    perturbed_loss: float
    epsilon_norm: float
    rho: float
    adaptive: bool
    steps: int

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def ball_sharpness(
    f: FlatLoss,
    theta: torch.Tensor,
    rho: float = 0.05,
    adaptive: bool = False,
    eta: float = 0.01,
    steps: int = 1,
) -> BallSharpness:
    """ε-sharpness of a function of a flat vector (see module doc). Cost: ``steps`` gradients + ``steps``
    losses."""
    if not rho > 0:
        raise InfogeomError(f"rho must be positive, got {rho}")
    if int(steps) < 1:
        raise InfogeomError(f"steps must be a positive integer, got {steps}")
    theta = theta.detach()
    T = theta.abs() + eta if adaptive else torch.ones_like(theta)
    loss0, g = value_and_grad(f, theta)
    u = torch.zeros_like(theta)
    best, best_u = loss0, u
    for s in range(int(steps)):
        if s > 0:
            _, g = value_and_grad(f, theta + T * u)
        gu = T * g
        norm = torch.linalg.vector_norm(gu)
        if norm == 0:
            break
        u = u + rho * gu / norm
        un = torch.linalg.vector_norm(u)
        if un > rho:
            u = u * (rho / un)
        with torch.no_grad():
            value = f(theta + T * u)
        if value > best:
            best, best_u = value, u
    return BallSharpness(
        float(best - loss0),
        float(loss0),
        float(best),
        float(torch.linalg.vector_norm(T * best_u)),
        float(rho),
        adaptive,
        int(steps),
    )


def epsilon_sharpness(
    model: nn.Module,
    batch: Batch,
    rho: float = 0.05,
    adaptive: bool = False,
    eta: float = 0.01,
    steps: int = 1,
    names: Sequence[str] | None = None,
) -> BallSharpness:
    """SAM (``adaptive=False``) or ASAM ε-sharpness of the mean token loss of ``model`` on ``batch``."""
    flat = FlatModel(model, names)
    return ball_sharpness(flat.loss_function(batch), flat.theta, rho, adaptive, eta, steps)


def fisher_rao_sharpness(
    hessian: CurvatureOperator,
    fisher: CurvatureOperator,
    damping: float = 1e-3,
    k: int = 1,
    tol: float = 1e-4,
    generator: torch.Generator | None = None,
    **kwargs,
) -> EigenResult:
    """Top-k eigenpairs of H v = λ (F + δI) v, δ = ``damping`` > 0 (see module doc)."""
    if not damping > 0:
        raise InfogeomError(f"Fisher–Rao sharpness needs a positive damping, got {damping}")
    return generalized_eigsh(hessian, fisher, k=k, damping=damping, tol=tol, generator=generator, **kwargs)


def preconditioned_sharpness(
    hessian: CurvatureOperator,
    preconditioner: CurvatureOperator,
    k: int = 1,
    tol: float = 1e-4,
    generator: torch.Generator | None = None,
    **kwargs,
) -> EigenResult:
    """Top-k eigenpairs of P⁻¹H (the pencil H v = λ P v) for a symmetric positive definite
    ``preconditioner``."""
    return generalized_eigsh(hessian, preconditioner, k=k, tol=tol, generator=generator, **kwargs)


def _optimizer_params(
    optimizer: torch.optim.Optimizer, model: nn.Module, names: Sequence[str]
) -> list[tuple[torch.Tensor, dict]]:
    params = dict(model.named_parameters())
    groups = {id(p): group for group in optimizer.param_groups for p in group["params"]}
    out = []
    for n in names:
        if n not in params or id(params[n]) not in groups:
            raise InfogeomError(f"parameter {n!r} is not optimized by this optimizer")
        out.append((params[n], groups[id(params[n])]))
    return out


def adam_preconditioner(
    optimizer: torch.optim.Optimizer, model: nn.Module, names: Sequence[str], dtype: torch.dtype | None = None
) -> DiagonalOperator:
    """P = (1 − β1ᵗ)(√(v/(1 − β2ᵗ)) + ε) from an Adam/AdamW state (``exp_avg_sq``, or ``max_exp_avg_sq``
    with amsgrad) for the parameters ``names`` (flat, in that order) — the P of θ ← θ − η P⁻¹ m."""
    diags = []
    pairs = _optimizer_params(optimizer, model, names)
    for p, group in pairs:
        state = optimizer.state.get(p, {})
        if "exp_avg_sq" not in state:
            raise InfogeomError(
                "optimizer has no Adam state (exp_avg_sq) yet; take a step first, or use an Adam-type "
                "optimizer"
            )
        beta1, beta2 = group["betas"]
        t = float(state["step"])
        v = state.get("max_exp_avg_sq", state["exp_avg_sq"]) if group.get("amsgrad") else state["exp_avg_sq"]
        diags.append(((1 - beta1**t) * ((v / (1 - beta2**t)).sqrt() + group["eps"])).reshape(-1))
    d = torch.cat(diags)
    return DiagonalOperator(d.to(dtype) if dtype is not None else d, names, [p.shape for p, _ in pairs])


def eos_threshold(optimizer: torch.optim.Optimizer) -> dict:
    """The edge-of-stability threshold of ``optimizer``'s first parameter group: ``{'kind', 'lr',
    'threshold', 'gd_threshold'}`` (kind 'adam' uses λ_max(P⁻¹H); 'sgd'/'gd' use λ_max(H)); infinite when lr
    = 0."""
    group = optimizer.param_groups[0]
    lr = float(group["lr"])
    if "betas" in group:
        beta1 = float(group["betas"][0])
        kind, factor = "adam", (2 + 2 * beta1) / (1 - beta1)
    else:
        beta = float(group.get("momentum", 0.0) or 0.0)
        kind, factor = "sgd", (2 + 2 * beta) / (1 + 2 * beta) if group.get("nesterov") else 2 + 2 * beta
    return {
        "kind": kind,
        "lr": lr,
        "threshold": factor / lr if lr > 0 else math.inf,
        "gd_threshold": 2 / lr if lr > 0 else math.inf,
    }


def optimizer_sharpness(
    hessian: CurvatureOperator,
    optimizer: torch.optim.Optimizer,
    model: nn.Module,
    tol: float = 1e-3,
    generator: torch.Generator | None = None,
    **kwargs,
) -> dict:
    """λ_max of the optimizer's own preconditioned Hessian next to its stability threshold: Adam-type states
    give λ_max(P⁻¹H) with P from :func:`adam_preconditioner`; other optimizers λ_max(H) (P = I)."""
    info = eos_threshold(optimizer)
    if info["kind"] == "adam":
        P = adam_preconditioner(optimizer, model, hessian.names, hessian.dtype)
        res = preconditioned_sharpness(hessian, P, tol=tol, generator=generator, **kwargs)
    else:
        res = eigsh(hessian, k=1, tol=tol, generator=generator, **kwargs)
    value = float(res.values[0])
    return {**info, "sharpness": value, "ratio": value / info["threshold"], "converged": res.converged}
