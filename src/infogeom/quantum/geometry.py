"""Quantum geometry of parametrized states: QGT, Fubini–Study metric, QFI, Berry curvature, classical Fisher.

For a state ψ(θ) (normalised, ‖ψ‖ = 1) with Jacobian J_k = ∂ψ/∂θ_k:

    Q_ij = ⟨∂iψ|∂jψ⟩ − ⟨∂iψ|ψ⟩⟨ψ|∂jψ⟩          quantum geometric tensor (complex, Hermitian)
    g_ij = Re Q_ij                               Fubini–Study metric (PennyLane ``metric_tensor`` convention)
    F^Q_ij = 4 g_ij                              quantum Fisher information
    Ω_ij = −2 Im Q_ij                            Berry curvature
    F^cl_ij = Σ_x ∂ip(x) ∂jp(x) / p(x)           classical Fisher of computational-basis outcomes, p = |ψ|²

and with ψ(x) = √p(x) e^{iφ(x)} (p > 0):  F^Q = F^cl + 4 Cov_p(∂φ)  (so F^Q = F^cl for real amplitudes).

Cost: one Jacobian sweep (O(N_gates · P · 2^n)) and one batched matmul J^H J (O(P² · 2^n)) per parameter set.
``approx="block-diag"`` keeps PennyLane's per-layer blocks (:meth:`Circuit.layers`), ``"diag"`` the diagonal;
both are taken from the exact tensor (the same values as PennyLane's hardware-friendly estimates).
"""

from __future__ import annotations

import torch

from ..errors import InfogeomError
from .circuit import Circuit, gate_to_param
from .simulator import basis_bits

APPROX = (None, "block-diag", "diag")


def qgt_from_jacobian(psi: torch.Tensor, J: torch.Tensor) -> torch.Tensor:
    """Q ``[..., P, P]`` from ψ ``[..., D]`` and J ``[..., P, D]`` of a ray (ψ need not be normalised):
    Q = J^H J / n − (J^H ψ)(ψ^H J) / n², n = ‖ψ‖² (= the QGT of ψ/‖ψ‖)."""
    n = (psi.real**2 + psi.imag**2).sum(-1)[..., None, None]
    A = J.conj() @ J.transpose(-1, -2)
    v = J.conj() @ psi[..., None]  # ⟨∂iψ|ψ⟩
    return A / n - (v @ v.conj().transpose(-1, -2)) / n**2


def approx_mask(circuit: Circuit, approx: str | None, device=None) -> torch.Tensor | None:
    """Boolean ``[K, K]`` mask over trainable gates for ``approx`` (None for the full tensor)."""
    if approx not in APPROX:
        raise InfogeomError(f"approx must be None, 'block-diag' or 'diag', got {approx!r}")
    if approx is None:
        return None
    K = len(circuit.trainable_ops)
    if approx == "diag":
        return torch.eye(K, dtype=torch.bool, device=device)
    label = torch.empty(K, dtype=torch.long)
    for b, layer in enumerate(circuit.layers()):
        label[layer] = b
    label = label.to(device)
    return label[:, None] == label[None, :]


