"""Hessian of the training loss as a matrix-free operator (double backward).

H = ∇²_θ L(θ), L the mean token cross-entropy of ``batch`` (the loss the trainer minimizes).
Construction runs one forward/backward with ``create_graph=True`` (math attention path, eval mode) and keeps the
gradient graph; a product H V [P, k] is one vmapped backward over the k columns (≈ 2–3 gradients each).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn as nn

from ..models.gpt import lm_loss
from ..operators import CurvatureOperator, flatten, unflatten
from .functional import Batch, curvature_mode, loss_function, select_parameters


class HessianOperator(CurvatureOperator):
    """``H = ∂²L/∂θ²`` of ``loss(model(x), y)`` w.r.t. the selected parameters (default: all trainable)."""

    def __init__(self, model: nn.Module, batch: Batch, names: Sequence[str] | None = None,
                 loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = lm_loss):
        params = select_parameters(model, names)
        self.names = list(params)
        self.shapes = [p.shape for p in params.values()]
        first = next(iter(params.values()))
        self.dtype, self.device = first.dtype, first.device
        self._params = {n: p.detach().clone().requires_grad_(True) for n, p in params.items()}
        with curvature_mode(model):
            self.loss = loss_function(model, batch, loss)(self._params)
            self._grad = torch.autograd.grad(self.loss, list(self._params.values()), create_graph=True)
        self.gradient = flatten([g.detach() for g in self._grad])

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        """All k columns in one vmapped double backward (``is_grads_batched``)."""
        inputs = list(self._params.values())
        vs = [t.movedim(-1, 0) for t in unflatten(V, self.shapes)]  # [k, *shape] each
        hv = torch.autograd.grad(self._grad, inputs, grad_outputs=vs, retain_graph=True, allow_unused=True,
                                 is_grads_batched=True)
        return torch.cat([(torch.zeros(V.shape[1], p.numel(), dtype=V.dtype, device=V.device) if h is None
                           else h.reshape(V.shape[1], -1)) for h, p in zip(hv, inputs)], dim=1).T
