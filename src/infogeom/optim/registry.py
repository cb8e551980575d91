"""Optimizers by name, so the trainer, CLI and benchmarks build any of them the same way.

A builder has the signature ``builder(model, lr, weight_decay, **options) -> torch.optim.Optimizer`` (an optimizer
class with that constructor is its own builder: ``@register_optimizer("kfac") class KFAC``); options come from the
``optim.options`` table of a training config.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

from ..errors import InfogeomError
from .params import adamw_groups

Builder = Callable[..., torch.optim.Optimizer]
OPTIMIZERS: dict[str, Builder] = {}


def register_optimizer(name: str) -> Callable[[Builder], Builder]:
    def deco(builder: Builder) -> Builder:
        OPTIMIZERS[name] = builder
        return builder
    return deco


@register_optimizer("adamw")
def _adamw(model: nn.Module, lr: float, weight_decay: float, betas=(0.9, 0.95), eps: float = 1e-8, **kw):
    return torch.optim.AdamW(adamw_groups(model, (), weight_decay), lr=lr, betas=tuple(betas), eps=eps, **kw)


@register_optimizer("sgd")
def _sgd(model: nn.Module, lr: float, weight_decay: float, momentum: float = 0.0, **kw):
    return torch.optim.SGD(adamw_groups(model, (), weight_decay), lr=lr, momentum=momentum, **kw)


def build_optimizer(name: str, model: nn.Module, lr: float, weight_decay: float = 0.0, **options
                    ) -> torch.optim.Optimizer:
    """Build the optimizer registered as ``name`` for ``model``'s trainable parameters."""
    if name not in OPTIMIZERS:
        raise InfogeomError(f"unknown optimizer {name!r}; choose one of {', '.join(sorted(OPTIMIZERS))}")
    if not lr > 0:
        raise InfogeomError(f"learning rate must be positive, got {lr}")
    if weight_decay < 0:
        raise InfogeomError(f"weight decay must be non-negative, got {weight_decay}")
    try:
        return OPTIMIZERS[name](model, lr=lr, weight_decay=weight_decay, **options)
    except TypeError as exc:
        raise InfogeomError(f"bad options for optimizer {name!r}: {exc}") from None
