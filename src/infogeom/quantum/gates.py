"""Gate library in PennyLane's conventions (wire 0 is the most significant bit of a basis index).

A parametrized gate is defined by its Hermitian generator G alone: U(θ) = exp(−iθG), so ∂U/∂θ = −iG U. For
example RX(θ) = exp(−iθX/2), PhaseShift(φ) = diag(1, e^{iφ}) = exp(−iφ·diag(0, −1)), CRX(θ) =
exp(−iθ|1⟩⟨1|⊗X/2). Fixed gates are a matrix, a diagonal, or a permutation of basis states (applied as a
gather, not a matmul).

Each gate is applied by the cheapest of three paths (see :mod:`infogeom.quantum.simulator`):
``"diag"`` (elementwise phase), ``"perm"`` (index gather) or ``"dense"`` (small matmul on the gate's wires).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

import numpy as np
import torch

from ..errors import InfogeomError

_I2 = np.eye(2)
_X = np.array([[0, 1], [1, 0]], dtype=complex)
_Y = np.array([[0, -1j], [1j, 0]], dtype=complex)
_Z = np.diag([1.0, -1.0]).astype(complex)
_P1 = np.diag([0.0, 1.0]).astype(complex)  # |1⟩⟨1|


@dataclass(frozen=True)
class Gate:
    """A gate on ``n_wires`` wires. ``kind`` is "diag", "perm" or "dense".

    Parametrized gates store ``generator`` (d×d); fixed gates store ``matrix`` (d×d, "dense"), ``diag`` (d) or
    ``perm`` (U|j⟩ = |perm[j]⟩)."""

    name: str
    n_wires: int
    kind: str
    generator: np.ndarray | None = None
    matrix: np.ndarray | None = None
    diag: np.ndarray | None = None
    perm: tuple[int, ...] | None = None

    @property
    def parametrized(self) -> bool:
        return self.generator is not None


def _param(name: str, generator: np.ndarray) -> Gate:
    d = np.asarray(generator, dtype=complex)
    diagonal = np.allclose(d, np.diag(np.diag(d)))
    return Gate(name, int(round(math.log2(d.shape[0]))), "diag" if diagonal else "dense", generator=d)


def _controlled(p: np.ndarray) -> np.ndarray:
    return np.kron(_P1, p)


_H = np.array([[1, 1], [1, -1]], dtype=complex) / math.sqrt(2)
_SX = 0.5 * np.array([[1 + 1j, 1 - 1j], [1 - 1j, 1 + 1j]])

GATES: dict[str, Gate] = {g.name: g for g in [
    # parametrized: U(θ) = exp(−iθG)
    _param("RX", _X / 2), _param("RY", _Y / 2), _param("RZ", _Z / 2),
    _param("PhaseShift", -_P1),
    _param("ControlledPhaseShift", -np.kron(_P1, _P1)),
    _param("CRX", _controlled(_X / 2)), _param("CRY", _controlled(_Y / 2)),
    _param("CRZ", _controlled(_Z / 2)),
    _param("IsingXX", np.kron(_X, _X) / 2), _param("IsingYY", np.kron(_Y, _Y) / 2),
    _param("IsingZZ", np.kron(_Z, _Z) / 2),
    # fixed
    Gate("Hadamard", 1, "dense", matrix=_H),
    Gate("PauliX", 1, "perm", perm=(1, 0)),
    Gate("PauliY", 1, "dense", matrix=_Y),
    Gate("PauliZ", 1, "diag", diag=np.array([1, -1], dtype=complex)),
    Gate("S", 1, "diag", diag=np.array([1, 1j])),
    Gate("T", 1, "diag", diag=np.array([1, np.exp(1j * math.pi / 4)])),
    Gate("SX", 1, "dense", matrix=_SX),
    Gate("CNOT", 2, "perm", perm=(0, 1, 3, 2)),
    Gate("CY", 2, "dense", matrix=_controlled(_Y) + np.kron(np.diag([1.0, 0.0]), _I2)),
    Gate("CZ", 2, "diag", diag=np.array([1, 1, 1, -1], dtype=complex)),
    Gate("SWAP", 2, "perm", perm=(0, 2, 1, 3)),
    Gate("Toffoli", 3, "perm", perm=(0, 1, 2, 3, 4, 5, 7, 6)),
]}

# Macro gates expanded into primitive ones when added to a circuit: Rot(φ, θ, ω) = RZ(ω) RY(θ) RZ(φ).
MACROS: dict[str, tuple[str, ...]] = {"Rot": ("RZ", "RY", "RZ")}


def get_gate(name: str) -> Gate:
    if name not in GATES:
        raise InfogeomError(f"unknown gate {name!r}; choose one of {', '.join(sorted([*GATES, *MACROS]))}")
    return GATES[name]


def _const(a: np.ndarray, dtype: torch.dtype, device) -> torch.Tensor:
    return torch.tensor(np.array(a), dtype=dtype, device=device)


@cache
def _tables(name: str, dtype: torch.dtype, device: str) -> tuple:
    """Constant tensors of a gate, cached per dtype and device. Parametrized dense gates whose generator has
    eigenvalues in {0, ±1/2} (G³ = G/4: RX, RY, CRX, CRY, IsingXX, IsingYY) use
    U(θ) = I + (cos(θ/2) − 1)·4G² − 2i sin(θ/2)·G; others V diag(e^{−iθλ}) V† from G = V diag(λ) V†."""
    gate = GATES[name]
    if not gate.parametrized:
        return ("fixed", _const(gate.diag if gate.kind == "diag" else gate.matrix, dtype, device)[None])
    G = gate.generator
    if gate.kind == "diag":
        return ("diag", _const(np.diag(G), dtype, device)[None])
    if np.allclose(G @ G @ G, G / 4):
        return ("half", _const(np.eye(len(G)), dtype, device), _const(4 * G @ G, dtype, device),
                _const(-2j * G, dtype, device))
    lam, V = np.linalg.eigh(G)
    return ("eigh", _const(lam, dtype, device)[None], _const(V, dtype, device),
            _const(V.conj().T, dtype, device))


def gate_operator(gate: Gate, angle: torch.Tensor | None, dtype: torch.dtype, device) -> torch.Tensor:
    """The gate's action on its wires: ``[B, d]`` phases ("diag") or ``[B, d, d]`` matrix ("dense") for angles
    ``[B]``; ``[1, d]`` / ``[1, d, d]`` for fixed gates. Not used for "perm" gates.

    Parametrized: U(θ) = exp(−iθG) (see :func:`_tables`); diagonal generators give the phases e^{−iθ G_jj}."""
    kind, *tables = _tables(gate.name, dtype, str(device))
    if kind == "fixed":
        return tables[0]
    theta = angle.to(dtype)
    if kind == "diag":
        return torch.exp(-1j * theta[:, None] * tables[0])
    if kind == "half":
        eye, sq4, gen = tables
        half = theta[:, None, None] / 2
        return eye + (torch.cos(half) - 1) * sq4 + torch.sin(half) * gen
    lam, V, Vh = tables
    return (V[None] * torch.exp(-1j * theta[:, None] * lam)[:, None, :]) @ Vh[None]


def generator_operator(gate: Gate, dtype: torch.dtype, device) -> torch.Tensor:
    """−iG on the gate's wires (``[1, d]`` diagonal or ``[1, d, d]``): ∂U/∂θ = (−iG) U."""
    g = -1j * gate.generator
    return _const(np.diag(g) if gate.kind == "diag" else g, dtype, device)[None]


def gate_matrix(name: str, angle: float | None = None, dtype: torch.dtype = torch.complex128) -> torch.Tensor:
    """The dense d×d matrix of a gate on its own wires (first wire most significant), e.g. for inspection."""
    gate = get_gate(name)
    if gate.parametrized:
        if angle is None:
            raise InfogeomError(f"{name} needs an angle")
        op = gate_operator(gate, torch.tensor([float(angle)]), dtype, "cpu")[0]
        return torch.diag(op) if gate.kind == "diag" else op
    if gate.kind == "perm":
        d = len(gate.perm)
        m = torch.zeros(d, d, dtype=dtype)
        m[list(gate.perm), list(range(d))] = 1
        return m
    op = gate_operator(gate, None, dtype, "cpu")[0]
    return torch.diag(op) if gate.kind == "diag" else op
