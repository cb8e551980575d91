"""Quantum natural gradient (Stokes et al. 2020): θ ← θ − η (G + λI)^+ ∇L.

G is any metric on the optimizer's parameters supplied by a ``metric_fn`` closure evaluated at the current
parameters: the Fubini–Study metric of a circuit (full or PennyLane's block-diagonal approximation), the QFI,
or the pull-back G = Jᵀ F_out J of a hybrid model's output distribution (see :mod:`infogeom.quantum`). It is
recomputed every ``recompute_every`` steps; the damped pseudo-inverse (G + λI)^+ (Hermitian
eigendecomposition, O(P³)) is kept in the optimizer state, so checkpoints resume with the same preconditioner
and each step costs one O(P²) matvec.

Registered as ``"qng"`` for models with quantum layers (:mod:`infogeom.models.quantum_layer`): QNG on the
circuit weights, AdamW on every other parameter (one :class:`~infogeom.optim.hybrid.HybridOptimizer`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn
from torch.optim import Optimizer

from ..errors import InfogeomError
from ..operators import CurvatureOperator, DenseOperator
from .hybrid import HybridOptimizer
from .params import adamw_groups
from .preconditioner import Preconditioned, PreconditionerPart, group_lr
from .registry import register_optimizer
from .step import closure_loss, decoupled_update_

MetricFn = Callable[[], "torch.Tensor | CurvatureOperator"]


class QuantumNaturalGradient(Preconditioned, Optimizer):
    """θ ← (1 − η·wd) θ − η (G + λI)^+ ∇L over all parameters of the optimizer (flattened in group order).

    ``metric_fn()`` returns G as a ``[P, P]`` tensor or a :class:`CurvatureOperator` (P = total numel),
    evaluated at the current parameter values (a closure over the parameters). ``damping`` λ ≥ 0 (λ = 0:
    Moore–Penrose pseudo-inverse, as Stokes et al.), ``recompute_every`` k: G is refreshed on steps 0, k, 2k,
    …. Per-group
    ``lr`` (schedulers work as usual); ``damping`` and ``recompute_every`` are read from the first group."""

    def __init__(self, params, metric_fn: MetricFn, lr: float = 0.01, damping: float = 1e-3,
                 recompute_every: int = 1, weight_decay: float = 0.0):
        if not lr > 0:
            raise InfogeomError(f"learning rate must be positive, got {lr}")
        if damping < 0:
            raise InfogeomError(f"damping must be non-negative, got {damping}")
        if int(recompute_every) < 1:
            raise InfogeomError(f"recompute_every must be a positive integer, got {recompute_every}")
        if not callable(metric_fn):
            raise InfogeomError("QuantumNaturalGradient needs a metric_fn: a callable returning the metric")
        super().__init__(params, dict(lr=lr, damping=float(damping), recompute_every=int(recompute_every),
                                      weight_decay=weight_decay))
        self.metric_fn = metric_fn

    def _params(self) -> list[torch.Tensor]:
        return [p for g in self.param_groups for p in g["params"]]

    def _metric(self, P: int) -> torch.Tensor:
        """The damped, symmetrized metric G + λI ``[P, P]`` at the current parameters."""
        G = self.metric_fn()
        if isinstance(G, CurvatureOperator):
            G = G.to_dense()
        if G.shape != (P, P):
            raise InfogeomError(f"metric_fn returned shape {tuple(G.shape)}; optimizer has {P} parameters")
        G = 0.5 * (G + G.T)
        return G + self.param_groups[0]["damping"] * torch.eye(P, dtype=G.dtype, device=G.device)

    def _stability(self) -> tuple[float, str]:
        """No momentum: c = 2."""
        return 2.0, "qng"

    def _preconditioner_parts(self, names: dict[int, str], batch=None) -> list[PreconditionerPart]:
        """P = G + λI of the last refresh (with λ = 0 and a singular G the step uses the pseudo-inverse, which
        P⁻¹ matches on the range of G)."""
        params = self._params()
        state = self.state[params[0]]
        if "metric" not in state:
            raise InfogeomError("qng: no metric yet; take a step first")
        if len({g["lr"] for g in self.param_groups}) > 1:
            raise InfogeomError("qng: the preconditioner needs one learning rate for all parameter groups")
        metric = state["metric"].to(params[0].dtype)
        op = DenseOperator(metric, [p.shape for p in params], [names[id(p)] for p in params])
        return [PreconditionerPart(op, group_lr(self.param_groups[0]), *self._stability())]

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure_loss(closure)
        params = self._params()
        P = sum(p.numel() for p in params)
        state = self.state[params[0]]
        step = state.get("qng_step", 0)
        if "precond" not in state or step % self.param_groups[0]["recompute_every"] == 0:
            state["metric"] = self._metric(P)
            state["precond"] = torch.linalg.pinv(state["metric"], hermitian=True)
        grad = torch.cat([(torch.zeros_like(p) if p.grad is None else p.grad).reshape(-1) for p in params])
        nat = (state["precond"] @ grad.to(state["precond"].dtype)).to(grad.dtype)
        offset = 0
        for group in self.param_groups:
            for p in group["params"]:
                n = p.numel()
                decoupled_update_(p, nat[offset:offset + n].view_as(p), group["lr"], group["weight_decay"])
                offset += n
        state["qng_step"] = step + 1
        return loss


@register_optimizer("qng")
class QNGAdamW(HybridOptimizer):
    """QNG on the circuit weights of a model's quantum layers, AdamW on every other trainable parameter."""

    def __init__(self, model: nn.Module, lr: float = 1e-3, weight_decay: float = 0.0,
                 metric: str = "fubini-study", approx: str | None = None, damping: float = 1e-3,
                 recompute_every: int = 1, quantum_lr: float | None = None, max_inputs: int = 64,
                 betas=(0.9, 0.95), eps: float = 1e-8):
        from ..geometry.quantum_layers import model_metric_fn
        from ..models.quantum_layer import quantum_layers

        layers = quantum_layers(model)
        if not layers:
            raise InfogeomError("qng: the model has no quantum layers "
                                "(add them with infogeom.models.quantum_layer.add_quantum_layers)")
        weights = [layer.weight for layer in layers]
        if not all(w.requires_grad for w in weights):  # a frozen subset (optim.params) would break the metric
            raise InfogeomError("qng preconditions every quantum layer's weights together: keep all of them "
                                "trainable (optim.params)")
        metric_fn = model_metric_fn(model, metric=metric, approx=approx, max_inputs=max_inputs)
        qng = QuantumNaturalGradient(weights, metric_fn, lr=lr if quantum_lr is None else quantum_lr,
                                     damping=damping, recompute_every=recompute_every)
        groups = adamw_groups(model, weights, weight_decay)
        adamw = torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps)
        super().__init__([qng, adamw])

