"""QGT / Fubini–Study / QFI / classical Fisher against PennyLane, a fidelity-Hessian oracle and closed
forms."""

import math

import numpy as np
import pennylane as qml
import pytest
import torch
from peers.pennylane_interop import pennylane_qnode
from pennylane import numpy as pnp
from test_quantum_simulator import every_gate_circuit
from torch.func import grad, jacfwd, jacrev

from infogeom.geometry import DenseOperator
from infogeom.quantum import (
    BlockDiagonalOperator,
    Circuit,
    angle_embedding,
    berry_curvature,
    circuit_metric_operator,
    classical_fisher,
    expval_z_jacobian,
    fisher_phase_decomposition,
    fubini_study_metric,
    hardware_efficient,
    pullback_metric,
    qcnn,
    quantum_fisher_information,
    quantum_geometric_tensor,
)

TOL = 1e-6  # the tolerance (observed agreement ~1e-15)


def pauli_generator_circuit(seed: int) -> Circuit:
    """Random circuit of gates whose generators are single Pauli words (where PennyLane's Hadamard-test
    metric_tensor is reliable), with an embedding, a shared parameter and fixed gates."""
    rng = np.random.default_rng(seed)
    n = 3
    c = angle_embedding(Circuit(n), "Y")
    for _ in range(10):
        name = rng.choice(["RX", "RY", "RZ", "IsingXX", "IsingYY", "IsingZZ", "Hadamard", "CNOT", "CZ", "S"])
        k = 2 if name in ("IsingXX", "IsingYY", "IsingZZ", "CNOT", "CZ") else 1
        c.add(str(name), tuple(int(w) for w in rng.permutation(n)[:k]))
    c.add("Rot", 1).add("RX", 2, param=1).add("CNOT", (2, 0)).add("RY", 0)
    return c


def params_for(c: Circuit, seed: int, batch: int | None = None):
    g = torch.Generator().manual_seed(100 + seed)
    shape = (c.n_params,) if batch is None else (batch, c.n_params)
    th = torch.randn(shape, generator=g, dtype=torch.float64)
    x = torch.randn(c.n_features, generator=g, dtype=torch.float64) if c.n_features else None
    return th, x


def fidelity_hessian_metric(c: Circuit, th: torch.Tensor, x=None) -> torch.Tensor:
    """Independent oracle: 1 − |⟨ψ(θ0)|ψ(θ)⟩|² = (θ−θ0)ᵀ g (θ−θ0) + O(3), so g = ½ ∇² at θ0 (autograd on the
    simulator's states only, no Jacobian sweep)."""
    psi0 = c.state(th, x).reshape(-1).detach()

    def infidelity(t):
        return 1 - (psi0.conj() * c.state(t, x).reshape(-1)).sum().abs() ** 2

    H = jacrev(grad(infidelity))(th)
    assert torch.allclose(H, H.T, atol=1e-12)
    return H / 2


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metric_matches_pennylane_metric_tensor_all_approximations(seed):
    c = pauli_generator_circuit(seed)
    th, x = params_for(c, seed)
    qnode = pennylane_qnode(c, lambda: qml.expval(qml.PauliZ(0)), inputs=x.numpy(), aux_wire=True)
    p = pnp.array(th.numpy(), requires_grad=True)
    for approx in (None, "block-diag", "diag"):
        ref = qml.metric_tensor(qnode, approx=approx, aux_wire=c.n_qubits)(p)
        ours = fubini_study_metric(c, th, x, approx=approx)
        assert np.abs(ours.numpy() - ref).max() < TOL, approx
    # non-trivial block structure: several layers, off-block entries present in the full metric
    full = fubini_study_metric(c, th, x)
    block = fubini_study_metric(c, th, x, approx="block-diag")
    assert len(c.layers()) > 2 and (full - block).abs().max() > 1e-3


@pytest.mark.parametrize("seed", [0, 1])
def test_all_gates_match_adjoint_metric_tensor_and_quantum_fisher(seed):
    c = every_gate_circuit(seed=seed)
    th, x = params_for(c, seed)
    qnode = pennylane_qnode(c, lambda: qml.expval(qml.PauliZ(0)), inputs=x.numpy())
    p = pnp.array(th.numpy(), requires_grad=True)
    g = fubini_study_metric(c, th, x)
    assert np.abs(g.numpy() - qml.adjoint_metric_tensor(qnode)(p)).max() < TOL
    qfi = qml.gradients.quantum_fisher(qnode)(p)
    assert np.abs(quantum_fisher_information(c, th, x).numpy() - qfi).max() < TOL
    assert torch.allclose(g, fidelity_hessian_metric(c, th, x), atol=1e-9)
    probs = pennylane_qnode(c, qml.probs, inputs=x.numpy())
    assert np.abs(classical_fisher(c, th, x).numpy() - qml.gradients.classical_fisher(probs)(p)).max() < TOL


