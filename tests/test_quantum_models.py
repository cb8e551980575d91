"""Quantum layer in the GPT and the Born-rule LM head (metrics against autograd oracles, the QFI identity)."""

import numpy as np
import pennylane as qml
import pytest
import torch
from conftest import random_batch, tiny_gpt
from peers.pennylane_interop import pennylane_qnode
from torch.func import grad, jacrev

from infogeom.errors import InfogeomError
from infogeom.geometry import CurvatureOperator
from infogeom.geometry.born import BornMetricOperator, born_head_geometry, compare_born_geometry, head_inputs
from infogeom.models import lm_loss
from infogeom.models.born_head import BornHead, use_born_head
from infogeom.models.quantum_layer import QuantumLayer, add_quantum_layers


def test_quantum_layer_matches_pennylane_and_finite_differences():
    torch.manual_seed(0)
    layer = QuantumLayer(5, 2, n_qubits=3, n_layers=2).double()
    x = torch.randn(2, 4, 5, dtype=torch.float64)
    y = layer(x)
    assert y.shape == (2, 4, 2)
    a = layer.angles(x[1, 2]).detach()
    z = pennylane_qnode(layer.circuit, lambda: [qml.expval(qml.PauliZ(w)) for w in range(3)],
                        inputs=a.numpy())(layer.weight.detach().numpy())
    assert np.allclose(layer.proj_out(torch.tensor(np.array(z))).detach().numpy(), y[1, 2].detach().numpy(),
                       atol=1e-12)
    small = QuantumLayer(3, 2, n_qubits=2, n_layers=1, ansatz="basic-entangler").double()
    assert torch.autograd.gradcheck(lambda inp: small(inp).sum(), (torch.randn(4, 3, dtype=torch.float64,
                                                                               requires_grad=True),))
    angles = torch.randn(4, 2, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda w: small.readout(w, angles).sum(),
                                    (small.weight.detach().clone().requires_grad_(),))


def test_add_quantum_layers_and_backprop_training():
    model = tiny_gpt()
    add_quantum_layers(model, blocks=(0,), target="qkv", n_qubits=3, n_layers=1)
    assert isinstance(model.blocks[0].attn.c_attn, QuantumLayer)
    torch.manual_seed(1)
    model = tiny_gpt(n_layer=2)
    layers = add_quantum_layers(model, blocks=(0, 1), target="mlp", n_qubits=3, n_layers=2)
    assert [model.blocks[i].mlp for i in (0, 1)] == layers and layers[0].weight.dtype == torch.float64
    x, y = random_batch()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = lm_loss(model(x), y)
        loss.backward()
        losses.append(loss.item())
        assert layers[0].weight.grad.abs().sum() > 0
        opt.step()
    assert losses[-1] < losses[0] - 0.5
    with pytest.raises(InfogeomError):
        add_quantum_layers(model, blocks=(5,))
    with pytest.raises(InfogeomError):
        add_quantum_layers(model, target="lm_head")


def born_setup(seed=0, V=5, C=3, N=4, imag=True):
    torch.manual_seed(seed)
    head = BornHead(C, V, init_std=1.0, imag_init_std=1.0 if imag else 0.0).double()
    return head, torch.randn(N, C, dtype=torch.float64)


def head_fn(head, h):
    V, C = head.weight_re.shape

    def amplitudes(theta):
        A, B = theta[: V * C].reshape(V, C), theta[V * C:].reshape(V, C)
        return torch.complex(h @ A.T, h @ B.T)

    theta0 = torch.cat([head.weight_re.detach().reshape(-1), head.weight_im.detach().reshape(-1)])
    return amplitudes, theta0


def test_born_head_probabilities_and_loss():
    model = tiny_gpt()
    head = use_born_head(model)
    assert model.lm_head is head and not model.config.tie_weights
    x, y = random_batch()
    logp = model(x)
    assert torch.allclose(logp.exp().sum(-1), torch.ones(2, 8, dtype=torch.float64))
    psi = head.amplitudes(head_inputs(model, x))
    p = psi.abs() ** 2 / (psi.abs() ** 2).sum(-1, keepdim=True)
    assert torch.allclose(logp.reshape(-1, 11).exp(), p)
    assert torch.allclose(lm_loss(logp, y), -torch.log(p[torch.arange(16), y.reshape(-1)]).mean())


