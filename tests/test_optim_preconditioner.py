"""Every optimizer's ``preconditioner()`` reproduces the update it applied: Δθ = −η₀ P⁻¹ d − (weight decay), with
d rebuilt here from the recorded gradients by each optimizer's documented momentum recursion (float64, tiny GPT),
and each edge-of-stability factor separates stable from divergent runs of its own recursion."""

import math

import pytest
import torch
from conftest import random_batch, tiny_gpt

from infogeom.errors import InfogeomError
from infogeom.geometry.quantum_layers import layer_metric
from infogeom.models import lm_loss
from infogeom.models.quantum_layer import add_quantum_layers, quantum_layers
from infogeom.operators import flatten
from infogeom.optim import build_optimizer, preconditioner
from infogeom.optim.polar import newton_schulz_map
from infogeom.optim.preconditioner import ema_factor, heavy_ball_factor

STEPS = 4


def run(name, lr, wd, model=None, **options):
    """Train ``STEPS`` steps; per step: params before, gradients, params after, P after the step, optimizer."""
    model = model or tiny_gpt()
    opt = build_optimizer(name, model, lr, wd, **options)
    names = [n for n, _ in model.named_parameters()]
    history = []
    for t in range(STEPS):
        x, y = random_batch(seed=t + 1)
        opt.zero_grad()
        lm_loss(model(x), y).backward()
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
        opt.step()
        after = {n: p.detach().clone() for n, p in model.named_parameters()}
        nu = getattr(getattr(opt, "core", None), "nu", None)  # K-FAC's KL-clip factor of this step
        history.append(dict(before=before, grad=grads, after=after, P=preconditioner(opt, model), opt=opt, nu=nu))
    return model, names, history


def decay_of(opt, model):
    """Per-parameter (lr, weight decay) of the group holding it."""
    ids = {id(p): n for n, p in model.named_parameters()}
    return {ids[id(p)]: (g["lr"], g["weight_decay"]) for g in opt.param_groups for p in g["params"]}


def check(history, names, model, direction, rtol=1e-9, skip=()):
    """Δθ_t + η_p wd_p θ_{t−1} = −η₀ P_t⁻¹ d_t for every step t and every parameter not in ``skip``."""
    for t, h in enumerate(history):
        opt, P = h["opt"], h["P"]
        assert P.names == names
        groups = decay_of(opt, model)
        lr0 = opt.param_groups[0]["lr"]
        d = flatten([direction(t, n) for n in names])
        want = dict(zip(names, torch.split(-lr0 * P.solve(d, tol=1e-12), [h["before"][n].numel() for n in names])))
        for n in names:
            if n in skip:
                continue
            lr, wd = groups[n]
            got = h["after"][n] - h["before"][n] * (1 - lr * wd)
            err = (got.reshape(-1) - want[n]).norm() / want[n].norm().clamp_min(1e-300)
            assert err <= rtol, (t, n, float(err))


def ema(history, t, n, beta):
    m = torch.zeros_like(history[0]["grad"][n])
    for s in range(t + 1):
        m = beta * m + (1 - beta) * history[s]["grad"][n]
    return m


def test_adamw():
    model, names, h = run("adamw", 1e-2, 0.1, betas=(0.8, 0.9), eps=1e-6)
    check(h, names, model, lambda t, n: ema(h, t, n, 0.8))


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_momentum_with_coupled_weight_decay(nesterov):
    mu, wd, lr = 0.9, 0.05, 0.1
    model = tiny_gpt()
    names = [n for n, _ in model.named_parameters()]
    opt = build_optimizer("sgd", model, lr, wd, momentum=mu, nesterov=nesterov)
    groups = decay_of(opt, model)
    buf = {}
    for t in range(STEPS):
        x, y = random_batch(seed=t + 1)
        opt.zero_grad()
        lm_loss(model(x), y).backward()
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        g = {n: p.grad + groups[n][1] * before[n] for n, p in model.named_parameters()}  # torch SGD: L2 decay
        buf = {n: g[n] if not buf else mu * buf[n] + g[n] for n in names}
        d = flatten([g[n] + mu * buf[n] if nesterov else buf[n] for n in names])
        opt.step()
        P = preconditioner(opt, model)
        got = flatten([p.detach() - before[n] for n, p in model.named_parameters()])
        assert torch.allclose(got, -lr * P.solve(d), rtol=1e-10, atol=1e-14)


def core_names(opt, model):
    return {n for la in opt.core.layers for n, p in model.named_parameters() if any(p is q for q in la.params)}


