"""Hessian-free natural gradient (Martens 2010): truncated CG on damped Fisher-vector products.

Each step solves ``(F + λI) Δ = −g`` approximately with at most ``cg_iters`` CG iterations, where g is the
trainer's gradient (``p.grad``: all-reduced by DDP, clipped, accumulated) and F the exact Fisher
(:class:`~infogeom.geometry.FisherOperator`, matrix-free jvp/vjp, = GGN of the mean token loss) on the first
``curvature_batch`` sequences of the last training micro-batch (captured by :class:`~.capture.BatchCapture`,
so the trainer needs no changes). CG starts from ``warm_start · Δ_prev``. The step is
``θ ← θ(1 − η·wd) + ν η Δ`` per group, where the trust region ν = min(1, √(κ / η₀² ΔᵀFΔ)) (κ = ``kl_clip``,
η₀ the base rate of a schedule) bounds the predicted KL ½η₀²ΔᵀFΔ of a base-rate step by κ/2.

Levenberg–Marquardt adaptation: with the curvature batch's loss L_c, gradient g_c and the applied step s,
ρ = (L_c(θ + s) − L_c(θ)) / (g_cᵀ s + ½ sᵀ F s); λ ← λ·``lm_factor`` if ρ < 1/4, λ ← λ/``lm_factor`` if
ρ > 3/4 (clamped to ``damping_bounds``). A step that raises L_c is undone (ρ < 0, so λ grows). Cost per
step: one forward+vjp graph, ``cg_iters + 1`` Fisher-vector products (≈ 2–3 gradients each on the curvature
batch) and one forward for ρ. Under DDP Fisher-vector products, g_c and the losses are averaged over ranks,
so every rank computes the same Δ.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from torch.optim import Optimizer

from ..errors import InfogeomError
from ..geometry import FisherOperator, curvature_mode
from ..models.gpt import lm_loss
from ..operators import DampedOperator, ScaledOperator, flatten, unflatten
from .capture import BatchCapture
from .distributed import all_reduce_mean_
from .params import adamw_groups
from .preconditioner import Preconditioned, PreconditionerPart, group_lr
from .registry import register_optimizer
from .safety import all_finite, warn_skip
from .step import closure_loss, decoupled_update_


def _mean_over_ranks(t: torch.Tensor) -> torch.Tensor:
    all_reduce_mean_([t])
    return t


@register_optimizer("ngcg")
class NaturalGradientCG(Preconditioned, Optimizer):
    """Natural gradient by CG on ``(F + λI)`` with Levenberg–Marquardt damping (see module doc).

    Optimizer-wide state (damping λ, the damping and trust-region factor ν of the last step, last ρ) lives in
    ``state[first parameter]``; the warm-start direction in each parameter's ``state["delta"]``. Its
    preconditioner is P = (F + λI)/ν on the last curvature batch (``update = −η P⁻¹ g`` when CG converged).
    """

    def __init__(self, model: nn.Module, lr: float = 1.0, weight_decay: float = 0.0, damping: float = 1.0,
                 cg_iters: int = 5, cg_tol: float = 1e-3, curvature_batch: int = 4, warm_start: float = 0.95,
                 lm_factor: float = 1.5, damping_bounds: tuple[float, float] = (1e-4, 1e4),
                 kl_clip: float | None = 1e-2):
        defaults = dict(lr=lr, weight_decay=weight_decay, damping=damping, cg_iters=int(cg_iters),
                        cg_tol=cg_tol, curvature_batch=int(curvature_batch), warm_start=warm_start,
                        lm_factor=lm_factor, damping_bounds=tuple(damping_bounds),
                        kl_clip=kl_clip)
        super().__init__(adamw_groups(model, (), weight_decay), defaults)
        names = {id(p): n for n, p in model.named_parameters()}
        self.model = model
        self._params = [p for g in self.param_groups for p in g["params"]]
        self._names = [names[id(p)] for p in self._params]
        self.capture = BatchCapture(model)
        self._fisher: FisherOperator | None = None

    def _global(self) -> dict:
        st = self.state[self._params[0]]
        st.setdefault("damping", float(self.defaults["damping"]))
        return st

    def _skip(self, st: dict, reason: str) -> None:
        d = self.defaults
        st["damping"] = min(st["damping"] * d["lm_factor"] ** 2, d["damping_bounds"][1])
        warn_skip("ngcg", reason, st["damping"])

    def _stability(self) -> tuple[float, str]:
        """No momentum (the warm start only seeds CG): c = 2."""
        return 2.0, "ngcg"

    def _preconditioner_parts(self, names: dict[int, str], batch=None) -> list[PreconditionerPart]:
        st = self._global()
        F = self._fisher if batch is None else None
        if F is None:
            if batch is None:
                raise InfogeomError("ngcg: its Fisher is not kept in the checkpoint; give a curvature batch")
            with torch.enable_grad():
                F = FisherOperator(self.model, batch, kind="exact", names=self._names)
        P = ScaledOperator(DampedOperator(F, st.get("step_damping", st["damping"])), 1.0 / st.get("nu", 1.0))
        P.names = [names[id(p)] for p in self._params]  # relabel the wrapper; the stored Fisher stays as it is
        return [PreconditionerPart(P, group_lr(self.param_groups[0]), *self._stability())]

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure_loss(closure)
        st, d = self._global(), self.defaults
        grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in self._params]
        if not all_finite(grads):
            self._skip(st, "non-finite gradient")
            return loss
        x, y = self.capture.batch(d["curvature_batch"])
        with torch.enable_grad():
            op = FisherOperator(self.model, (x, y), kind="exact", names=self._names)
        self._fisher = op  # the metric of this step (its preconditioner); not saved in checkpoints
        damping = st["damping"]

        def fvp(v: torch.Tensor) -> torch.Tensor:
            return _mean_over_ranks(op.matvec(v))

        shapes = [p.shape for p in self._params]
        prev = [self.state[p].get("delta") for p in self._params]
        x0 = None if any(v is None for v in prev) else d["warm_start"] * flatten(prev)
        delta = op.solve(-flatten(grads).to(op.dtype), damping, tol=d["cg_tol"], maxiter=d["cg_iters"], x0=x0,
                         reduce=_mean_over_ranks)
        if not all_finite([delta]):
            self._skip(st, "conjugate gradient diverged")
            return loss
        lrs = torch.cat([torch.full((p.numel(),), g["lr"], dtype=delta.dtype, device=delta.device)
                         for g in self.param_groups for p in g["params"]])
        s = lrs * delta
        quad = s @ fvp(s)
        nu = 1.0
        if d["kl_clip"] is not None and quad > 0:  # at the base rate; a schedule scales every group alike
            g0 = self.param_groups[0]
            ratio = g0["lr"] / g0.get("initial_lr", g0["lr"])
            nu = min(1.0, math.sqrt(d["kl_clip"] / float(quad)) * ratio) if ratio > 0 else 1.0
        s = nu * s
        st.update(step_damping=damping, nu=nu)
        stats = torch.stack([op.loss, op.gradient @ s + 0.5 * nu ** 2 * quad])
        old = [p.detach().clone() for p in self._params]
        groups = {id(p): g for g in self.param_groups for p in g["params"]}
        for p, direction in zip(self._params, unflatten(-nu * delta, shapes)):  # s = −η·direction per group
            decoupled_update_(p, direction, groups[id(p)]["lr"], groups[id(p)]["weight_decay"])
        with curvature_mode(self.model):
            new_loss = lm_loss(self.model(x), y)
        stats = torch.cat([stats, new_loss[None].to(stats.dtype)])
        all_reduce_mean_([stats])
        old_loss, predicted, new_loss = stats.tolist()
        finite = all_finite([stats])
        if not finite or new_loss > old_loss:  # reject: the loss went up on the curvature batch
            for p, o in zip(self._params, old):
                p.copy_(o)
            if not finite:
                self._skip(st, "non-finite loss after the step")
                return loss
        rho = (new_loss - old_loss) / predicted if predicted < 0 else -1.0
        low, high = d["damping_bounds"]
        if rho < 0.25:
            damping *= d["lm_factor"]
        elif rho > 0.75:
            damping /= d["lm_factor"]
        st.update(damping=min(max(damping, low), high), rho=rho, rejected=new_loss > old_loss)
        for p, v in zip(self._params, unflatten(delta, shapes)):
            self.state[p]["delta"] = v.to(p.dtype)
        return loss

