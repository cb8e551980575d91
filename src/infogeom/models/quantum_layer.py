"""A quantum layer for language models: features → angle embedding → parametrized circuit → ⟨Z⟩ → features.

    a = s · tanh(W_in x + b_in)             [..., n_qubits] angles (s = ``input_scale``, default π)
    z_w = ⟨ψ(θ; a)| Z_w |ψ(θ; a)⟩,  ψ(θ; a) = U_ansatz(θ) R_embed(a) |0…0⟩
    y = W_out z + b_out                     [..., out_features]

All tokens of a batch are simulated as one batch of states (cost O(B·T·gates·2^n)); gradients flow to θ, W_in
and W_out by autograd through the simulator. :func:`add_quantum_layers` swaps such layers into a :class:`GPT`
in place of the MLP or the q/k/v projection of chosen blocks (as in hybrid quantum transformers). For quantum
natural gradient each layer remembers (a subsample of) its last input angles, so the optimizer can evaluate
the circuit's metric averaged over the data, E_a g(θ; a) (:func:`model_metric_fn`, optimizer ``"qng"``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn as nn
from torch.func import functional_call

from ..errors import InfogeomError
from ..geometry.functional import curvature_mode
from ..quantum.ansatz import angle_embedding, basic_entangler, hardware_efficient
from ..quantum.circuit import Circuit
from ..quantum.operators import circuit_metric
from ..quantum.pullback import pullback_metric
from .gpt import GPT

ANSATZE = ("hardware-efficient", "basic-entangler")
TARGETS = ("mlp", "qkv")
METRICS = ("fubini-study", "qfi", "pullback")


def build_circuit(n_qubits: int, n_layers: int, ansatz: str = "hardware-efficient", embedding: str = "Y"
                  ) -> Circuit:
    """Angle embedding of ``n_qubits`` features (rotation ``embedding``) followed by the ansatz."""
    if ansatz not in ANSATZE:
        raise InfogeomError(f"ansatz must be one of {', '.join(ANSATZE)}, got {ansatz!r}")
    c = angle_embedding(Circuit(n_qubits), rotation=embedding)
    builder = hardware_efficient if ansatz == "hardware-efficient" else basic_entangler
    return builder(n_qubits, n_layers, circuit=c)


class QuantumLayer(nn.Module):
    """``[..., in_features] -> [..., out_features]`` through an ``n_qubits`` circuit (see module doc).

    Simulated in complex64 for float32 inputs and complex128 for float64. ``record_inputs``: how many of the
    last forward's angle vectors to keep (detached) for metric evaluation; 0 disables."""

    def __init__(self, in_features: int, out_features: int, n_qubits: int = 4, n_layers: int = 2,
                 ansatz: str = "hardware-efficient", embedding: str = "Y", input_scale: float = math.pi,
                 init_std: float = 0.1, record_inputs: int = 64):
        super().__init__()
        if not 1 <= n_qubits <= 16:
            raise InfogeomError(f"n_qubits must be between 1 and 16, got {n_qubits}")
        self.circuit = build_circuit(n_qubits, n_layers, ansatz, embedding)
        self.n_qubits, self.input_scale, self.record_inputs = n_qubits, float(input_scale), int(record_inputs)
        self.proj_in = nn.Linear(in_features, n_qubits)
        self.weight = nn.Parameter(init_std * torch.randn(self.circuit.n_params))
        self.proj_out = nn.Linear(n_qubits, out_features)
        self.last_angles: torch.Tensor | None = None

    def angles(self, x: torch.Tensor) -> torch.Tensor:
        return self.input_scale * torch.tanh(self.proj_in(x))

    def readout(self, weight: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
        """⟨Z_w⟩ ``[N, n_qubits]`` for circuit weights ``[P]`` and angles ``[N, n_qubits]``."""
        return self.circuit.expval_z(weight, angles)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.angles(x).reshape(-1, self.n_qubits)
        if self.record_inputs:
            self.last_angles = a[: self.record_inputs].detach()
        z = self.readout(self.weight, a).to(x.dtype)
        return self.proj_out(z.reshape(*x.shape[:-1], self.n_qubits))

    def metric(self, kind: str = "fubini-study", approx: str | None = None,
               angles: torch.Tensor | None = None) -> torch.Tensor:
        """The circuit's metric on ``weight`` averaged over ``angles`` (default: the recorded ones), float64:
        ``"fubini-study"`` g, ``"qfi"`` 4g."""
        a = self.last_angles if angles is None else angles
        if a is None:
            raise InfogeomError("no recorded inputs: run a forward pass first (record_inputs > 0)")
        return circuit_metric(self.circuit, self.weight.detach().double(), a.double(),
                              "qfi" if kind == "qfi" else "fubini-study", approx)


def quantum_layers(model: nn.Module) -> list[QuantumLayer]:
    return [m for m in model.modules() if isinstance(m, QuantumLayer)]


def add_quantum_layers(model: GPT, blocks: Sequence[int] = (0,), target: str = "mlp", n_qubits: int = 4,
                       n_layers: int = 2, **layer_options) -> list[QuantumLayer]:
    """Replace ``blocks[i].mlp`` (``target="mlp"``: C → C) or ``blocks[i].attn.c_attn`` (``"qkv"``: C → 3C) of
    the chosen blocks with :class:`QuantumLayer` s (same dtype/device as the model). Returns the new
    layers."""
    if target not in TARGETS:
        raise InfogeomError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
    n_block, C = len(model.blocks), model.config.n_embd
    ref = next(model.parameters())
    layers = []
    for i in blocks:
        if not 0 <= i < n_block:
            raise InfogeomError(f"block index {i} out of range (the model has {n_block} blocks)")
        layer = QuantumLayer(C, C if target == "mlp" else 3 * C, n_qubits, n_layers, **layer_options)
        layer = layer.to(dtype=ref.dtype, device=ref.device)
        if target == "mlp":
            model.blocks[i].mlp = layer
        else:
            model.blocks[i].attn.c_attn = layer
        layers.append(layer)
    return layers


class _InputRecorder:
    """Forward pre-hook keeping the first ⌈max_tokens / T⌉ sequences of the model's last training input."""

    def __init__(self, model: nn.Module, max_tokens: int):
        self.max_tokens, self.x = max_tokens, None
        model.register_forward_pre_hook(self)

    def __call__(self, module, args):
        if module.training:
            x = args[0]
            self.x = x[: max(1, -(-self.max_tokens // x.shape[-1]))].detach()


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
        return lambda: torch.block_diag(*[layer.metric(metric, approx) for layer in layers])
    if approx is not None:
        raise InfogeomError("approx applies to the fubini-study and qfi metrics, not to pullback")
    names = {id(p): n for n, p in model.named_parameters()}
    keys = [names[id(layer.weight)] for layer in layers]
    sizes = [layer.weight.numel() for layer in layers]
    recorder = _InputRecorder(model, max_inputs)

    def metric_fn() -> torch.Tensor:
        if recorder.x is None:
            raise InfogeomError("no recorded inputs: run a training forward pass first")
        flat = torch.cat([layer.weight.detach().reshape(-1) for layer in layers])

        def logits(theta):
            return functional_call(model, dict(zip(keys, theta.split(sizes))), (recorder.x,), strict=False)

        with curvature_mode(model):  # eval mode, attention without fused kernels (forward-mode AD)
            return pullback_metric(logits, flat, "softmax")

    return metric_fn
