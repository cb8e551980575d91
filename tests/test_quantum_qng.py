"""Quantum natural gradient: Bloch-sphere and VQE reproductions, the update rule, checkpoints, the 'qng'
builder."""

import pytest
import torch
from torch.func import functional_call, jacrev

from infogeom.errors import InfogeomError
from infogeom.models import GPT, GPTConfig, lm_loss
from infogeom.models.quantum_layer import add_quantum_layers, quantum_layers
from infogeom.optim import build_optimizer
from infogeom.optim.qng import QuantumNaturalGradient
from infogeom.quantum import Circuit, PauliSum, fubini_study_metric, hardware_efficient


def bloch_run(optimizer: str, steps: int = 50, lr: float = 0.1, approx=None):
    """|ψ(θ, φ)⟩ = RZ(φ) RX(θ)|0⟩, minimise ⟨σx⟩ = sin θ sin φ from (0.5, 0.5); g = diag(1/4, sin²θ/4)."""
    c = Circuit(1).add("RX", 0).add("RZ", 0)
    obs = PauliSum.from_string("X0")
    th = torch.tensor([0.5, 0.5], dtype=torch.float64, requires_grad=True)
    if optimizer == "qng":
        opt = QuantumNaturalGradient([th], lambda: fubini_study_metric(c, th.detach(), approx=approx), lr=lr,
                                     damping=0.0)
    else:
        opt = torch.optim.SGD([th], lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        c.expval(obs, th).backward()
        opt.step()
    return c.expval(obs, th).item()


def test_bloch_sphere_qng_reaches_minus_one_while_gd_stalls():
    assert bloch_run("qng") < -0.9999
    assert bloch_run("qng", approx="block-diag") < -0.9999
    # plain gradient descent slides towards the saddle θ = φ = 0 where the φ-gradient vanishes
    assert bloch_run("gd") > -0.05


def vqe_steps(optimizer: str, seed: int, lr: float = 0.1, tol: float = 1e-2, max_steps: int = 150) -> int:
    """Steps until E(θ) < E_0 + tol for a 3-qubit transverse-field Ising model, hardware-efficient ansatz."""
    H = PauliSum([(1.0, "Z0 Z1"), (1.0, "Z1 Z2"), (0.6, "X0"), (0.6, "X1"), (0.6, "X2")])
    c = hardware_efficient(3, 2)
    e0 = torch.linalg.eigvalsh(H.matrix(3))[0].item()
    g = torch.Generator().manual_seed(seed)
    th = (0.2 * torch.randn(c.n_params, generator=g, dtype=torch.float64)).requires_grad_()
    opt = {"qng": lambda: QuantumNaturalGradient([th], lambda: fubini_study_metric(c, th.detach()), lr=lr),
           "adam": lambda: torch.optim.Adam([th], lr=lr),
           "gd": lambda: torch.optim.SGD([th], lr=lr)}[optimizer]()
    for step in range(max_steps):
        opt.zero_grad()
        energy = c.expval(H, th)
        if energy.item() < e0 + tol:
            return step
        energy.backward()
        opt.step()
    return max_steps


@pytest.mark.parametrize("seed", [0, 1])
def test_vqe_qng_needs_fewer_steps_than_adam_and_gd(seed):
    q, a, g = (vqe_steps(name, seed) for name in ("qng", "adam", "gd"))
    assert q < 20 and q < a and q < g, (q, a, g)


def test_update_rule_damping_and_recompute_schedule():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(3, dtype=torch.float64))
    b = torch.nn.Parameter(torch.randn(2, dtype=torch.float64))
    A = torch.randn(5, 5, dtype=torch.float64)
    calls = []

    def metric():
        calls.append(1)
        return A @ A.T * (1 + len(calls))

    opt = QuantumNaturalGradient([{"params": [w]}, {"params": [b], "lr": 0.05}], metric, lr=0.1, damping=0.3,
                                 recompute_every=3)
    for step in range(4):
        before = torch.cat([w, b]).detach().clone()
        opt.zero_grad()
        ((w**2).sum() + (b**3).sum()).backward()
        grad = torch.cat([w.grad, b.grad])
        opt.step()
        G = A @ A.T * (1 + (1 if step < 3 else 2))
        nat = torch.linalg.solve(G + 0.3 * torch.eye(5, dtype=torch.float64), grad)
        lr = torch.tensor([0.1] * 3 + [0.05] * 2, dtype=torch.float64)
        assert torch.allclose(torch.cat([w, b]).detach(), before - lr * nat, atol=1e-10)
    assert len(calls) == 2  # steps 0 and 3


