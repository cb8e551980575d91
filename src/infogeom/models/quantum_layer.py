"""A quantum layer for language models: features → angle embedding → parametrized circuit → ⟨Z⟩ → features.

    a = s · tanh(W_in x + b_in)             [..., n_qubits] angles (s = ``input_scale``, default π)
    z_w = ⟨ψ(θ; a)| Z_w |ψ(θ; a)⟩,  ψ(θ; a) = U_ansatz(θ) R_embed(a) |0…0⟩
    y = W_out z + b_out                     [..., out_features]

All tokens of a batch are simulated as one batch of states (cost O(B·T·gates·2^n)); gradients flow to θ, W_in
and W_out by autograd through the simulator. :func:`add_quantum_layers` swaps such layers into a :class:`GPT`
in place of the MLP or the q/k/v projection of chosen blocks (as in hybrid quantum transformers). For quantum
natural gradient each layer remembers (a subsample of) its last input angles, so the optimizer can evaluate
the circuit's metric averaged over the data, E_a g(θ; a) (:mod:`infogeom.geometry.quantum_layers`, optimizer
``"qng"``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn

from ..errors import InfogeomError
from ..operators import capture_active
from ..quantum.ansatz import angle_embedding, basic_entangler, hardware_efficient
from ..quantum.circuit import Circuit
from .gpt import GPT

ANSATZE = ("hardware-efficient", "basic-entangler")
TARGETS = ("mlp", "qkv")


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
        if self.record_inputs and capture_active():  # a live recorder: not inside curvature computations
            self.last_angles = a[: self.record_inputs].detach()
        z = self.readout(self.weight, a).to(x.dtype)
        return self.proj_out(z.reshape(*x.shape[:-1], self.n_qubits))


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
