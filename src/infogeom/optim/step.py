"""The two pieces of ``Optimizer.step`` that every optimizer here shares: the closure prologue of the torch
contract and the decoupled weight-decay update θ ← θ(1 − η·wd) − η u."""

from __future__ import annotations

from collections.abc import Callable

import torch


def closure_loss(closure: Callable[[], torch.Tensor] | None) -> torch.Tensor | None:
    """Re-evaluate the model with gradients enabled when a closure is given (``torch.optim`` contract)."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


def decoupled_update_(p: torch.Tensor, update: torch.Tensor, lr: float, weight_decay: float) -> None:
    """θ ← θ(1 − η·wd) − η·u in place (decoupled weight decay, Loshchilov & Hutter 2019)."""
    if weight_decay:
        p.mul_(1 - lr * weight_decay)
    p.add_(update.to(p.dtype), alpha=-lr)
