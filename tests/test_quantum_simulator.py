"""The batched state-vector simulator against PennyLane (default.qubit, float64) and closed forms."""

import math

import numpy as np
import pennylane as qml
import pytest
import torch
from peers.pennylane_interop import pennylane_observable, pennylane_qnode
from pennylane import numpy as pnp

from infogeom.errors import InfogeomError
from infogeom.quantum import (
    GATES,
    Circuit,
    PauliSum,
    angle_embedding,
    basic_entangler,
    hardware_efficient,
    probabilities,
    qcnn,
    sample,
)
from infogeom.quantum.gates import gate_matrix

TOL = 1e-10


def every_gate_circuit(n=3, seed=0) -> Circuit:
    """Embedding + ansatz + every gate of the library on shuffled wires, one shared parameter."""
    rng = np.random.default_rng(seed)
    c = angle_embedding(Circuit(n), "X")
    hardware_efficient(n, 1, circuit=c, entangler="ring")
    for name in [*GATES, "Rot"]:
        k = 3 if name == "Toffoli" else 2 if name != "Rot" and GATES[name].n_wires == 2 else 1
        c.add(name, tuple(int(w) for w in rng.permutation(n)[:k]))
    c.add("RY", 1, param=0).add("RX", 2, angle=0.3)
    return c


def test_gate_matrices_match_pennylane():
    for name, gate in GATES.items():
        wires = list(range(gate.n_wires))
        op = getattr(qml, name)
        ref = qml.matrix(op(0.731, wires=wires) if gate.parametrized else op(wires=wires))
        ours = gate_matrix(name, 0.731 if gate.parametrized else None).numpy()
        assert np.allclose(ours, ref, atol=TOL), name


@pytest.mark.parametrize("seed", [0, 1])
def test_states_match_pennylane_for_batched_params_and_inputs(seed):
    c = every_gate_circuit(seed=seed)
    g = torch.Generator().manual_seed(seed)
    th = torch.randn(4, c.n_params, generator=g, dtype=torch.float64)
    x = torch.randn(4, c.n_features, generator=g, dtype=torch.float64)
    psi = c.state(th, x)
    assert psi.shape == (4, 2, 2, 2) and psi.dtype == torch.complex128
    for b in range(4):
        ref = pennylane_qnode(c, qml.state, inputs=x[b].numpy())(th[b].numpy())
        assert np.abs(psi[b].reshape(-1).numpy() - ref).max() < TOL
    # unbatched call = one row of the batch; shared params with batched inputs broadcast
    assert torch.allclose(c.state(th[1], x[1]), psi[1], atol=1e-14)
    assert torch.allclose(c.state(th[0], x)[2], c.state(th[0], x[2]), atol=1e-14)


def test_builders_match_pennylane_templates():
    g = torch.Generator().manual_seed(3)
    n, L = 4, 2
    w = torch.rand(L, n, generator=g, dtype=torch.float64)
    x = torch.rand(n, generator=g, dtype=torch.float64)
    c = basic_entangler(n, L, circuit=angle_embedding(Circuit(n), "Y"))
    dev = qml.device("default.qubit", wires=n)

    @qml.qnode(dev)
    def ref(weights):
        qml.AngleEmbedding(x.numpy(), wires=range(n), rotation="Y")
        qml.BasicEntanglerLayers(weights, wires=range(n))
        return qml.state()

    assert np.abs(c.state(w.reshape(-1), x).reshape(-1).numpy() - ref(w.numpy())).max() < TOL
    # QCNN: shared weights per level, two levels for 4 qubits, readout wire n-1
    q = qcnn(4)
    assert q.n_params == 12 and q.n_params < len(q.trainable_ops)


def test_expectations_probabilities_and_gradients_match_pennylane():
    c = every_gate_circuit(seed=4)
    H = PauliSum([(0.7, "Z0 Z1"), (-1.3, "X0 Y2"), (0.4, "Y1"), (2.0, "X0 X1 X2")])
    th = torch.randn(c.n_params, dtype=torch.float64, requires_grad=True)
    x = torch.randn(c.n_features, dtype=torch.float64)
    energy = c.expval(H, th, x)
    energy.backward()
    qnode = pennylane_qnode(c, lambda: qml.expval(pennylane_observable(H)), inputs=x.numpy())
    p = pnp.array(th.detach().numpy(), requires_grad=True)
    assert abs(energy.item() - qnode(p)) < TOL
    assert np.abs(th.grad.numpy() - qml.grad(qnode)(p)).max() < 1e-9
    probs = pennylane_qnode(c, lambda: qml.probs(wires=[2, 0]), inputs=x.numpy())(p)
    assert np.abs(c.probs(th.detach(), x, wires=(2, 0)).numpy() - probs).max() < TOL
    z = pennylane_qnode(c, lambda: [qml.expval(qml.PauliZ(w)) for w in range(3)], inputs=x.numpy())(p)
    assert np.abs(c.expval_z(th.detach(), x).numpy() - np.array(z)).max() < TOL
    # dense matrix of the observable: ⟨ψ|H|ψ⟩ and Hermiticity
    psi = c.state(th.detach(), x).reshape(-1)
    Hm = H.matrix(3)
    assert torch.allclose(Hm, Hm.conj().T)
    assert abs((psi.conj() @ Hm @ psi).real.item() - energy.item()) < TOL


def test_complex64_and_autograd_through_batch():
    c = hardware_efficient(3, 2)
    th = torch.randn(5, c.n_params, requires_grad=True)
    psi = c.state(th)
    assert psi.dtype == torch.complex64
    ref = c.state(th.detach().double())
    assert (psi.detach().to(torch.complex128) - ref).abs().max() < 1e-5
    # a batch is one program: the gradient of a sum equals the per-set gradients
    c.expval_z(th).sum().backward()
    for b in range(5):
        t = th[b].detach().clone().requires_grad_()
        c.expval_z(t).sum().backward()
        assert torch.allclose(th.grad[b], t.grad, atol=1e-5)


def test_sampling_follows_born_rule():
    c = Circuit(2).add("RY", 0).add("CNOT", (0, 1))
    th = torch.tensor([2 * math.acos(math.sqrt(0.3))], dtype=torch.float64)  # p(00) = 0.3, p(11) = 0.7
    bits = c.sample(20_000, th, generator=torch.Generator().manual_seed(0))
    assert bits.shape == (20_000, 2) and torch.equal(bits[:, 0], bits[:, 1])
    assert abs(bits[:, 0].double().mean().item() - 0.7) < 0.015
    psi = c.state(th)
    expected = torch.tensor([0.3, 0, 0, 0.7], dtype=torch.float64)
    assert torch.allclose(probabilities(psi, 2), expected, atol=1e-12)
    assert sample(psi, 2, 3, torch.Generator().manual_seed(1)).shape == (3, 2)


def test_bad_input_raises_infogeom_error():
    c = hardware_efficient(2, 1)
    with pytest.raises(InfogeomError):
        c.add("CNOT", (0, 0))
    with pytest.raises(InfogeomError):
        c.add("RX", 5)
    with pytest.raises(InfogeomError):
        c.add("NoSuchGate", 0)
    with pytest.raises(InfogeomError):
        c.add("RX", 0, param=0, angle=0.1)
    with pytest.raises(InfogeomError):
        c.state(torch.zeros(3))
    with pytest.raises(InfogeomError):
        PauliSum.from_string("X0 Q1")
    with pytest.raises(InfogeomError):
        PauliSum.from_string("X4").expectation(c.state(torch.zeros(c.n_params)), 2)
