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
- Preconditioned sharpness (Cohen et al. 2022): λ_max(P⁻¹H) for an optimizer stepping θ ← θ − η P⁻¹ d, with
  P the optimizer's own metric (``optimizer.preconditioner()``, :mod:`infogeom.optim.preconditioner`: Adam's
  (1 − β1ᵗ) diag(√v̂ + ε), SGD's I, K-FAC's damped factors, EK-FAC's eigenbasis second moment, Muon's polar
  metric, NGCG's damped Fisher, QNG's damped metric) and its edge-of-stability threshold c/η (c = 2 + 2β for
  heavy ball, (2 + 2β1)/(1 − β1) = 38 for Adam at β1 = 0.9, derivations there). Any operator with ``solve``
  can serve as P.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..errors import InfogeomError
from ..geometry.functional import Batch
from ..operators import CurvatureOperator, DiagonalOperator
from ..optim.preconditioner import leading_stability, preconditioner, stability_operator
from .lanczos import EigenResult, generalized_eigsh
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


def adam_preconditioner(
    optimizer: torch.optim.Optimizer, model: nn.Module, names: Sequence[str], dtype: torch.dtype | None = None
) -> CurvatureOperator:
    """P = (1 − β1ᵗ)(√(v/(1 − β2ᵗ)) + ε) of an Adam/AdamW state for the parameters ``names`` (flat, in that
    order) — the P of θ ← θ − η P⁻¹ m (:func:`infogeom.optim.preconditioner`)."""
    if not isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
        raise InfogeomError(f"not an Adam-type optimizer: {type(optimizer).__name__}")
    P = preconditioner(optimizer, model, names)
    return DiagonalOperator(P.diagonal().to(dtype or P.dtype), P.names, P.shapes)


def eos_threshold(optimizer: torch.optim.Optimizer) -> dict:
    """The edge-of-stability threshold c/η of the first part of ``optimizer``'s step (c from its momentum form,
    :mod:`infogeom.optim.preconditioner`): ``{'kind', 'lr', 'factor', 'threshold', 'gd_threshold'}``; η is the
    scheduler's base rate where the current one is 0 (``group_lr``); infinite when both are 0. Needs no
    optimizer state."""
    factor, kind, lr = leading_stability(optimizer)
    return {
        "kind": kind,
        "lr": lr,
        "factor": factor,
        "threshold": factor / lr if lr > 0 else math.inf,
        "gd_threshold": 2 / lr if lr > 0 else math.inf,
    }


def optimizer_sharpness(
    hessian: CurvatureOperator,
    optimizer: torch.optim.Optimizer,
    model: nn.Module,
    tol: float = 1e-3,
    generator: torch.Generator | None = None,
    batch: Batch | None = None,
    return_vector: bool = False,
    **kwargs,
) -> dict:
    """The optimizer's own preconditioned sharpness next to its edge of stability.

    With the optimizer's parts P_i (learning rates η_i, factors c_i; :func:`infogeom.optim.stability_operator`)
    and S = ⊕ P_i c_i/η_i, ``ratio`` = λ_max(S⁻¹H) by the generalized eigensolver (stable iff < 1) and
    ``sharpness`` = ratio × ``threshold`` (c₀/η₀ of the first part): for a one-part optimizer exactly λ_max(P⁻¹H)
    (λ_max(H) for plain SGD). ``batch``: a curvature batch for optimizers whose metric is not in their state
    (NGCG). ``return_vector``: also return the top eigenvector (``"vector"``, a warm start ``v0=`` for the next
    call); other keyword arguments go to :func:`~infogeom.curvature.generalized_eigsh`."""
    info = eos_threshold(optimizer)
    if not math.isfinite(info["threshold"]):
        raise InfogeomError("the learning rate is 0: there is no edge of stability")
    S, parts = stability_operator(optimizer, model, hessian.names, batch)
    res = preconditioned_sharpness(hessian, S, tol=tol, generator=generator, **kwargs)
    ratio = float(res.values[0])
    out = {**info, "sharpness": ratio * info["threshold"], "ratio": ratio, "converged": res.converged,
           "matvecs": res.matvecs,
           "parts": [{"kind": q.kind, "lr": q.lr, "factor": q.factor, "threshold": q.threshold,
                      "parameters": q.operator.dim} for q in parts]}
    if return_vector:
        out["vector"] = res.vectors[:, 0].detach()
    return out
