"""NaturalGradientCG against a dense float64 oracle: Fisher from the full Jacobian (``torch.func.jacrev``)."""

import pytest
import torch
import torch.nn as nn
from torch.func import functional_call, jacrev

from infogeom.models import lm_loss
from infogeom.optim import NaturalGradientCG
from infogeom.optim.capture import BatchCapture

D_IN, V, N, T = 3, 4, 6, 2


def setup(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(D_IN, V)).double()
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, T, D_IN, generator=g, dtype=torch.float64)
    return model, x, torch.randint(0, V, (N, T), generator=g)


def dense(model, x, y):
    """(loss, gradient, exact Fisher) in ``named_parameters`` order."""
    params = {n: p.detach() for n, p in model.named_parameters()}
    f = lambda p: functional_call(model, p, (x,))  # noqa: E731
    jac = jacrev(f)(params)
    J = torch.cat([jac[n].reshape(N * T, V, -1) for n in params], dim=2)
    logits = f(params).reshape(N * T, V)
    p = logits.softmax(-1)
    M = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    F = torch.einsum("nvp,nvw,nwq->pq", J, M, J) / (N * T)
    r = (p - nn.functional.one_hot(y.reshape(-1), V)) / (N * T)
    return lm_loss(logits[None], y.reshape(1, -1)), torch.einsum("nvp,nv->p", J, r), F


def flat(model):
    return torch.cat([p.detach().reshape(-1).clone() for p in model.parameters()])


def test_capture_recovers_the_observed_targets_from_the_output_gradient():
    model, x, y = setup()
    cap = BatchCapture(model)
    (0.25 * lm_loss(model(x), y)).backward()  # a gradient-accumulation scale does not matter
    bx, by = cap.batch()
    assert torch.equal(bx, x) and torch.equal(by, y)
    assert torch.equal(cap.batch(2)[1], y[:2])


@pytest.mark.parametrize("lr", [1.0, 0.5])
def test_step_is_the_damped_natural_gradient_and_damping_follows_the_reduction_ratio(lr):
    lam = 0.05
    model, x, y = setup()
    loss0, g, F = dense(model, x, y)
    P = F.shape[0]
    opt = NaturalGradientCG(model, lr=lr, damping=lam, cg_iters=4 * P, cg_tol=1e-13, curvature_batch=N,
                            kl_clip=None)
    before = flat(model)
    opt.zero_grad()
    lm_loss(model(x), y).backward()
    torch.testing.assert_close(torch.cat([p.grad.reshape(-1) for p in model.parameters()]), g)
    opt.step()
    s = flat(model) - before
    expected = -lr * torch.linalg.solve(F + lam * torch.eye(P, dtype=F.dtype), g)
    torch.testing.assert_close(s, expected, rtol=1e-7, atol=1e-10)
    loss1 = dense(model, x, y)[0]
    rho = (loss1 - loss0) / (g @ s + 0.5 * s @ F @ s)
    st = opt.state[next(model.parameters())]
    assert st["rho"] == pytest.approx(float(rho), rel=1e-6)
    factor = 1.5 if rho < 0.25 else (1 / 1.5 if rho > 0.75 else 1.0)
    assert st["damping"] == pytest.approx(lam * factor, rel=1e-12)


def test_trust_region_scales_the_step_and_a_step_that_raises_the_loss_is_undone():
    kappa = 1e-4
    model, x, y = setup()
    loss0, g, F = dense(model, x, y)
    P = F.shape[0]
    full = -torch.linalg.solve(F + 1e-3 * torch.eye(P, dtype=F.dtype), g)
    nu = (kappa / float(full @ F @ full)) ** 0.5
    assert nu < 0.5
    opt = NaturalGradientCG(model, lr=1.0, damping=1e-3, cg_iters=4 * P, cg_tol=1e-13, curvature_batch=N,
                            kl_clip=kappa)
    before = flat(model)
    lm_loss(model(x), y).backward()
    opt.step()
    torch.testing.assert_close(flat(model) - before, nu * full, rtol=1e-7, atol=1e-10)

    model, x, y = setup()
    opt = NaturalGradientCG(model, lr=-50.0, damping=1e-3, curvature_batch=N, kl_clip=None)  # uphill
    before = flat(model)
    lm_loss(model(x), y).backward()
    opt.step()
    st = opt.state[next(model.parameters())]
    assert torch.equal(flat(model), before) and st["rejected"] and st["damping"] > 1e-3


def test_step_without_a_training_backward_is_a_clear_error():
    from infogeom.errors import InfogeomError

    model, x, y = setup()
    opt = NaturalGradientCG(model)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    with pytest.raises(InfogeomError, match="forward/backward"):
        opt.step()