def test_state_dict_resume_and_scheduler():
    c = hardware_efficient(2, 2)
    H = PauliSum([(1.0, "Z0 Z1"), (0.5, "X0")])

    def make(th):
        opt = QuantumNaturalGradient([th], lambda: fubini_study_metric(c, th.detach()), lr=0.2,
                                     recompute_every=2)
        return opt, torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)

    def run(th, opt, sched, steps):
        for _ in range(steps):
            opt.zero_grad()
            c.expval(H, th).backward()
            opt.step()
            sched.step()

    th_a = torch.full((c.n_params,), 0.3, dtype=torch.float64, requires_grad=True)
    opt_a, sched_a = make(th_a)
    run(th_a, opt_a, sched_a, 5)
    th_b = torch.full((c.n_params,), 0.3, dtype=torch.float64, requires_grad=True)
    opt_b, sched_b = make(th_b)
    run(th_b, opt_b, sched_b, 3)
    saved = (th_b.detach().clone(), opt_b.state_dict(), sched_b.state_dict())
    th_c = saved[0].clone().requires_grad_()
    opt_c, sched_c = make(th_c)
    opt_c.load_state_dict(saved[1])
    sched_c.load_state_dict(saved[2])
    assert opt_c.param_groups[0]["lr"] == pytest.approx(0.1)
    run(th_c, opt_c, sched_c, 2)
    assert torch.allclose(th_c, th_a, atol=1e-12)


def test_bad_arguments():
    p = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(InfogeomError):
        QuantumNaturalGradient([p], lambda: torch.eye(2), damping=-1)
    with pytest.raises(InfogeomError):
        QuantumNaturalGradient([p], None)
    opt = QuantumNaturalGradient([p], lambda: torch.eye(3))
    p.grad = torch.ones(2)
    with pytest.raises(InfogeomError, match="metric_fn returned shape"):
        opt.step()
    with pytest.raises(InfogeomError, match="no quantum layers"):
        plain = GPT(GPTConfig(vocab_size=5, block_size=4, n_layer=1, n_head=1, n_embd=4))
        build_optimizer("qng", plain, lr=0.1)


def hybrid_gpt(seed=0):
    torch.manual_seed(seed)
    cfg = GPTConfig(vocab_size=7, block_size=6, n_layer=2, n_head=2, n_embd=8, attention="math")
    model = GPT(cfg).double()
    add_quantum_layers(model, blocks=(1,), target="mlp", n_qubits=3, n_layers=1)
    add_quantum_layers(model, blocks=(0,), target="qkv", n_qubits=2, n_layers=1)
    g = torch.Generator().manual_seed(seed)
    return model, torch.randint(0, 7, (3, 6), generator=g), torch.randint(0, 7, (3, 6), generator=g)


@pytest.mark.parametrize("metric", ["fubini-study", "pullback"])
def test_qng_builder_on_hybrid_gpt_applies_the_natural_gradient(metric):
    model, x, y = hybrid_gpt()
    opt = build_optimizer("qng", model, lr=0.05, metric=metric, damping=1e-2)
    layers = quantum_layers(model)
    seen = {}
    hooks = [layer.register_forward_hook(lambda m, a, o: seen.__setitem__(m, a[0].detach()))
             for layer in layers]
    lm_loss(model(x), y).backward()
    for h in hooks:
        h.remove()
    before = torch.cat([layer.weight.detach().clone() for layer in layers])
    grad = torch.cat([layer.weight.grad for layer in layers])
    other = model.blocks[0].ln_1.weight.detach().clone()
    if metric == "fubini-study":  # oracle: each circuit's metric averaged over all token angles it saw
        G = torch.block_diag(*[
            fubini_study_metric(layer.circuit, layer.weight.detach(),
                                layer.angles(seen[layer]).reshape(-1, layer.n_qubits).detach()).mean(0)
            for layer in layers])
    if metric == "pullback":  # oracle: the Fisher of the LM's predictions restricted to the circuit weights
        names = [n for n, p in model.named_parameters() if any(p is layer.weight for layer in layers)]
        sizes = [layer.weight.numel() for layer in layers]

        def logp(theta):
            out = functional_call(model, dict(zip(names, theta.split(sizes))), (x,))
            return torch.log_softmax(out, -1).reshape(-1, 7)

        model.eval()
        p, J = logp(before).exp(), jacrev(logp)(before)
        model.train()
        G = torch.einsum("ny,nyi,nyj->ij", p, J, J) / p.shape[0]
    opt.step()
    after = torch.cat([layer.weight.detach() for layer in layers])
    nat = torch.linalg.solve(G + 1e-2 * torch.eye(len(grad), dtype=G.dtype), grad)
    assert torch.allclose(after, before - 0.05 * nat, atol=1e-9)
    assert not torch.equal(model.blocks[0].ln_1.weight.detach(), other)  # AdamW moved the classical part
    sd = opt.state_dict()
    assert any("precond" in s for s in sd["state"].values())
