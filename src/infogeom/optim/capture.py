"""The training batch, seen from inside the optimizer, without trainer changes.

A forward pre-hook on the model records the input ``x [B, T]`` of the last forward run in training mode with
grad enabled (evaluation forwards are ignored), and a tensor hook on its output records ``∂L/∂logits`` when
the trainer's backward passes through. For the softmax cross-entropy the output gradient is ``c (p − e_y)``
with ``c > 0`` (mean over tokens, gradient-accumulation scaling), so the observed targets are recovered
exactly as ``argmin_v ∂L/∂z_v``: the only negative entry of each row. A live capture: silent inside curvature
computations (:mod:`infogeom.operators.hooks`); :meth:`BatchCapture.remove` removes its hooks.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import InfogeomError
from ..operators import capture_active


class BatchCapture:
    """Records ``x`` and ``∂L/∂logits`` of the last training forward/backward of ``model``."""

    def __init__(self, model: nn.Module):
        self.x: torch.Tensor | None = None
        self.grad_logits: torch.Tensor | None = None
        self._handles = [model.register_forward_pre_hook(self._pre_hook),
                         model.register_forward_hook(self._hook)]

    def _pre_hook(self, module: nn.Module, args) -> None:
        if module.training and torch.is_grad_enabled() and capture_active():
            self.x, self.grad_logits = args[0].detach(), None

    def _hook(self, module: nn.Module, args, output: torch.Tensor) -> None:
        if module.training and torch.is_grad_enabled() and output.requires_grad and capture_active():
            output.register_hook(self._record)

    def _record(self, grad: torch.Tensor) -> None:
        self.grad_logits = grad.detach()

    def batch(self, max_sequences: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)`` of the last backward, at most ``max_sequences`` sequences (the first ones)."""
        if self.x is None or self.grad_logits is None:
            raise InfogeomError("the optimizer saw no training forward/backward of its model before step()")
        n = self.x.shape[0] if max_sequences is None else min(int(max_sequences), self.x.shape[0])
        return self.x[:n], self.grad_logits[:n].argmin(dim=-1)

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