def test_qcnn_shared_parameters_match_adjoint_and_oracle():
    c = qcnn(4)
    th, _ = params_for(c, 7)
    ref = qml.adjoint_metric_tensor(pennylane_qnode(c, lambda: qml.expval(qml.PauliZ(3))))(
        pnp.array(th.numpy(), requires_grad=True))
    g = fubini_study_metric(c, th)
    assert np.abs(g.numpy() - ref).max() < TOL
    assert torch.allclose(g, fidelity_hessian_metric(c, th), atol=1e-9)


def test_projector_generator_gates_against_fidelity_hessian():
    """Controlled rotations and phase shifts: exact against the fidelity Hessian. (PennyLane 0.45.1's
    Hadamard-test metric_tensor disagrees with its own adjoint_metric_tensor on these gates, so it is not
    used.)"""
    c = Circuit(3).add("Hadamard", 0).add("RY", 1).add("RX", 2)
    for name, wires in [("CRX", (0, 1)), ("CRY", (2, 0)), ("CRZ", (1, 2)), ("PhaseShift", 1),
                        ("ControlledPhaseShift", (0, 2))]:
        c.add(name, wires).add("CNOT", (1, 2)).add("RY", 0)
    th, _ = params_for(c, 5)
    assert torch.allclose(fubini_study_metric(c, th), fidelity_hessian_metric(c, th), atol=1e-9)


def test_bloch_sphere_closed_forms():
    """|ψ⟩ = RZ(φ) RX(θ)|0⟩ ∝ cos(θ/2)|0⟩ − i e^{iφ} sin(θ/2)|1⟩: g = diag(1/4, sin²θ/4), Ω_θφ = −sinθ/2."""
    c = Circuit(1).add("RX", 0).add("RZ", 0)
    thetas = torch.tensor([[0.5, 0.5], [1.3, -2.0], [2.9, 0.1]], dtype=torch.float64)
    g = fubini_study_metric(c, thetas)
    expected = torch.zeros(3, 2, 2, dtype=torch.float64)
    expected[:, 0, 0] = 0.25
    expected[:, 1, 1] = torch.sin(thetas[:, 0]) ** 2 / 4
    assert torch.allclose(g, expected, atol=1e-14)
    omega = berry_curvature(c, thetas)
    assert torch.allclose(omega[:, 0, 1], -torch.sin(thetas[:, 0]) / 2, atol=1e-14)
    assert torch.allclose(omega, -omega.transpose(1, 2))
    Q = quantum_geometric_tensor(c, thetas)
    assert torch.allclose(Q, Q.conj().transpose(1, 2))


def test_batched_metric_equals_per_set_and_block_diag_values():
    c = hardware_efficient(4, 3)
    th, _ = params_for(c, 3, batch=6)
    for approx in (None, "block-diag", "diag"):
        g = fubini_study_metric(c, th, approx=approx)
        for b in (0, 5):
            assert torch.allclose(g[b], fubini_study_metric(c, th[b], approx=approx), atol=1e-13)
    # the hardware-efficient ansatz has 2 layers of parameters per ansatz layer (all RY, then all RZ)
    assert c.layers() == [list(range(i * 4, i * 4 + 4)) for i in range(6)]


def test_real_amplitudes_qfi_equals_classical_fisher():
    """RY + CNOT circuits have real amplitudes: F^Q = F^cl (phase term 0); F^cl against jacrev of p."""
    c = hardware_efficient(3, 3, rotations=("RY",))
    th, _ = params_for(c, 11)
    F_cl = classical_fisher(c, th)
    assert torch.allclose(quantum_fisher_information(c, th), F_cl, atol=1e-12)

    def probs(t):
        return c.probs(t)

    p, J = probs(th), jacrev(probs)(th)
    oracle = (J / p[:, None]).T @ J
    assert torch.allclose(F_cl, oracle, atol=1e-9)


