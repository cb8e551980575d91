"""Brute-force float64 oracles shared by the geometry tests (full Jacobians, dense Fishers), checked here
against finite differences and per-token autograd so that the other tests can trust them."""

import torch
from conftest import random_batch, tiny_gpt
from torch.func import functional_call, jacrev

from infogeom.geometry import flatten, unflatten
from infogeom.models import lm_loss


def flat_params(model, names=None):
    params = {n: p.detach() for n, p in model.named_parameters() if names is None or n in names}
    return list(params), [p.shape for p in params.values()], flatten(list(params.values()))


def logits_of_flat(model, x, names=None):
    names, shapes, _ = flat_params(model, names)
    return lambda v: functional_call(model, dict(zip(names, unflatten(v, shapes))), (x,), strict=False)


def dense_jacobian(model, x, names=None):
    """J [B, T, V, P] = ∂logits/∂θ by ``jacrev`` and the logits at θ."""
    _, _, flat = flat_params(model, names)
    f = logits_of_flat(model, x, names)
    return jacrev(f)(flat), f(flat).detach()


def softmax_hessian(logits):
    """diag(p) − p pᵀ per position: [B, T, V, V]."""
    p = logits.softmax(-1)
    return torch.diag_embed(p) - p[..., :, None] * p[..., None, :]


def dense_fisher(model, batch, names=None):
    """Exact Fisher (1/N) Σ_n J_nᵀ (diag p_n − p_n p_nᵀ) J_n from the full Jacobian (closed-form output
    Hessian)."""
    J, logits = dense_jacobian(model, batch[0], names)
    F = torch.einsum("btvp,btvw,btwq->pq", J, softmax_hessian(logits), J) / batch[1].numel()
    assert torch.allclose(F, F.T, atol=1e-14)
    return F


def per_token_gradients(model, batch, names=None):
    """g_n = ∇_θ[−log p(y_n | x)] for every token n, by one autograd call per token: [N, P]."""
    names_, shapes, flat = flat_params(model, names)
    v = flat.clone().requires_grad_(True)
    logits = logits_of_flat(model, batch[0], names)(v)
    logp = logits.log_softmax(-1).gather(-1, batch[1][..., None])[..., 0].reshape(-1)
    return torch.stack([torch.autograd.grad(-lp, v, retain_graph=True)[0] for lp in logp])


def test_jacobian_oracle_matches_finite_differences():
    model, (x, _) = tiny_gpt(), random_batch()
    J, _ = dense_jacobian(model, x)
    _, _, flat = flat_params(model)
    f = logits_of_flat(model, x)
    v = torch.randn(flat.shape, dtype=torch.float64)
    eps = 1e-6
    fd = (f(flat + eps * v) - f(flat - eps * v)) / (2 * eps)
    jv = torch.einsum("btvp,p->btv", J, v)
    assert torch.linalg.vector_norm(fd - jv) <= 1e-7 * torch.linalg.vector_norm(jv)


def test_per_token_gradients_sum_to_loss_gradient():
    model, batch = tiny_gpt(), random_batch()
    G = per_token_gradients(model, batch)
    _, _, flat = flat_params(model)
    v = flat.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(lm_loss(logits_of_flat(model, batch[0])(v), batch[1]), v)
    assert torch.allclose(G.mean(0), g, rtol=1e-10, atol=1e-14)
