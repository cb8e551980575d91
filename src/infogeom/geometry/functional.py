"""Models as functions of their parameters, for ``torch.func`` and double-backward curvature products.

A *batch* is ``(x, y)`` with ``x, y`` long tensors ``[B, T]`` (inputs and next-token targets); the model maps
``x -> logits [B, T, V]``. Tied weights appear once (``named_parameters`` de-duplicates them).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn as nn
from torch.func import functional_call

from ..errors import InfogeomError
from ..models.gpt import lm_loss, math_attention
from ..operators import suspend_captures

Batch = tuple[torch.Tensor, torch.Tensor]


def select_parameters(model: nn.Module, names: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
    """Trainable parameters by name (all of them when ``names`` is None), in ``named_parameters`` order."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if names is None:
        return params
    missing = [n for n in names if n not in params]
    if missing:
        raise InfogeomError(f"unknown parameter name(s): {', '.join(missing)}")
    return {n: params[n] for n in names}


@contextlib.contextmanager
def curvature_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode (no dropout), the math attention path and live captures suspended
    (:func:`~infogeom.operators.suspend_captures`), restored afterwards. Every curvature computation runs in it."""
    was_training = model.training
    model.eval()
    try:
        with math_attention(model), suspend_captures():
            yield model
    finally:
        model.train(was_training)


def logits_function(model: nn.Module, x: torch.Tensor) -> Callable[[dict[str, torch.Tensor]], torch.Tensor]:
    """``params -> logits [B, T, V]`` for fixed inputs ``x`` (other parameters and buffers as in ``model``)."""
    def f(params: dict[str, torch.Tensor]) -> torch.Tensor:
        return functional_call(model, params, (x,), strict=False)
    return f


def loss_function(model: nn.Module, batch: Batch,
                  loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = lm_loss
                  ) -> Callable[[dict[str, torch.Tensor]], torch.Tensor]:
    """``params -> mean token cross-entropy`` on ``batch``."""
    x, y = batch
    f = logits_function(model, x)
    return lambda params: loss(f(params), y)
