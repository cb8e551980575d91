"""Metrics of the quantum layers of a model (:class:`~infogeom.models.quantum_layer.QuantumLayer`), for quantum
natural gradient (optimizer ``"qng"``).

- :func:`layer_metric`: a layer's circuit metric on its ``weight`` averaged over input angles, E_a g(θ; a)
  (Fubini–Study g, or the QFI 4g; PennyLane's block-diagonal approximation with ``approx="block-diag"``);
- :func:`model_metric_fn`: a closure returning the metric over all quantum layers of a model — block-diagonal
  across layers for ``"fubini-study"``/``"qfi"``, or the pull-back of the output distribution's Fisher,
  G = (1/N) Σ_tokens Jᵀ (diag p − p pᵀ) J with J = ∂logits/∂(circuit weights) (``"pullback"``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn
from torch.func import functional_call

from ..errors import InfogeomError
from ..models.quantum_layer import QuantumLayer, quantum_layers
from ..operators import capture_active
from ..quantum.operators import circuit_metric
from ..quantum.pullback import pullback_metric
from .functional import curvature_mode

METRICS = ("fubini-study", "qfi", "pullback")


def layer_metric(layer: QuantumLayer, kind: str = "fubini-study", approx: str | None = None,
                 angles: torch.Tensor | None = None) -> torch.Tensor:
    """The circuit's metric ``[P, P]`` on ``layer.weight`` averaged over ``angles`` (default: the recorded
    ones), float64: ``"fubini-study"`` g, ``"qfi"`` 4g."""
    a = layer.last_angles if angles is None else angles
    if a is None:
        raise InfogeomError("no recorded inputs: run a forward pass first (record_inputs > 0)")
    return circuit_metric(layer.circuit, layer.weight.detach().double(), a.double(),
                          "qfi" if kind == "qfi" else "fubini-study", approx)


class InputRecorder:
    """A live forward pre-hook keeping the first ⌈max_tokens / T⌉ sequences of the model's last training input
    (silent inside curvature computations); :meth:`remove` takes the hook off."""

    def __init__(self, model: nn.Module, max_tokens: int):
        self.max_tokens, self.x = max_tokens, None
        self.handle = model.register_forward_pre_hook(self)

    def __call__(self, module, args):
        if module.training and capture_active():
            x = args[0]
            self.x = x[: max(1, -(-self.max_tokens // x.shape[-1]))].detach()

    def remove(self) -> None:
        self.handle.remove()


def model_metric_fn(model: nn.Module, metric: str = "fubini-study", approx: str | None = None,
                    max_inputs: int = 64) -> Callable[[], torch.Tensor]:
    """Metric closure for :class:`~infogeom.optim.qng.QuantumNaturalGradient` over the ``weight`` s of all
    quantum layers of ``model`` (block-diagonal across layers).

    ``"fubini-study"`` / ``"qfi"``: each circuit's metric averaged over its last ``max_inputs`` input angles
    (token positions). ``"pullback"``: G = (1/N) Σ_tokens Jᵀ (diag p − p pᵀ) J with J = ∂logits/∂(circuit
    weights) on the first ⌈max_inputs / T⌉ sequences of the model's last training input (forward-mode
    autodiff, one pass per weight)."""
    if metric not in METRICS:
        raise InfogeomError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    if max_inputs < 1:
        raise InfogeomError(f"max_inputs must be a positive integer, got {max_inputs}")
    layers = quantum_layers(model)
    if metric != "pullback":
        for layer in layers:
            layer.record_inputs = max_inputs
        return lambda: torch.block_diag(*[layer_metric(layer, metric, approx) for layer in layers])
    if approx is not None:
        raise InfogeomError("approx applies to the fubini-study and qfi metrics, not to pullback")
    names = {id(p): n for n, p in model.named_parameters()}
    keys = [names[id(layer.weight)] for layer in layers]
    sizes = [layer.weight.numel() for layer in layers]
    recorder = InputRecorder(model, max_inputs)

    def metric_fn() -> torch.Tensor:
        if recorder.x is None:
            raise InfogeomError("no recorded inputs: run a training forward pass first")
        flat = torch.cat([layer.weight.detach().reshape(-1) for layer in layers])

        def logits(theta):
            return functional_call(model, dict(zip(keys, theta.split(sizes))), (recorder.x,), strict=False)

        with curvature_mode(model):  # eval mode, attention without fused kernels (forward-mode AD)
            return pullback_metric(logits, flat, "softmax")

    return metric_fn
