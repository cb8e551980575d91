"""K-FAC / EK-FAC steps against dense float64 oracles on a model whose Fisher is exactly Kronecker.

Model: one linear layer z = W a + b on one token per sequence (x [N, 1, d] -> logits [N, 1, V]). Its exact
Fisher is F = (1/N) Σ_n M_n ⊗ ã_n ã_nᵀ (ã = [a; 1], row-major [W | b]), M_n = diag(p_n) − p_n p_nᵀ. With W =
0, b = 0 every p_n is uniform, so F = G ⊗ A exactly with G = M, A = (1/N) Σ ã ãᵀ. The oracle Fisher is built
from the full Jacobian (``torch.func.jacrev``), independently of the hooks.
"""

import math

import pytest
import torch
import torch.nn as nn
from conftest import tiny_gpt
from torch.func import functional_call, jacrev

from infogeom.errors import InfogeomError
from infogeom.models import lm_loss
from infogeom.optim import EKFAC, KFAC, build_optimizer

D_IN, V, N = 4, 5, 16


def linear_model(zero: bool) -> nn.Module:
    model = nn.Sequential(nn.Linear(D_IN, V)).double()
    if zero:
        nn.init.zeros_(model[0].weight)
        nn.init.zeros_(model[0].bias)
    return model


def data(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(N, 1, D_IN, generator=g, dtype=torch.float64), torch.randint(0, V, (N, 1), generator=g)


def dense_fisher(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(1/N) Σ_n J_nᵀ M_n J_n in [vec(W) row-major, b] order, from jacrev of the logits."""
    params = {n: p.detach() for n, p in model.named_parameters()}
    jac = jacrev(lambda p: functional_call(model, p, (x,)))(params)
    J = torch.cat([jac[n].reshape(N, V, -1) for n in params], dim=2)  # [N, V, P]
    p = functional_call(model, params, (x,)).reshape(N, V).softmax(-1)
    M = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    return torch.einsum("nvp,nvw,nwq->pq", J, M, J) / N


def to_matrix(flat: torch.Tensor) -> torch.Tensor:
    """[vec(W), b] -> [W | b] ``[V, D_IN + 1]``."""
    return torch.cat([flat[: V * D_IN].reshape(V, D_IN), flat[V * D_IN:, None]], dim=1)


def one_step(opt, model, x, y) -> torch.Tensor:
    before = torch.cat([p.detach().reshape(-1).clone() for p in model.parameters()])
    opt.zero_grad()
    lm_loss(model(x), y).backward()
    grad = torch.cat([p.grad.reshape(-1).clone() for p in model.parameters()])
    opt.step()
    after = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    return after - before, grad


def kfac(model, **kw):
    opts = dict(lr=1.0, weight_decay=0.0, momentum=0.0, kl_clip=None, fisher="exact", approx="expand")
    opts.update(kw)
    return KFAC(model, **opts)


def test_fisher_of_the_test_model_is_exactly_kronecker():
    model, (x, _) = linear_model(zero=True), data()
    a = torch.cat([x.reshape(N, D_IN), torch.ones(N, 1, dtype=torch.float64)], dim=1)
    A, G = a.T @ a / N, (torch.eye(V, dtype=torch.float64) - 1 / V) / V
    F = dense_fisher(model, x)
    rows = torch.arange(V * D_IN).reshape(V, D_IN)
    perm = torch.cat([rows, V * D_IN + torch.arange(V)[:, None]], 1).reshape(-1)  # [vec(W), b] -> [W | b]
    torch.testing.assert_close(F[perm][:, perm], torch.kron(G, A), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("lam", [1e-3, 1e-1])
def test_kfac_exact_damping_step_is_the_exact_natural_gradient(lam):
    model, (x, y) = linear_model(zero=True), data()
    F = dense_fisher(model, x)
    step, g = one_step(kfac(model, damping=lam, damping_mode="exact"), model, x, y)
    expected = -torch.linalg.solve(F + lam * torch.eye(F.shape[0], dtype=F.dtype), g)
    torch.testing.assert_close(step, expected, rtol=1e-8, atol=1e-10)


def test_kfac_pi_damping_step_matches_dense_factored_tikhonov():
    lam = 1e-2
    model, (x, y) = linear_model(zero=True), data()
    step, g = one_step(kfac(model, damping=lam, damping_mode="pi", approx="reduce"), model, x, y)
    a = torch.cat([x.reshape(N, D_IN), torch.ones(N, 1, dtype=torch.float64)], dim=1)
    A, G = a.T @ a / N, (torch.eye(V, dtype=torch.float64) - 1 / V) / V
    pi = math.sqrt((A.trace() / A.shape[0]) / (G.trace() / V))
    damped = torch.kron(G + math.sqrt(lam) / pi * torch.eye(V, dtype=A.dtype),
                        A + pi * math.sqrt(lam) * torch.eye(D_IN + 1, dtype=A.dtype))
    expected = -torch.linalg.solve(damped, to_matrix(g).reshape(-1)).reshape(V, D_IN + 1)
    torch.testing.assert_close(to_matrix(step), expected, rtol=1e-8, atol=1e-10)


def test_kl_clip_bounds_the_quadratic_form_of_the_step():
    lam, kappa, lr = 1e-3, 1e-4, 0.5
    model, (x, y) = linear_model(zero=True), data()
    F = dense_fisher(model, x)  # = the K-FAC matrix here
    step, g = one_step(kfac(model, lr=lr, damping=lam, damping_mode="exact", kl_clip=kappa), model, x, y)
    unclipped = -lr * torch.linalg.solve(F + lam * torch.eye(F.shape[0], dtype=F.dtype), g)
    nu = min(1.0, math.sqrt(kappa / float(unclipped @ F @ unclipped)))
    assert nu < 0.5  # the clip is active in this configuration
    torch.testing.assert_close(step, nu * unclipped, rtol=1e-8, atol=1e-12)
    assert float(step @ F @ step) == pytest.approx(kappa, rel=1e-8)


@pytest.mark.parametrize("nesterov", [False, True])
def test_ekfac_first_step_is_normalized_descent_in_the_fisher_eigenbasis(nesterov):
    """At t = 1 the bias-corrected moments are m = Y, v = Y² with Y = Q_Lᵀ X Q_R, so
    Δ = Q_L (Y ⊘ (|Y| + ε)) Q_Rᵀ (Nesterov's look-ahead β₁m + (1−β₁)Y makes it (1 + β₁) times that); with
    W ≠ 0 the factors G = (1/N) Σ M_n, A = (1/N) Σ ã ãᵀ have simple spectra (the basis is unique)."""
    model, (x, y) = linear_model(zero=False), data()
    lr, eps = 0.01, 1e-8  # ε ≫ round-off of the null row of G (Σ_v ∂L/∂z_v = 0), ≪ the other entries
    a = torch.cat([x.reshape(N, D_IN), torch.ones(N, 1, dtype=torch.float64)], dim=1)
    with torch.no_grad():
        p = model(x).reshape(N, V).softmax(-1)
    A, G = a.T @ a / N, (torch.diag_embed(p) - p[:, :, None] * p[:, None, :]).mean(0)
    (_, QG), (_, QA) = torch.linalg.eigh(G), torch.linalg.eigh(A)
    opt = EKFAC(model, lr=lr, eps=eps, fisher="exact", approx="expand", nesterov=nesterov, betas=(0.9, 0.95))
    step, g = one_step(opt, model, x, y)
    Y = QG.T @ to_matrix(g) @ QA
    expected = -lr * (1.9 if nesterov else 1.0) * QG @ (Y / (Y.abs() + eps)) @ QA.T
    torch.testing.assert_close(to_matrix(step), expected, rtol=1e-7, atol=1e-9)


def test_unpreconditioned_parameters_fall_back_to_adamw():
    model = tiny_gpt(dtype=torch.float32, n_layer=1)
    opt = build_optimizer("kfac", model, 0.1, 0.0)
    covered = {id(p) for la in opt.core.layers for p in la.params}
    names = {n for n, p in model.named_parameters() if id(p) in covered}
    assert names == {f"blocks.0.{m}.{k}" for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
                     for k in ("weight", "bias")}  # tied head/embedding, norms, positions -> AdamW
    adamw = {id(p) for part in opt._parts[1:] for g in part.param_groups for p in g["params"]}
    assert adamw | covered == {id(p) for p in model.parameters()} and not adamw & covered


def test_bad_options_raise_infogeom_error():
    model = linear_model(zero=True)
    with pytest.raises(InfogeomError):
        build_optimizer("kfac", model, 0.1, 0.0, damping_mode="nope")
    with pytest.raises(InfogeomError):
        build_optimizer("kfac", model, 0.1, 0.0, cov_every=0)
    with pytest.raises(InfogeomError):
        build_optimizer("ekfac", model, 0.1, 0.0, approx="sideways")
    with pytest.raises(InfogeomError):
        build_optimizer("kfac", model, 0.1, 0.0, not_an_option=1)


@pytest.mark.parametrize("limit", [3, 2])
def test_max_basis_dim_replaces_larger_factors_by_their_diagonal(limit):
    """Sides wider than ``max_basis_dim`` keep only their diagonal: with W = 0 (F = G ⊗ A, G = (I − 1/V)/V,
    A = (1/N) Σ ã ãᵀ, ã ∈ R³, V = 5) and exact damping the step solves (diag(G) ⊗ Â + λI) Δ = −X, Â = A for
    limit 3 and diag(A) for limit 2."""
    lam, d_in = 1e-2, 2
    model = nn.Sequential(nn.Linear(d_in, V)).double()
    nn.init.zeros_(model[0].weight)
    nn.init.zeros_(model[0].bias)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(N, 1, d_in, generator=g, dtype=torch.float64), torch.randint(0, V, (N, 1), generator=g)
    step, _ = one_step(kfac(model, damping=lam, damping_mode="exact", max_basis_dim=limit), model, x, y)
    a = torch.cat([x.reshape(N, d_in), torch.ones(N, 1, dtype=torch.float64)], dim=1)
    A, G = a.T @ a / N, (torch.eye(V, dtype=torch.float64) - 1 / V) / V
    A_hat = A if limit >= 3 else torch.diag(A.diagonal())
    K = torch.kron(torch.diag(G.diagonal()), A_hat) + lam * torch.eye(V * (d_in + 1), dtype=A.dtype)
    X = torch.cat([model[0].weight.grad, model[0].bias.grad[:, None]], dim=1)
    expected = -torch.linalg.solve(K, X.reshape(-1)).reshape(V, d_in + 1)
    got = torch.cat([step[: V * d_in].reshape(V, d_in), step[V * d_in:, None]], dim=1)
    torch.testing.assert_close(got, expected, rtol=1e-8, atol=1e-10)
