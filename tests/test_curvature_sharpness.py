"""Sharpness measures against closed forms (quadratics, trust-region optimum), dense float64 oracles
(scipy's generalized eigh on jacrev Hessian/Fisher), hand-replayed Adam moments, and simulated optimizer
stability."""

import copy
import math

import pytest
import scipy.linalg
import torch
from conftest import random_batch, tiny_gpt
from test_hessian_operator import dense_hessian
from torch.func import functional_call, jacrev

from infogeom.curvature import (
    DiagonalOperator,
    adam_preconditioner,
    ball_sharpness,
    eos_threshold,
    epsilon_sharpness,
    fisher_rao_sharpness,
    optimizer_sharpness,
    preconditioned_sharpness,
)
from infogeom.errors import InfogeomError
from infogeom.geometry import DenseOperator, HessianOperator, unflatten
from infogeom.models import lm_loss

F64 = torch.float64


def quadratic(P=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(P, P, generator=g, dtype=F64)
    A = X @ X.T / P + 0.1 * torch.eye(P, dtype=F64)
    b = torch.randn(P, generator=g, dtype=F64)
    theta = torch.randn(P, generator=g, dtype=F64)
    return A, b, theta, (lambda t: 0.5 * t @ A @ t + b @ t)


def trust_region_max(A, g, rho):
    """max_{‖ε‖≤ρ} gᵀε + ½εᵀAε for PSD A: ε = (μI − A)⁻¹g with μ > λ_max and ‖ε‖ = ρ (bisection on μ)."""
    lam, U = torch.linalg.eigh(A)
    c = U.T @ g
    lo, hi = float(lam.max()) + 1e-12, float(lam.max()) + float(torch.linalg.vector_norm(g)) / rho + 1.0
    for _ in range(200):
        mu = 0.5 * (lo + hi)
        norm = float(torch.linalg.vector_norm(c / (mu - lam)))
        lo, hi = (mu, hi) if norm > rho else (lo, mu)
    eps = U @ (c / (mu - lam))
    return float(g @ eps + 0.5 * eps @ A @ eps)


def test_sam_first_order_closed_form():
    A, b, theta, f = quadratic()
    g = A @ theta + b
    rho = 0.3
    res = ball_sharpness(f, theta, rho=rho)
    gh = g / torch.linalg.vector_norm(g)
    assert math.isclose(
        res.value, float(rho * torch.linalg.vector_norm(g) + 0.5 * rho**2 * gh @ A @ gh), rel_tol=1e-12
    )
    assert math.isclose(res.epsilon_norm, rho, rel_tol=1e-12)


def test_multi_step_ascent_reaches_trust_region_optimum():
    A, b, theta, f = quadratic()
    g = A @ theta + b
    rho = 2.0
    optimum = trust_region_max(A, g, rho)
    one = ball_sharpness(f, theta, rho=rho, steps=1).value
    many = ball_sharpness(f, theta, rho=rho, steps=60).value
    assert one < many <= optimum * (1 + 1e-9)
    assert many >= optimum * (1 - 1e-4)


def test_asam_is_invariant_to_coordinate_rescaling_and_sam_is_not():
    A, b, theta, f = quadratic()
    s = torch.linspace(0.2, 5.0, len(theta), dtype=F64)

    def f_scaled(u):
        return f(s * u)

    for steps in (1, 4):
        asam = ball_sharpness(f, theta, rho=0.1, adaptive=True, eta=0.0, steps=steps).value
        asam_scaled = ball_sharpness(f_scaled, theta / s, rho=0.1, adaptive=True, eta=0.0, steps=steps).value
        assert math.isclose(asam, asam_scaled, rel_tol=1e-10)
    sam = ball_sharpness(f, theta, rho=0.1).value
    sam_scaled = ball_sharpness(f_scaled, theta / s, rho=0.1).value
    assert not math.isclose(sam, sam_scaled, rel_tol=1e-2)


def test_epsilon_sharpness_of_model_matches_manual_perturbation():
    model, batch = tiny_gpt(), random_batch()
    res = epsilon_sharpness(model, batch, rho=0.05)
    ref = copy.deepcopy(model).eval()
    loss = lm_loss(ref(batch[0]), batch[1])
    grads = torch.autograd.grad(loss, list(ref.parameters()))
    norm = torch.sqrt(sum((g**2).sum() for g in grads))
    with torch.no_grad():
        for p, g in zip(ref.parameters(), grads):
            p.add_(0.05 * g / norm)
        perturbed = float(lm_loss(ref(batch[0]), batch[1]))
    assert math.isclose(res.loss, float(loss.detach()), rel_tol=1e-12)
    assert math.isclose(res.perturbed_loss, perturbed, rel_tol=1e-10)
    assert res.value > 0
    adaptive = epsilon_sharpness(model, batch, rho=0.05, adaptive=True, steps=3)
    assert adaptive.value >= 0
    with pytest.raises(InfogeomError):
        epsilon_sharpness(model, batch, rho=0.0)


def dense_fisher(model, batch):
    """F = (1/N) Σ_n J_nᵀ (diag p_n − p_n p_nᵀ) J_n from the full logits Jacobian (jacrev)."""
    params = {n: p.detach() for n, p in model.named_parameters()}
    names, shapes = list(params), [p.shape for p in params.values()]
    flat = torch.cat([p.reshape(-1) for p in params.values()])

    def logits(v):
        return functional_call(model, dict(zip(names, unflatten(v, shapes))), (batch[0],)).reshape(-1, 11)

    J = jacrev(logits)(flat)  # [N, V, P]
    p = logits(flat).softmax(-1)
    M = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    return torch.einsum("nvp,nvw,nwq->pq", J, M, J) / J.shape[0]


@pytest.fixture(scope="module")
def gpt_curvatures():
    model, batch = tiny_gpt(), random_batch()
    return model, batch, dense_hessian(model, batch), dense_fisher(model, batch)


def test_fisher_rao_sharpness_matches_dense_generalized_eigh(gpt_curvatures):
    """Matrix-free H against scipy's dense generalized eigh; F enters as the jacrev oracle's matrix (its
    exact solve keeps the test fast; FisherOperator's own CG solve is the geometry module's, tested
    there)."""
    model, batch, H, F = gpt_curvatures
    damping = 0.05
    ref = scipy.linalg.eigh(
        H.numpy(), (F + damping * torch.eye(len(F), dtype=F64)).numpy(), eigvals_only=True
    )
    res = fisher_rao_sharpness(
        HessianOperator(model, batch),
        DenseOperator(F),
        damping=damping,
        k=2,
        tol=1e-9,
        generator=torch.Generator().manual_seed(0),
    )
    assert res.converged
    assert torch.allclose(res.values, torch.tensor(ref[::-1][:2].copy()), rtol=1e-7)
    with pytest.raises(InfogeomError):
        fisher_rao_sharpness(DenseOperator(H), DenseOperator(F), damping=0.0)


def test_fisher_rao_sharpness_is_reparameterization_invariant():
    """θ = Mψ maps H ↦ MᵀHM, F ↦ MᵀFM; with the damping mapped too (δ MᵀM) λ_FR is unchanged."""
    g = torch.Generator().manual_seed(0)
    X = torch.randn(30, 30, generator=g, dtype=F64)
    H = X + X.T
    Y = torch.randn(30, 30, generator=g, dtype=F64)
    F = Y @ Y.T / 30 + 0.1 * torch.eye(30, dtype=F64)
    M = torch.randn(30, 30, generator=g, dtype=F64) + 5 * torch.eye(30, dtype=F64)
    a = fisher_rao_sharpness(DenseOperator(H), DenseOperator(F), damping=1e-3, tol=1e-10, generator=g)
    b = fisher_rao_sharpness(
        DenseOperator(M.T @ H @ M),
        DenseOperator(M.T @ (F + 1e-3 * torch.eye(30, dtype=F64)) @ M),
        damping=1e-15,
        tol=1e-10,
        generator=g,
    )
    assert math.isclose(float(a.values[0]), float(b.values[0]), rel_tol=1e-6)
    plain = torch.linalg.eigvalsh(M.T @ H @ M)[-1]
    assert not math.isclose(float(torch.linalg.eigvalsh(H)[-1]), float(plain), rel_tol=1e-2)


def test_adam_preconditioner_replays_adam_moments_and_preconditioned_sharpness(gpt_curvatures):
    model, batch, H, _ = gpt_curvatures
    trained = copy.deepcopy(model)  # the optimizer state comes from a few AdamW steps on a copy
    opt = torch.optim.AdamW(trained.parameters(), lr=1e-2, betas=(0.8, 0.9), eps=1e-6, weight_decay=0.1)
    names = [n for n, _ in trained.named_parameters()]
    v = {n: torch.zeros_like(p) for n, p in trained.named_parameters()}
    for step in range(3):
        b = random_batch(seed=step + 1)
        opt.zero_grad()
        lm_loss(trained(b[0]), b[1]).backward()
        for n, p in trained.named_parameters():
            v[n] = 0.9 * v[n] + 0.1 * p.grad**2
        opt.step()
    t = 3
    expected = torch.cat([((1 - 0.8**t) * ((v[n] / (1 - 0.9**t)).sqrt() + 1e-6)).reshape(-1) for n in names])
    P = adam_preconditioner(opt, trained, names)
    assert torch.allclose(P.diagonal(), expected, rtol=1e-12)
    d = expected.rsqrt()
    ref = torch.linalg.eigvalsh(d[:, None] * H * d[None, :])
    res = preconditioned_sharpness(
        HessianOperator(model, batch), P, k=2, tol=1e-9, generator=torch.Generator().manual_seed(0)
    )
    assert torch.allclose(res.values, ref.flip(0)[:2], rtol=1e-7)
    info = optimizer_sharpness(HessianOperator(model, batch), opt, trained, tol=1e-9)
    assert info["kind"] == "adam" and math.isclose(info["threshold"], (2 + 2 * 0.8) / (0.2 * 1e-2))
    assert math.isclose(info["sharpness"], float(ref[-1]), rel_tol=1e-7)
    with pytest.raises(InfogeomError):
        adam_preconditioner(torch.optim.AdamW(trained.parameters()), trained, names)


@pytest.mark.parametrize("momentum, nesterov", [(0.0, False), (0.9, False), (0.9, True)])
def test_sgd_threshold_separates_stable_from_divergent_torch_sgd(momentum, nesterov):
    lr = 0.1
    probe = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr, momentum=momentum, nesterov=nesterov)
    threshold = eos_threshold(probe)["threshold"]

    def final_abs(curvature):
        w = torch.ones(1, dtype=F64, requires_grad=True)
        opt = torch.optim.SGD([w], lr=lr, momentum=momentum, nesterov=nesterov)
        for _ in range(3000):
            opt.zero_grad()
            (0.5 * curvature * w**2).sum().backward()
            opt.step()
        return float(w.abs().nan_to_num(nan=math.inf))

    assert final_abs(0.97 * threshold) < 1.0 < final_abs(1.03 * threshold)


def test_adam_threshold_separates_stable_from_divergent_frozen_preconditioner():
    """θ ← θ − η P⁻¹ m, m ← β1 m + (1 − β1) Hθ: stable iff λ(P⁻¹H) < (2 + 2β1)/((1 − β1)η)."""
    lr, beta1 = 1e-3, 0.9
    probe = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=lr, betas=(beta1, 0.999))
    threshold = eos_threshold(probe)["threshold"]
    assert math.isclose(threshold, 38 / lr)
    H = torch.diag(torch.tensor([3.0, 1.0], dtype=F64))
    P = DiagonalOperator(torch.tensor([2.0, 5.0], dtype=F64))
    top = float(preconditioned_sharpness(DenseOperator(H), P, tol=1e-12).values[0])
    assert math.isclose(top, 1.5)

    def final_abs(scale):
        theta, m = torch.ones(2, dtype=F64), torch.zeros(2, dtype=F64)
        for _ in range(4000):
            m = beta1 * m + (1 - beta1) * (scale * H @ theta)
            theta = theta - lr * P.solve(m)
        return float(theta.abs().max().nan_to_num(nan=math.inf))

    critical = threshold / top
    assert final_abs(0.97 * critical) < 1.0 < final_abs(1.03 * critical)
