"""Hessian of the training loss as a matrix-free operator (double backward).

H = ∇²_θ L(θ), L the mean token cross-entropy of ``batch`` (the loss the trainer minimizes).
Construction runs one forward/backward with ``create_graph=True`` (math attention path, eval mode) and keeps the
gradient graph; each product H V costs one extra backward per column (≈ 2–3 gradients).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn as nn

from ..models.gpt import lm_loss
from .functional import Batch, curvature_mode, loss_function, select_parameters
from .operator import CurvatureOperator, flatten, unflatten


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
        inputs = list(self._params.values())
        cols = []
        for j in range(V.shape[1]):
            vs = unflatten(V[:, j], self.shapes)
            hv = torch.autograd.grad(self._grad, inputs, grad_outputs=vs, retain_graph=True, allow_unused=True)
            cols.append(flatten([torch.zeros_like(p) if h is None else h for h, p in zip(hv, inputs)]))
        return torch.stack(cols, dim=1)