def test_ekfac_in_its_eigenbasis():
    model, names, h = run("ekfac", 1e-2, 0.1, cov_every=1, inv_every=2)
    b1, core = 0.9, core_names(h[0]["opt"], model)

    def moment(t, n):  # Nesterov look-ahead in the eigenbasis part, plain Adam moment in the AdamW part
        return (1 - b1) * h[t]["grad"][n] + b1 * ema(h, t, n, b1) if n in core else ema(h, t, n, b1)

    check(h, names, model, moment)


def test_kfac_with_momentum_and_kl_clip():
    mu = 0.9
    model, names, h = run("kfac", 3e-3, 0.1, momentum=mu, cov_every=1, inv_every=1, kl_clip=1e-9)
    opt = h[0]["opt"]
    core = core_names(opt, model)
    nus = []

    def direction(t, n):
        if n not in core:  # the AdamW part: its first moment
            return ema(h, t, n, opt.param_groups[-1]["betas"][0])
        return h[t]["grad"][n]

    # K-FAC's part: Δθ_t = −η(ν_t μ b_{t−1} + P_t⁻¹ g_t), b_{t−1} the previous applied direction
    for t, step in enumerate(h):
        groups = decay_of(step["opt"], model)
        lr0 = step["opt"].param_groups[0]["lr"]
        d = flatten([direction(t, n) for n in names])
        x = dict(zip(names, torch.split(-lr0 * step["P"].solve(d), [step["before"][n].numel() for n in names])))
        nu = step["nu"]
        nus.append(nu)
        for n in names:
            lr, wd = groups[n]
            got = (step["after"][n] - step["before"][n] * (1 - lr * wd)).reshape(-1)
            want = x[n]
            if n in core and t > 0:
                prev = h[t - 1]
                b_prev = -(prev["after"][n] - prev["before"][n] * (1 - lr * wd)).reshape(-1) / lr
                want = want - lr * nu * mu * b_prev
            assert (got - want).norm() <= 1e-8 * want.norm(), (t, n)
    assert min(nus) < 1.0  # the KL clip was active, so ν is part of P


@pytest.mark.parametrize("ns_dtype", ["bfloat16", "float64"])
def test_muon_polar_metric(ns_dtype):
    model, names, h = run("muon", 2e-2, 0.1, ns_dtype=ns_dtype)
    opt = h[0]["opt"]
    hidden = {n for n, p in model.named_parameters() for q in opt._parts[0].param_groups[0]["params"] if p is q}
    mu = opt._parts[0].param_groups[0]["momentum"]

    def direction(t, n):
        if n in hidden:  # Nesterov momentum M̃ = (1 − μ) g + μ buf, buf the EMA
            return (1 - mu) * h[t]["grad"][n] + mu * ema(h, t, n, mu)
        return ema(h, t, n, opt.param_groups[-1]["betas"][0])

    check(h, names, model, direction, skip=hidden)  # the AdamW part exactly
    # the Muon part: P⁻¹M̃ = adj · NS₅(M̃) with NS run here in float64 as matrix iterations (an independent oracle)
    group = opt._parts[0].param_groups[0]
    a, b, c = group["ns_coefficients"]
    for t, step in enumerate(h):
        for n in hidden:
            M = direction(t, n)
            X = M / M.norm()
            flip = X.shape[0] > X.shape[1]
            X = X.T if flip else X
            for _ in range(group["ns_steps"]):
                A = X @ X.T
                X = a * X + (b * A + c * A @ A) @ X
            X = X.T if flip else X
            adj = 0.2 * math.sqrt(max(M.shape))
            sub = step["P"]
            idx = names.index(n)
            offset = sum(step["before"][m].numel() for m in names[:idx])
            full = torch.zeros(sub.dim, dtype=M.dtype)
            full[offset:offset + M.numel()] = M.reshape(-1)
            got = sub.solve(full)[offset:offset + M.numel()].reshape(M.shape)
            assert torch.allclose(got, adj * X, rtol=1e-8, atol=1e-10), (t, n)
            applied = -(step["after"][n] - step["before"][n] * (1 - group["lr"] * group["weight_decay"])) / group["lr"]
            # torch runs Newton–Schulz in bfloat16: the quintic map amplifies the rounding of small singular
            # values (slope 3.4 per step), so its update only approximates the float64 polynomial
            cos = float((applied * got).sum() / (applied.norm() * got.norm()))
            assert (applied - got).norm() <= 0.3 * got.norm() and cos >= 0.95, (t, n, cos)
            if ns_dtype == "float64":  # FloatNSMuon: the polynomial itself
                assert (applied - got).norm() <= 1e-8 * got.norm(), (t, n)