def test_phases_qfi_is_classical_fisher_plus_phase_covariance():
    c = every_gate_circuit(seed=2)
    th, x = params_for(c, 2)
    psi, J = c.state_and_jacobian(th, x)
    F_cl, phase = fisher_phase_decomposition(psi, J)
    F_q = quantum_fisher_information(c, th, x)
    assert torch.allclose(F_q, F_cl + phase, atol=1e-10)
    # the phase covariance is PSD and non-zero here: the QFI exceeds the classical Fisher
    assert torch.linalg.eigvalsh(F_q - F_cl).min() > -1e-10 and phase.abs().max() > 1e-2
    # J columns against autograd of the state
    Jri = jacfwd(lambda t: torch.view_as_real(c.state(t, x).reshape(-1)))(th)  # [D, 2, P]
    Jref = torch.complex(Jri[:, 0], Jri[:, 1]).T
    assert torch.allclose(J, Jref, atol=1e-12)


def test_operators_and_input_averaging():
    c = angle_embedding(Circuit(3), "X")
    hardware_efficient(3, 2, circuit=c)
    th, _ = params_for(c, 4)
    X = torch.randn(5, 3, dtype=torch.float64)
    op = circuit_metric_operator(c, th, X, approx="block-diag")
    assert isinstance(op, BlockDiagonalOperator)
    dense = torch.stack([fubini_study_metric(c, th, X[i], approx="block-diag") for i in range(5)]).mean(0)
    assert torch.allclose(op.to_dense(), dense, atol=1e-13)
    v = torch.randn(c.n_params, dtype=torch.float64)
    assert torch.allclose(op.matvec(v), dense @ v, atol=1e-13)
    assert torch.allclose(op.diagonal(), dense.diagonal())
    eye = torch.eye(c.n_params, dtype=torch.float64)
    assert torch.allclose(op.solve(v, damping=0.1), torch.linalg.solve(dense + 0.1 * eye, v), atol=1e-10)
    full = circuit_metric_operator(c, th, X, kind="qfi")
    assert isinstance(full, DenseOperator)
    assert torch.allclose(full.to_dense(), 4 * quantum_fisher_information(c, th, X).mean(0) / 4, atol=1e-13)
    with pytest.raises(Exception, match="approx"):
        circuit_metric_operator(c, th, X, kind="classical", approx="diag")


def test_expval_jacobian_and_pullback_metric():
    c = angle_embedding(Circuit(3), "Y")
    hardware_efficient(3, 2, circuit=c)
    th, _ = params_for(c, 8)
    X = torch.randn(6, 3, dtype=torch.float64)
    z, Jz = expval_z_jacobian(c, th, X)
    Jref = jacrev(lambda t: c.expval_z(t, X))(th)
    assert torch.allclose(z, c.expval_z(th, X)) and torch.allclose(Jz, Jref, atol=1e-12)
    W = torch.randn(4, 3, dtype=torch.float64)
    G = pullback_metric(lambda t: c.expval_z(t, X) @ W.T, th)
    # brute force: Fisher of the softmax outputs, E_x Σ_y p(y) ∇log p(y) ∇log p(y)ᵀ
    logp = lambda t: torch.log_softmax(c.expval_z(t, X) @ W.T, -1)  # noqa: E731
    p, Jl = logp(th).exp(), jacrev(logp)(th)  # [6, 4], [6, 4, P]
    oracle = torch.einsum("ny,nyi,nyj->ij", p, Jl, Jl) / 6
    assert torch.allclose(G, oracle, atol=1e-12)
    Gs = pullback_metric(lambda t: c.expval_z(t, X) @ W[0], th, output="sigmoid")
    q = torch.sigmoid(c.expval_z(th, X) @ W[0])
    Js = Jz.transpose(1, 2) @ W[0]
    assert torch.allclose(Gs, (Js * (q * (1 - q))[:, None]).T @ Js / 6, atol=1e-12)


@pytest.mark.parametrize("n", [2, 4])
def test_metric_is_reparametrisation_covariant(n):
    """Sharing a parameter between two gates = chain rule Cᵀ g C on the untied metric."""
    tied = Circuit(n).add("RY", 0).add("RX", 1).add("CNOT", (0, 1)).add("RY", 1, param=0)
    untied = Circuit(n).add("RY", 0).add("RX", 1).add("CNOT", (0, 1)).add("RY", 1)
    a, b = 0.4, -1.1
    g_untied = fubini_study_metric(untied, torch.tensor([a, b, a], dtype=torch.float64))
    C = torch.tensor([[1.0, 0], [0, 1], [1, 0]], dtype=torch.float64)
    assert torch.allclose(fubini_study_metric(tied, torch.tensor([a, b], dtype=torch.float64)),
                          C.T @ g_untied @ C, atol=1e-14)
    assert math.isclose(g_untied[0, 0].item(), 0.25)
