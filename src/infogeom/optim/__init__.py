"""Optimizers (all ``torch.optim.Optimizer``s) and the name registry used by the trainer and CLI."""

from .registry import OPTIMIZERS, build_optimizer, register_optimizer

__all__ = ["OPTIMIZERS", "build_optimizer", "register_optimizer"]