def test_born_metrics_against_autograd_oracles():
    head, h = born_setup()
    amplitudes, theta0 = head_fn(head, h)
    ops = born_head_geometry(head, h)
    assert all(isinstance(op, CurvatureOperator) for op in ops.values())
    dense = {k: op.to_dense() for k, op in ops.items()}
    N = h.shape[0]
    # Fubini–Study: ½ Hessian of the token-averaged infidelity 1 − |⟨ψ̂0|ψ̂(θ)⟩|²
    psi0 = amplitudes(theta0).detach()
    psi0 = psi0 / psi0.abs().pow(2).sum(-1, keepdim=True).sqrt()

    def infidelity(theta):
        psi = amplitudes(theta)
        overlap = (psi0.conj() * psi).sum(-1).abs() ** 2 / psi.abs().pow(2).sum(-1)
        return (1 - overlap).mean()

    H = jacrev(grad(infidelity))(theta0)
    assert torch.allclose(dense["fubini-study"], H / 2, atol=1e-10)
    assert torch.allclose(dense["qfi"], 2 * H, atol=1e-10)

    # classical Fisher: E_tokens Σ_v p_v ∇log p_v ∇log p_vᵀ
    def logp(theta):
        a = amplitudes(theta).abs() ** 2
        return torch.log(a / a.sum(-1, keepdim=True))

    p, J = logp(theta0).exp(), jacrev(logp)(theta0)
    assert torch.allclose(dense["classical"], torch.einsum("nv,nvi,nvj->ij", p, J, J) / N, atol=1e-10)

    # phase term 4 Cov_p(∂φ) with φ = arg ψ
    Jphi = jacrev(lambda t: torch.angle(amplitudes(t)))(theta0)  # [N, V, P]
    mean = torch.einsum("nv,nvi->ni", p, Jphi)
    cov = torch.einsum("nv,nvi,nvj->ij", p, Jphi, Jphi) / N - mean.T @ mean / N
    assert torch.allclose(dense["phase"], 4 * cov, atol=1e-10)
    # identity and exact diagonals (closed forms vs matvecs)
    assert torch.allclose(dense["qfi"], dense["classical"] + dense["phase"], atol=1e-10)
    for kind, op in ops.items():
        assert torch.allclose(op.diagonal(), dense[kind].diagonal(), atol=1e-12), kind


def test_born_real_amplitudes_qfi_equals_classical_fisher():
    head, h = born_setup(seed=3, imag=False)
    assert head.weight_im.abs().max() == 0
    ops = born_head_geometry(head, h)
    P = ops["qfi"].dim // 2  # the W_re block keeps amplitudes real
    qfi, fcl = ops["qfi"].to_dense(), ops["classical"].to_dense()
    assert torch.allclose(qfi[:P, :P], fcl[:P, :P], atol=1e-12)
    assert ops["phase"].to_dense()[:P, :P].abs().max() < 1e-12
    assert fcl[P:, P:].abs().max() < 1e-12  # W_im moves only phases at W_im = 0
    with pytest.raises(InfogeomError):
        BornMetricOperator(head, h, kind="nope")


def test_compare_born_geometry_on_text():
    from pydoc_data.topics import topics

    text = "".join(topics.values())[:4000]
    chars = sorted(set(text))
    ids = torch.tensor([chars.index(ch) for ch in text])
    torch.manual_seed(0)
    model = tiny_gpt(vocab_size=len(chars), block_size=16, n_embd=8)
    use_born_head(model).double()
    x = ids[: 4 * 16].reshape(4, 16)
    out = compare_born_geometry(model, x, probes=4, generator=torch.Generator().manual_seed(0))
    assert out["tokens"] == 64 and out["identity_residual"] < 1e-8
    assert out["trace_qfi"] == pytest.approx(4 * out["trace_fubini_study"])
    assert out["trace_qfi"] == pytest.approx(out["trace_classical"] + out["trace_phase"])
    assert out["qfi_over_classical"] > 1
