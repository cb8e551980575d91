"""A model's loss as a function of one flat parameter vector (for ascent steps, landscapes,
interpolation)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn as nn
from torch.func import functional_call

from ..geometry.functional import Batch, select_parameters
from ..models.gpt import lm_loss
from ..operators import flatten, suspend_captures, unflatten

FlatLoss = Callable[[torch.Tensor], torch.Tensor]


class FlatModel:
    """``model``'s trainable parameters ``names`` (default all) as one flat vector ``theta [P]`` and
    :meth:`loss` ``θ -> loss(model_θ(x), y)`` (eval mode, no dropout; other parameters as in ``model``)."""

    def __init__(
        self,
        model: nn.Module,
        names: Sequence[str] | None = None,
        loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = lm_loss,
    ):
        params = select_parameters(model, names)
        self.model, self.loss_fn = model, loss
        self.names = list(params)
        self.shapes = [p.shape for p in params.values()]
        self.theta = flatten([p.detach() for p in params.values()])

    def params(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        return dict(zip(self.names, unflatten(theta, self.shapes)))

    def loss(self, theta: torch.Tensor, batch: Batch) -> torch.Tensor:
        x, y = batch
        was_training = self.model.training
        self.model.eval()
        try:
            with suspend_captures():  # an optimizer's hooks must not see these evaluations
                return self.loss_fn(functional_call(self.model, self.params(theta), (x,), strict=False), y)
        finally:
            self.model.train(was_training)

    def loss_function(self, batch: Batch) -> FlatLoss:
        return lambda theta: self.loss(theta, batch)


def value_and_grad(f: FlatLoss, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(f(θ), ∇f(θ))`` by one reverse pass."""
    theta = theta.detach().requires_grad_(True)
    value = f(theta)
    (g,) = torch.autograd.grad(value, theta)
    return value.detach(), g