def quantum_geometric_tensor(circuit: Circuit, params: torch.Tensor, inputs: torch.Tensor | None = None,
                             approx: str | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Complex QGT ``[B?, P, P]`` for parameter sets ``[P] | [B, P]`` (and inputs ``[F] | [B, F]``).

    ``approx``: None (exact), ``"block-diag"`` or ``"diag"``, applied per gate before the parameter chain rule
    Q_θ = Cᵀ Q_gates C (C maps gates to shared parameters), as PennyLane does."""
    mask = approx_mask(circuit, approx, params.device)
    psi, J = circuit.state_and_jacobian(params, inputs, dtype, per_gate=True)
    Q = qgt_from_jacobian(psi, J)
    if mask is not None:
        Q = Q * mask
    op_params = circuit.op_params()
    return gate_to_param(gate_to_param(Q, op_params, circuit.n_params, -2), op_params, circuit.n_params, -1)


def fubini_study_metric(circuit: Circuit, params: torch.Tensor, inputs: torch.Tensor | None = None,
                        approx: str | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Fubini–Study metric g = Re(⟨∂iψ|∂jψ⟩ − ⟨∂iψ|ψ⟩⟨ψ|∂jψ⟩) ``[B?, P, P]`` — PennyLane's
    ``qml.metric_tensor`` convention (so ds² = g_ij dθ^i dθ^j = 1 − |⟨ψ(θ)|ψ(θ + dθ)⟩|² to second order)."""
    return quantum_geometric_tensor(circuit, params, inputs, approx, dtype).real


def quantum_fisher_information(circuit: Circuit, params: torch.Tensor, inputs: torch.Tensor | None = None,
                               approx: str | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
    """QFI F^Q = 4 Re Q ``[B?, P, P]`` (``qml.gradients.quantum_fisher`` convention)."""
    return 4 * fubini_study_metric(circuit, params, inputs, approx, dtype)


def berry_curvature(circuit: Circuit, params: torch.Tensor, inputs: torch.Tensor | None = None,
                    dtype: torch.dtype | None = None) -> torch.Tensor:
    """Berry curvature Ω = −2 Im Q ``[B?, P, P]`` (antisymmetric)."""
    return -2 * quantum_geometric_tensor(circuit, params, inputs, None, dtype).imag


def fisher_phase_decomposition(psi: torch.Tensor, J: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Split the QFI of a normalised state into (F^cl, 4·Cov_p(∂φ)), both ``[..., P, P]``.

    With ψ = √p e^{iφ}: conj(ψ)∂ψ = p(½∂log p + i∂φ), so F^cl = Σ_x (2 Re conj(ψ)∂ψ)²/p and
    Cov_p(∂iφ, ∂jφ) = Σ_x Im(conj ψ ∂iψ) Im(conj ψ ∂jψ)/p − (Σ_x Im conj ψ ∂iψ)(Σ_x Im conj ψ ∂jψ).
    Outcomes with p(x) ≤ tol (machine-precision zeros) are left out."""
    p = psi.real**2 + psi.imag**2
    tol = torch.finfo(p.dtype).eps ** 2
    inv_p = torch.where(p > tol, 1.0 / p.clamp_min(tol), torch.zeros_like(p))[..., None, :]
    w = psi.conj()[..., None, :] * J  # [..., P, D]
    a, b = w.real, w.imag
    f_cl = 4 * (a * inv_p) @ a.transpose(-1, -2)
    mb = b.sum(-1)
    cov = (b * inv_p) @ b.transpose(-1, -2) - mb[..., :, None] * mb[..., None, :]
    return f_cl, 4 * cov


def classical_fisher(circuit: Circuit, params: torch.Tensor, inputs: torch.Tensor | None = None,
                     dtype: torch.dtype | None = None) -> torch.Tensor:
    """Classical Fisher ``[B?, P, P]`` of the computational-basis distribution p(x) = |ψ(x)|²:
    F_ij = Σ_x ∂ip ∂jp / p (``qml.gradients.classical_fisher`` convention)."""
    psi, J = circuit.state_and_jacobian(params, inputs, dtype)
    return fisher_phase_decomposition(psi, J)[0]


def expval_z_jacobian(circuit: Circuit, params: torch.Tensor, inputs: torch.Tensor | None = None,
                      wires: tuple[int, ...] | None = None, dtype: torch.dtype | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """⟨Z_w⟩ ``[B?, W]`` and its Jacobian ``[B?, W, P]``: ∂⟨Z_w⟩/∂θ_k = Σ_x ∂_k p(x) z_w(x),
    ∂_k p = 2 Re(conj(ψ) ∂_kψ) — from the same Jacobian sweep (no backward pass)."""
    n = circuit.n_qubits
    wires = tuple(range(n)) if wires is None else tuple(wires)
    psi, J = circuit.state_and_jacobian(params, inputs, dtype)
    p = psi.real**2 + psi.imag**2
    dp = 2 * (psi.conj()[..., None, :] * J).real  # [..., P, D]
    z = 1 - 2 * basis_bits(n, p.device)[:, list(wires)].to(p.dtype)  # [D, W]
    return p @ z, (dp @ z).transpose(-1, -2)
