"""Every optimizer's metric as a :class:`~infogeom.operators.CurvatureOperator`, and its edge of stability.

An optimizer whose update is θ ← θ(1 − η·wd) − η P⁻¹ d, with d its momentum or gradient, *is* a metric P on the
tangent space. :func:`preconditioner` returns that P for every registered optimizer and for torch's own, as the
state of the most recent step defines it, so that ``P.solve(d)`` reproduces the update it applied:

- Adam/AdamW: P = (1 − β₁ᵗ) diag(√v̂ + ε), v̂ = v/(1 − β₂ᵗ), d = m (first moment ``exp_avg``);
- SGD: P = I, d = the momentum buffer (heavy ball) or g + μ·buffer (Nesterov);
- K-FAC: P = the damped Kronecker factors Q_L diag(D) Q_Rᵀ-blocks divided by the step's KL-clip factor ν
  (:mod:`.kfac`), d = g + μ ν P b_{t−1} (momentum b);
- EK-FAC: P = Q diag((1 − β₁ᵗ)(√v̂ + ε)) Qᵀ in the Kronecker eigenbasis, d = m̃ (raw-space first moment, with the
  Nesterov look-ahead);
- Muon: its update is the orthogonalized momentum O = NS₅(M̃) ≈ U Vᵀ for M̃ = U Σ Vᵀ, i.e. steepest descent in the
  spectral norm. The honest linear operator that reproduces it, frozen at the current momentum, is
  P = U diag(σ / (c·p(σ/‖M̃‖_F))) Uᵀ on the smaller side (identity on the other), with p the quintic Newton–Schulz
  map iterated on each singular value and c torch's ``adjust_lr`` scale. P⁻¹M̃ is the float64 polynomial
  exactly; torch runs NS₅ in bfloat16, whose rounding the map amplifies for small singular values (slope ≈ 3.4
  per step), so torch's applied update deviates from it by up to ≈ 15–30% in norm (cosine ≥ 0.95 in the tests);
- NGCG: P = (F + λI)/ν, the damped Fisher of the last curvature batch and the step's trust-region factor ν
  (the applied step equals P⁻¹g when CG converged);
- QNG: P = G + λI, the damped metric of the last refresh;
- hybrids (K-FAC/EK-FAC/Muon/QNG + AdamW): the block-diagonal sum of their parts', each rescaled by η₀/η_part to
  the first group's learning rate η₀.

Edge of stability (Cohen et al. 2021, 2022): with P frozen, each eigen-direction of P⁻¹H with eigenvalue a is a
linear recursion in θ that is stable iff a < c/η, where c depends on the momentum form:

    plain / no momentum               c = 2
    heavy ball b ← μb + g             c = 2 + 2μ                  (SGD; K-FAC with its ν: 2 + 2μν)
    Nesterov on heavy ball            c = (2 + 2μ)/(1 + 2μ)       (SGD nesterov=True)
    EMA m ← βm + (1−β)g               c = (2 + 2β)/(1 − β)        (Adam: 38 at β = 0.9)
    Nesterov EMA (1−β)g + βm          c = (2 + 2β)/((1 + 2β)(1 − β))   (EK-FAC default, Muon: 13.6 at 0.9)

(derivation: the recursion's companion matrix has trace T and determinant D; Jury's conditions 1 − T + D > 0,
1 + T + D > 0, |D| < 1; the binding one is 1 + T + D > 0, which gives c; the tests check each c by simulation).
For several parts, :func:`stability_operator` S = ⊕ P_i c_i/η_i is stable iff λ_max(S⁻¹H) < 1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..errors import InfogeomError
from ..operators import (
    BlockDiagonalOperator,
    CurvatureOperator,
    DiagonalOperator,
    KroneckerBlock,
    KroneckerOperator,
    ScaledOperator,
)
from .polar import polar_metric


@dataclass
class PreconditionerPart:
    """One part of an optimizer's step: θ_S ← θ_S − ``lr`` P⁻¹ d on the parameters ``operator.names``; stable
    with P frozen iff λ_max(P⁻¹H) < ``factor``/``lr`` (module doc); ``kind`` names the momentum form."""

    operator: CurvatureOperator
    lr: float
    factor: float
    kind: str

    @property
    def threshold(self) -> float:
        return self.factor / self.lr if self.lr > 0 else math.inf


def group_lr(group: dict) -> float:
    """A group's learning rate for the metric and its threshold: the current one, or the scheduler's base rate
    (``initial_lr``) where a schedule has decayed it to 0 (a run's last checkpoint), so that the edge of
    stability is still defined."""
    lr = float(group["lr"])
    return lr if lr > 0 else float(group.get("initial_lr", 0.0))


def heavy_ball_factor(momentum: float, nesterov: bool = False) -> float:
    """c for b ← μb + g (θ ← θ − η b) or its Nesterov form (θ ← θ − η(g + μb))."""
    return (2 + 2 * momentum) / (1 + 2 * momentum) if nesterov else 2 + 2 * momentum


def ema_factor(beta: float, nesterov: bool = False) -> float:
    """c for m ← βm + (1−β)g (θ ← θ − η m) or its Nesterov form (θ ← θ − η((1−β)g + βm))."""
    return heavy_ball_factor(beta, nesterov) / (1 - beta)


def torch_stability(optimizer: torch.optim.Optimizer, group: dict) -> tuple[float, str]:
    """(c, momentum form) of one parameter group of torch's Adam/AdamW, SGD or Muon (no state needed)."""
    if isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
        return ema_factor(float(group["betas"][0])), "adam"
    if isinstance(optimizer, torch.optim.SGD):
        mu, nesterov = float(group.get("momentum", 0.0) or 0.0), bool(group.get("nesterov"))
        return heavy_ball_factor(mu, nesterov), "sgd" if not mu else "sgd-nesterov" if nesterov else "sgd-momentum"
    if isinstance(optimizer, torch.optim.Muon):
        return ema_factor(float(group["momentum"]), bool(group["nesterov"])), "muon"
    raise InfogeomError(f"no preconditioner is known for {type(optimizer).__name__}; supported: the registered "
                        "optimizers and torch's Adam, AdamW, SGD and Muon")


def leading_stability(optimizer: torch.optim.Optimizer) -> tuple[float, str, float]:
    """(c, momentum form, learning rate) of the first part of ``optimizer``'s step, without its state."""
    parts = getattr(optimizer, "_parts", None)
    if parts:
        return leading_stability(parts[0])
    own = getattr(optimizer, "_stability", None)
    group = optimizer.param_groups[0]
    factor, kind = own() if own is not None else torch_stability(optimizer, group)
    return factor, kind, group_lr(group)


def parameter_names(optimizer: torch.optim.Optimizer, model: nn.Module | None = None) -> dict[int, str]:
    """Name of every parameter of ``optimizer`` by ``id``: from ``model.named_parameters()`` when given, else
    ``param<i>`` in the optimizer's order."""
    params = [p for g in optimizer.param_groups for p in g["params"]]
    if model is None:
        return {id(p): f"param{i}" for i, p in enumerate(params)}
    names = {id(p): n for n, p in model.named_parameters()}
    missing = [i for i, p in enumerate(params) if id(p) not in names]
    if missing:
        raise InfogeomError(f"{len(missing)} parameter(s) of the optimizer are not parameters of the model")
    return names


def _state(optimizer: torch.optim.Optimizer, p: torch.Tensor, key: str, what: str) -> torch.Tensor:
    state = optimizer.state.get(p, {})
    if key not in state:
        raise InfogeomError(f"optimizer has no {what} state ({key}) yet; take a step first")
    return state[key]


def adam_parts(optimizer: torch.optim.Optimizer, names: dict[int, str], batch=None) -> list[PreconditionerPart]:
    """torch Adam/AdamW, one part per group: P = (1 − β₁ᵗ)(√(v/(1 − β₂ᵗ)) + ε) (``max_exp_avg_sq`` with amsgrad)."""
    parts = []
    for group in optimizer.param_groups:
        if not group["params"]:
            continue
        beta1, beta2 = group["betas"]
        diags = []
        for p in group["params"]:
            v = _state(optimizer, p, "max_exp_avg_sq" if group.get("amsgrad") else "exp_avg_sq", "Adam")
            t = float(optimizer.state[p]["step"])
            diags.append(((1 - beta1**t) * ((v / (1 - beta2**t)).sqrt() + group["eps"])).reshape(-1))
        op = DiagonalOperator(torch.cat(diags), [names[id(p)] for p in group["params"]],
                              [p.shape for p in group["params"]])
        parts.append(PreconditionerPart(op, group_lr(group), *torch_stability(optimizer, group)))
    return parts


def sgd_parts(optimizer: torch.optim.Optimizer, names: dict[int, str], batch=None) -> list[PreconditionerPart]:
    """torch SGD, one part per group: P = I (dampening folds into P as I/(1 − dampening))."""
    parts = []
    for group in optimizer.param_groups:
        if not group["params"]:
            continue
        ps = group["params"]
        mu = float(group.get("momentum", 0.0) or 0.0)
        scale = 1.0 / (1.0 - float(group.get("dampening", 0.0) or 0.0)) if mu else 1.0
        op = DiagonalOperator(torch.full((sum(p.numel() for p in ps),), scale, dtype=ps[0].dtype,
                                         device=ps[0].device), [names[id(p)] for p in ps], [p.shape for p in ps])
        parts.append(PreconditionerPart(op, group_lr(group), *torch_stability(optimizer, group)))
    return parts


def muon_block(name: str, M: torch.Tensor, steps: int, coefficients: Sequence[float], scale: float,
               eps: float) -> KroneckerBlock:
    """The Kronecker block P with P⁻¹M = ``scale``·NS(M) (module doc): the Gram eigenbasis of the smaller side."""
    Q, e, left = polar_metric(M, steps, coefficients, eps)
    Q, e = Q.to(M.dtype), (e / scale).to(M.dtype)
    ones = torch.ones(M.shape[1] if left else M.shape[0], dtype=M.dtype, device=M.device)
    grid = torch.outer(e, ones) if left else torch.outer(ones, e)
    return KroneckerBlock(name, None, Q if left else None, None if left else Q, grid)


def muon_parts(optimizer: torch.optim.Optimizer, names: dict[int, str], batch=None) -> list[PreconditionerPart]:
    """torch Muon, one part per group: P from the Nesterov momentum M̃ = (1 − μ)g + μ·buffer of the last step
    (or the buffer alone once ``.grad`` is gone), see :func:`muon_block`."""
    from torch.optim._muon import _adjust_lr  # the scale torch applies; private but part of the step

    parts = []
    for group in optimizer.param_groups:
        if not group["params"]:
            continue
        mu, nesterov = float(group["momentum"]), bool(group["nesterov"])
        blocks = []
        for p in group["params"]:
            buf = _state(optimizer, p, "momentum_buffer", "Muon")
            M = p.grad.lerp(buf, mu) if nesterov and p.grad is not None else buf
            scale = _adjust_lr(1.0, group["adjust_lr_fn"], p.shape)
            blocks.append(muon_block(names[id(p)], M, group["ns_steps"], group["ns_coefficients"], scale,
                                     group["eps"]))
        ps = group["params"]
        op = KroneckerOperator(blocks, [names[id(p)] for p in ps], [p.shape for p in ps])
        parts.append(PreconditionerPart(op, group_lr(group), *torch_stability(optimizer, group)))
    return parts


TORCH_PARTS = {torch.optim.Adam: adam_parts, torch.optim.AdamW: adam_parts, torch.optim.SGD: sgd_parts,
               torch.optim.Muon: muon_parts}


def preconditioner_parts(optimizer: torch.optim.Optimizer, model: nn.Module | None = None,
                         names: dict[int, str] | None = None, batch=None) -> list[PreconditionerPart]:
    """The parts of ``optimizer``'s step (module doc); optimizers of this package implement
    ``_preconditioner_parts(names, batch)``, torch's Adam/AdamW/SGD/Muon are handled here. ``batch``: a curvature
    batch for metrics that are not kept in the optimizer's state (NGCG restored from a checkpoint)."""
    names = names if names is not None else parameter_names(optimizer, model)
    own = getattr(optimizer, "_preconditioner_parts", None)
    if own is not None:
        return own(names, batch)
    for cls in type(optimizer).__mro__:
        if cls in TORCH_PARTS:
            return TORCH_PARTS[cls](optimizer, names)
    torch_stability(optimizer, optimizer.param_groups[0])  # raises the one-line error
    return []


def _combine(parts: Sequence[PreconditionerPart], scale, names: Sequence[str] | None,
             model: nn.Module | None) -> CurvatureOperator:
    """⊕ scale(part)·P_part on ``names`` (default: the parts' parameters in model order)."""
    ops = [op if s == 1.0 else ScaledOperator(op, s) for op, s in ((p.operator, scale(p)) for p in parts)]
    shapes = {n: s for op in ops for n, s in zip(op.names, op.shapes)}
    if names is None:
        order = [n for n, _ in model.named_parameters()] if model is not None else list(shapes)
        names = [n for n in order if n in shapes]
    if len(ops) == 1 and ops[0].names == list(names):
        return ops[0]
    return BlockDiagonalOperator.by_names(ops, list(names), [shapes[n] for n in names])


def preconditioner(optimizer: torch.optim.Optimizer, model: nn.Module | None = None,
                   names: Sequence[str] | None = None, batch=None) -> CurvatureOperator:
    """P of the last step (module doc) on ``names`` (default: the optimizer's parameters in model order), with
    every part rescaled to the first part's learning rate η₀: the whole update is −η₀ P⁻¹ d."""
    parts = preconditioner_parts(optimizer, model, batch=batch)
    lr0 = parts[0].lr
    return _combine(parts, lambda p: lr0 / p.lr, names, model)


def stability_operator(optimizer: torch.optim.Optimizer, model: nn.Module | None = None,
                       names: Sequence[str] | None = None, batch=None
                       ) -> tuple[CurvatureOperator, list[PreconditionerPart]]:
    """S = ⊕ P_i c_i/η_i (stable iff λ_max(S⁻¹H) < 1) and the parts it was built from."""
    parts = preconditioner_parts(optimizer, model, batch=batch)
    if any(not p.lr > 0 for p in parts):
        raise InfogeomError("a learning rate of 0 has no edge of stability")
    return _combine(parts, lambda p: p.factor / p.lr, names, model), parts


class Preconditioned:
    """Mixin: ``optimizer.preconditioner(model=None, names=None)`` (see :func:`preconditioner`)."""

    def preconditioner(self, model: nn.Module | None = None, names: Sequence[str] | None = None, batch=None
                       ) -> CurvatureOperator:
        return preconditioner(self, model, names, batch)  # type: ignore[arg-type]
