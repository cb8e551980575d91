"""Hessian of the training loss as a matrix-free operator (double backward).

H = ∇²_θ L(θ), L the mean token cross-entropy of ``batch`` (the loss the trainer minimizes).
Construction runs one forward/backward with ``create_graph=True`` (math attention path, eval mode) and keeps the
gradient graph; a product H V [P, k] is k backward passes through that graph (≈ 2.5 gradients each), one per
column on CPU — there a vmapped backward over all k columns (``is_grads_batched``) costs 1.5× more per column
(default 0.8M GPT, batch 8×128, 1 thread, machine loaded: 0.53 s vs 0.79 s per column; 210k GPT, 2 quiet threads:
0.096 s vs 0.111 s) — and vmapped on accelerators.
:class:`FiniteDifferenceHessian` needs no double backward: central differences of two gradients per column.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn as nn

from ..models.gpt import lm_loss
from ..operators import CurvatureOperator, flatten, suspend_captures, unflatten
from .functional import Batch, curvature_mode, loss_function, select_parameters


class HessianOperator(CurvatureOperator):
    """``H = ∂²L/∂θ²`` of ``loss(model(x), y)`` w.r.t. the selected parameters (default: all trainable)."""

    def __init__(self, model: nn.Module, batch: Batch, names: Sequence[str] | None = None,
                 loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = lm_loss, batched: bool | None = None):
        """``batched``: one vmapped backward for all columns of a product (default: only off the CPU)."""
        params = select_parameters(model, names)
        self._set_layout(params)
        self.batched = self.device.type != "cpu" if batched is None else batched
        self._params = {n: p.detach().clone().requires_grad_(True) for n, p in params.items()}
        with curvature_mode(model):
            self.loss = loss_function(model, batch, loss)(self._params)
            self._grad = torch.autograd.grad(self.loss, list(self._params.values()), create_graph=True)
        self.gradient = flatten([g.detach() for g in self._grad])

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        """H V: one backward of the stored gradient graph per column, or all k vmapped (``batched``)."""
        inputs = list(self._params.values())
        if self.batched and V.shape[1] > 1:
            vs = [t.movedim(-1, 0) for t in unflatten(V, self.shapes)]  # [k, *shape] each
            hv = torch.autograd.grad(self._grad, inputs, grad_outputs=vs, retain_graph=True, allow_unused=True,
                                     is_grads_batched=True)
            return torch.cat([(torch.zeros(V.shape[1], p.numel(), dtype=V.dtype, device=V.device) if h is None
                               else h.reshape(V.shape[1], -1)) for h, p in zip(hv, inputs)], dim=1).T
        out = torch.empty_like(V)  # written column by column: memory P·k for the result, not 3·P·k
        for i in range(V.shape[1]):
            self._column(V[:, i].contiguous(), out[:, i])  # contiguous grad_outputs
        return out

    def _column(self, v: torch.Tensor, out: torch.Tensor) -> None:
        """``out [P]`` (a strided column is fine) ← H v."""
        hv = torch.autograd.grad(self._grad, list(self._params.values()), grad_outputs=unflatten(v, self.shapes),
                                 retain_graph=True, allow_unused=True)
        for block, h in zip(out.split([p.numel() for p in self._params.values()]), hv):  # views of ``out``
            if h is None:
                block.zero_()
            else:
                block.copy_(h.reshape(-1))

    def __repr__(self) -> str:
        return (f"HessianOperator(dim={self.dim}, {'vmapped' if self.batched else 'one backward per column'}, "
                f"{self.dtype}, {self.device})")


#: Central-difference step per dtype, relative to the parameters' scale: ≈ ε^{1/3} (ε the dtype's machine
#: epsilon) balances the O(h²) truncation against the O(ε/h) round-off of the two gradients.
FD_STEPS = {torch.float64: 1e-5, torch.float32: 5e-3, torch.bfloat16: 1e-1, torch.float16: 5e-2}


class FiniteDifferenceHessian(CurvatureOperator):
    """``H v ≈ ‖v‖ (∇L(θ + h v̂) − ∇L(θ − h v̂)) / 2h`` with v̂ = v/‖v‖: two plain gradients per column, no double
    backward, so it works with any attention kernel (SDPA/flash: the model's own path is kept) and with code
    that cannot be differentiated twice. Error O(h² ‖∇³L‖) + O(ε/h); ``step`` h defaults to
    ``FD_STEPS[dtype] · max(1, rms(θ))`` (measured relative error on a tiny GPT: float64 7e-10, float32 9e-4;
    bf16 only a rough estimate). Eval mode (no dropout); ``gradient``/``loss`` at θ as in :class:`HessianOperator`.
    """

    def __init__(self, model: nn.Module, batch: Batch, names: Sequence[str] | None = None,
                 loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = lm_loss, step: float | None = None):
        params = select_parameters(model, names)
        self._set_layout(params)
        self._model, self._f = model, loss_function(model, batch, loss)
        self._theta = flatten([p.detach() for p in params.values()]).clone()
        rms = float(self._theta.square().mean().sqrt())
        self.step = float(step) if step is not None else FD_STEPS.get(self.dtype, 5e-3) * max(1.0, rms)
        self.gradient, self.loss = self._gradient(self._theta)

    def _gradient(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        params = {n: t.requires_grad_(True) for n, t in zip(self.names, unflatten(theta.clone(), self.shapes))}
        was_training = self._model.training
        self._model.eval()
        try:
            with suspend_captures(), torch.enable_grad():
                value = self._f(params)
                grads = torch.autograd.grad(value, list(params.values()), allow_unused=True)
        finally:
            self._model.train(was_training)
        return flatten([torch.zeros_like(p) if g is None else g for g, p in zip(grads, params.values())]), \
            value.detach()

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        cols = []
        for v in V.T:
            norm = torch.linalg.vector_norm(v)
            if norm == 0:
                cols.append(torch.zeros_like(v))
                continue
            d = v * (self.step / norm)
            plus, minus = self._gradient(self._theta + d)[0], self._gradient(self._theta - d)[0]
            cols.append((plus - minus) * (norm / (2 * self.step)))
        return torch.stack(cols, dim=1)
