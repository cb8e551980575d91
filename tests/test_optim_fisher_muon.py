"""Fisher–Muon against dense float64 oracles: the whitened polar step computed in raw coordinates with matrix
powers and the Newton–Schulz matrix iteration (no eigenbases), and exponent 0 against torch's own Muon."""

import math

import pytest
import torch
from conftest import tiny_gpt
from test_optim_kfac import D_IN, N, V, data, linear_model, one_step, to_matrix

from infogeom.errors import InfogeomError
from infogeom.models import lm_loss
from infogeom.optim import FisherMuon, build_optimizer


def matrix_power(S: torch.Tensor, p: float) -> torch.Tensor:
    e, Q = torch.linalg.eigh(S)
    return Q @ torch.diag(e.pow(p)) @ Q.T


def newton_schulz_iteration(M: torch.Tensor, steps=5, coefficients=(3.4445, -4.7750, 2.0315)) -> torch.Tensor:
    a, b, c = coefficients
    X = M / M.norm()
    flip = X.shape[0] > X.shape[1]
    X = X.T if flip else X
    for _ in range(steps):
        A = X @ X.T
        X = a * X + (b * A + c * A @ A) @ X
    return X.T if flip else X


@pytest.mark.parametrize("exponent, lam", [(0.5, 1e-1), (0.25, 1e-2), (0.0, 1e-2)])
def test_first_step_is_the_whitened_polar_step(exponent, lam):
    """Exact Fisher factors G (softmax covariance) and A (input second moment, with the bias 1): with
    L̂ = G/ē_G + λI, R̂ = A/ē_A + λI, Z = L̂^{−p} M̃ R̂^{−p}, D = L̂^{−p} NS(Z) R̂^{−p}, the step is
    −η·0.2√max(V, D_IN+1)·(‖NS(Z)‖/‖D‖)·D, M̃ = (1 − μ²)X at t = 1."""
    model, (x, y) = linear_model(zero=False), data()
    a = torch.cat([x.reshape(N, D_IN), torch.ones(N, 1, dtype=torch.float64)], dim=1)
    with torch.no_grad():
        p = model(x).reshape(N, V).softmax(-1)
    A, G = a.T @ a / N, (torch.diag_embed(p) - p[:, :, None] * p[:, None, :]).mean(0)
    lr, mu = 0.05, 0.95
    opt = FisherMuon(model, lr=lr, exponent=exponent, damping=lam, momentum=mu, fisher="exact", approx="expand",
                     ns_dtype="float64")
    step, g = one_step(opt, model, x, y)
    L, R = (M / M.trace() * M.shape[0] + lam * torch.eye(M.shape[0], dtype=M.dtype) for M in (G, A))
    WL, WR = matrix_power(L, -exponent), matrix_power(R, -exponent)
    O = newton_schulz_iteration(WL @ ((1 - mu**2) * to_matrix(g)) @ WR)
    D = WL @ O @ WR
    expected = -lr * 0.2 * math.sqrt(max(V, D_IN + 1)) * O.norm() / D.norm() * D
    torch.testing.assert_close(to_matrix(step), expected, rtol=1e-8, atol=1e-11)
    if exponent == 0.0:
        torch.testing.assert_close(D, O)


@pytest.mark.parametrize("nesterov", [True, False])
def test_exponent_zero_is_torch_muon(nesterov):
    """p = 0 with bfloat16 Newton–Schulz is torch.optim.Muon (+ the same AdamW): after 4 steps the AdamW part
    moved alike (cosine ≥ 0.9999: the same AdamW on slightly different gradients) and every hidden matrix's
    displacement agrees with Muon's (cosine ≥ 0.985, norm within 2%: the bfloat16 rounding of Newton–Schulz in
    the factors' eigenbasis instead of raw coordinates); torch's Muon with the other Nesterov setting does
    not (cosine < 0.97; measured ≤ 0.955)."""
    models = [tiny_gpt(dtype=torch.float32, n_layer=2, bias=False) for _ in range(3)]
    for m in models[1:]:
        m.load_state_dict(models[0].state_dict())
    ours = build_optimizer("fisher-muon", models[0], 3e-3, 0.1, exponent=0.0, ns_dtype="bfloat16",
                           nesterov=nesterov)
    muons = [build_optimizer("muon", m, 3e-3, 0.1, nesterov=n) for m, n in zip(models[1:], (nesterov, not nesterov))]
    before = {n: p.detach().clone() for n, p in models[0].named_parameters()}
    g = torch.Generator().manual_seed(0)
    for _ in range(4):
        x, y = torch.randint(0, 11, (4, 8), generator=g), torch.randint(0, 11, (4, 8), generator=g)
        for model, opt in zip(models, (ours, *muons)):
            opt.zero_grad()
            lm_loss(model(x), y).backward()
            opt.step()
    hidden = {n for la in ours.core.layers for n, p in models[0].named_parameters() if p is la.weight}
    assert len(hidden) == 8
    worst = 1.0
    for (n, p), q, r in zip(models[0].named_parameters(), models[1].parameters(), models[2].parameters()):
        u, v, w = (t.detach() - before[n] for t in (p, q, r))
        cos = float((u * v).sum() / (u.norm() * v.norm()))
        if n not in hidden:  # the same AdamW, on slightly different gradients
            assert cos >= 0.9999 and abs(float(u.norm() / v.norm()) - 1) < 1e-3, (n, cos)
            continue
        assert cos >= 0.985 and abs(float(u.norm() / v.norm()) - 1) < 0.02, (n, cos)
        worst = min(worst, float((u * w).sum() / (u.norm() * w.norm())))
    assert worst < 0.97  # the test tells the two momentum forms apart


def test_bad_options_raise_one_clear_error():
    model = linear_model(zero=True)
    for options in (dict(exponent=1.5), dict(momentum=1.0), dict(ns_dtype="int8"), dict(damping=0.0)):
        with pytest.raises(InfogeomError):
            build_optimizer("fisher-muon", model, 0.1, 0.0, **options)