@pytest.mark.parametrize("exponent, max_basis_dim", [(0.5, None), (0.25, 16)])
def test_fisher_muon_whitened_polar_metric(exponent, max_basis_dim):
    """Fisher–Muon's P, exact for the float64 polynomial: with Newton–Schulz run in float64 the applied update
    is −η P⁻¹M̃ to round-off (M̃ the Nesterov momentum); ``max_basis_dim=16`` keeps the 24/32-wide sides
    diagonal."""
    mu = 0.9
    model, names, h = run("fisher-muon", 2e-2, 0.1, exponent=exponent, momentum=mu, cov_every=1, inv_every=2,
                          ns_dtype="float64", max_basis_dim=max_basis_dim)
    opt = h[0]["opt"]
    core = core_names(opt, model)
    assert any(opt.core.state[la.weight]["QL"] is None or opt.core.state[la.weight]["QR"] is None
               for la in opt.core.layers) == (max_basis_dim is not None)

    def direction(t, n):
        if n in core:  # Nesterov momentum M̃ = (1 − μ) g + μ buf, buf the EMA
            return (1 - mu) * h[t]["grad"][n] + mu * ema(h, t, n, mu)
        return ema(h, t, n, opt.param_groups[-1]["betas"][0])

    check(h, names, model, direction, rtol=1e-7)


def test_newton_schulz_map_matches_the_matrix_iteration():
    s = torch.linspace(0.01, 1.0, 7, dtype=torch.float64)
    X = torch.diag(s)
    for _ in range(5):
        A = X @ X.T
        X = 3.4445 * X + (-4.7750 * A + 2.0315 * A @ A) @ X
    assert torch.allclose(newton_schulz_map(s, 5, (3.4445, -4.7750, 2.0315)), X.diagonal(), atol=1e-12)


def test_ngcg_damped_fisher():
    model, names, h = run("ngcg", 0.05, 0.0, cg_iters=500, cg_tol=1e-14, curvature_batch=2, damping=0.5)
    assert not any(s["opt"]._global()["rejected"] for s in h)
    check(h, names, model, lambda t, n: h[t]["grad"][n], rtol=1e-7)


def test_qng_damped_metric():
    model = tiny_gpt()
    add_quantum_layers(model, blocks=(0,), n_qubits=2, n_layers=1)
    model.double()
    model, names, h = run("qng", 1e-2, 0.0, model=model, damping=1e-2)
    opt = h[0]["opt"]
    layer = quantum_layers(model)[0]
    wname = next(n for n, p in model.named_parameters() if p is layer.weight)

    def direction(t, n):
        return h[t]["grad"][n] if n == wname else ema(h, t, n, opt.param_groups[-1]["betas"][0])

    check(h, names, model, direction)
    G = layer_metric(layer, angles=layer.last_angles)
    assert G.shape == (layer.weight.numel(),) * 2


def test_preconditioner_before_any_step_is_one_clear_error():
    model = tiny_gpt()
    for name in ("adamw", "kfac", "ekfac", "fisher-muon", "muon", "ngcg"):
        with pytest.raises(InfogeomError):
            preconditioner(build_optimizer(name, model, 1e-3), model)
    with pytest.raises(InfogeomError, match="no preconditioner is known"):
        preconditioner(torch.optim.Adagrad(model.parameters()), model)


def _final(recursion, a, lr, steps=3000):
    theta, state = 1.0, 0.0
    for _ in range(steps):
        theta, state = recursion(theta, state, a, lr)
        if not math.isfinite(theta) or abs(theta) > 1e6:
            return math.inf
    return abs(theta)


def _heavy(mu):
    def step(theta, b, a, lr):
        b = mu * b + a * theta
        return theta - lr * b, b
    return step


def _ema_nesterov(beta):
    def step(theta, m, a, lr):
        g = a * theta
        m = beta * m + (1 - beta) * g
        return theta - lr * ((1 - beta) * g + beta * m), m
    return step


def _ema(beta):
    def step(theta, m, a, lr):
        m = beta * m + (1 - beta) * a * theta
        return theta - lr * m, m
    return step


@pytest.mark.parametrize("recursion, factor", [
    (_heavy(0.0), heavy_ball_factor(0.0)), (_heavy(0.81), heavy_ball_factor(0.81)),
    (_ema(0.9), ema_factor(0.9)), (_ema_nesterov(0.9), ema_factor(0.9, nesterov=True)),
    (_ema_nesterov(0.95), ema_factor(0.95, nesterov=True)),
])
def test_edge_of_stability_factors_separate_stable_from_divergent(recursion, factor):
    lr = 0.01
    critical = factor / lr
    assert _final(recursion, 0.97 * critical, lr) < 1.0 < _final(recursion, 1.03 * critical, lr)
