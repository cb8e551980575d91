"""Noise scale (closed form for Gaussian linear regression; brute-force per-sequence gradients), landscape
slices (independent evaluation of perturbed model copies), block partitions and block spectra (dense
sub-blocks)."""

import copy
import math

import pytest
import torch
from conftest import random_batch, tiny_gpt
from test_hessian_operator import dense_hessian
from torch.func import grad, vmap

from infogeom.curvature import (
    block_spectra,
    filter_normalized_direction,
    gradient_noise_scale,
    interpolate_models,
    js_distance,
    loss_landscape,
    noise_scale,
    parameter_blocks,
    restrict,
    slice_1d,
)
from infogeom.curvature.params import FlatModel
from infogeom.errors import InfogeomError
from infogeom.geometry import DenseOperator, HessianOperator
from infogeom.models import lm_loss

F64 = torch.float64


def regression_per_example_grads(B, C, delta, sigma, g):
    """x ~ N(0, C), y = w*ᵀx + ε; per-example gradients of ½(wᵀx − y)² at w = w* + δ (torch.func, not
    ours)."""
    d = len(delta)
    x = torch.randn(B, d, generator=g, dtype=F64) @ torch.linalg.cholesky(C).T
    w_star = torch.zeros(d, dtype=F64)
    y = x @ w_star + sigma * torch.randn(B, generator=g, dtype=F64)
    return vmap(grad(lambda w, xi, yi: 0.5 * (w @ xi - yi) ** 2), in_dims=(None, 0, 0))(w_star + delta, x, y)


def test_noise_scale_matches_gaussian_linear_regression_closed_form():
    """G = Cδ, Σ = (δᵀCδ + σ²)C + CδδᵀC, H = C (Isserlis) ⇒ closed-form B_simple, B_noise."""
    g = torch.Generator().manual_seed(0)
    C = torch.tensor([[2.0, 0.3, 0.0], [0.3, 1.0, 0.1], [0.0, 0.1, 0.5]], dtype=F64)
    delta, sigma = torch.tensor([0.6, -0.4, 0.3], dtype=F64), 0.5
    dCd, C2, C3 = delta @ C @ delta, C @ C, C @ C @ C
    b_simple = float(((dCd + sigma**2) * C.trace() + delta @ C2 @ delta) / (delta @ C2 @ delta))
    b_noise = float(((dCd + sigma**2) * C2.trace() + delta @ C3 @ delta) / (delta @ C3 @ delta))
    est = noise_scale(regression_per_example_grads(40000, C, delta, sigma, g), DenseOperator(C))
    assert math.isclose(est.b_simple, b_simple, rel_tol=0.05)
    assert math.isclose(est.b_noise, b_noise, rel_tol=0.05)
    assert math.isclose(
        est.trace_sigma, float((dCd + sigma**2) * C.trace() + delta @ C2 @ delta), rel_tol=0.03
    )


def test_noise_scale_gradient_norm_estimate_is_unbiased_at_small_batch():
    g = torch.Generator().manual_seed(1)
    C = torch.eye(3, dtype=F64)
    delta = torch.tensor([0.3, 0.0, 0.1], dtype=F64)
    grads = regression_per_example_grads(4 * 3000, C, delta, 1.0, g).reshape(3000, 4, 3)
    ests = [noise_scale(G).grad_norm_sq for G in grads]
    naive = [float(G.mean(0) @ G.mean(0)) for G in grads]
    truth = float(delta @ delta)
    se = torch.tensor(ests).std().item() / math.sqrt(len(ests))
    assert abs(sum(ests) / len(ests) - truth) < 4 * se
    assert sum(naive) / len(naive) - truth > 10 * se  # the plain |ḡ|² is biased by tr(Σ)/B


def test_gradient_noise_scale_of_gpt_matches_brute_force():
    model, batch = tiny_gpt(), random_batch(B=3)
    grads = []
    for i in range(3):  # per-sequence gradients one at a time, plain autograd
        ref = copy.deepcopy(model).eval()
        loss = lm_loss(ref(batch[0][i : i + 1]), batch[1][i : i + 1])
        grads.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(ref.parameters()))]))
    G = torch.stack(grads)
    H = dense_hessian(model, batch)
    mean, S = G.mean(0), torch.cov(G.T)
    grad_sq = mean @ mean - S.trace() / 3
    tr_hs = (H * S).sum()
    ghg = mean @ H @ mean - tr_hs / 3
    est = gradient_noise_scale(model, batch)
    assert math.isclose(est.b_simple, float(S.trace() / grad_sq), rel_tol=1e-8)
    assert math.isclose(est.b_noise, float(tr_hs / ghg), rel_tol=1e-8)
    with pytest.raises(InfogeomError):
        noise_scale(G[:1])


def _eval_perturbed(model, batch, direction_parts):
    ref = copy.deepcopy(model).eval()
    with torch.no_grad():
        for p, d in zip(ref.parameters(), direction_parts):
            p.add_(d)
        return float(lm_loss(ref(batch[0]), batch[1]))


def test_filter_normalized_direction_rows():
    model = tiny_gpt()
    flat = FlatModel(model)
    params = dict(model.named_parameters())
    for mode in ("zero", "keep", "filter"):
        d = filter_normalized_direction(flat.theta, flat.shapes, mode, torch.Generator().manual_seed(0))
        for (name, shape), part in zip(
            zip(flat.names, flat.shapes), d.split([s.numel() for s in flat.shapes])
        ):
            w = params[name].detach()
            part = part.reshape(shape)
            if w.ndim >= 2:
                assert torch.allclose(part.norm(dim=1), w.norm(dim=1), rtol=1e-10)
            elif mode == "zero":
                assert part.abs().max() == 0
            elif mode == "filter":
                assert math.isclose(float(part.norm()), float(w.norm()), rel_tol=1e-10)
            else:
                assert part.abs().max() > 0
    with pytest.raises(InfogeomError):
        filter_normalized_direction(flat.theta, flat.shapes, "bogus")


def test_landscape_slices_match_independent_evaluation():
    model, batch = tiny_gpt(), random_batch()
    gen = torch.Generator().manual_seed(3)
    sl = loss_landscape(model, batch, dims=2, num_points=3, span=0.5, generator=gen)
    gen = torch.Generator().manual_seed(3)
    flat = FlatModel(model)
    d1 = filter_normalized_direction(flat.theta, flat.shapes, "zero", gen)
    d2 = filter_normalized_direction(flat.theta, flat.shapes, "zero", gen)
    for i, a in enumerate((-0.5, 0.0, 0.5)):
        for j, b in enumerate((-0.5, 0.0, 0.5)):
            parts = (a * d1 + b * d2).split([s.numel() for s in flat.shapes])
            expected = _eval_perturbed(model, batch, [p.reshape(s) for p, s in zip(parts, flat.shapes)])
            assert math.isclose(float(sl.losses[i, j]), expected, rel_tol=1e-12)
    assert math.isclose(sl.center_loss, float(sl.losses[1, 1]), rel_tol=1e-12)
    one = slice_1d(flat.loss_function(batch), flat.theta, d1, torch.tensor([0.0, 0.5]))
    assert math.isclose(
        float(one.losses[1]),
        _eval_perturbed(
            model,
            batch,
            [p.reshape(s) for p, s in zip((0.5 * d1).split([s.numel() for s in flat.shapes]), flat.shapes)],
        ),
        rel_tol=1e-12,
    )
    with pytest.raises(InfogeomError):
        loss_landscape(model, batch, dims=3)


def test_interpolation_between_two_models():
    a, b, batch = tiny_gpt(), tiny_gpt(), random_batch()
    sl = interpolate_models(a, b.state_dict(), batch, alphas=torch.tensor([0.0, 0.5, 1.0]))
    mid = copy.deepcopy(a).eval()
    with torch.no_grad():
        for p, q in zip(mid.parameters(), b.parameters()):
            p.copy_(0.5 * p + 0.5 * q)
    expected = [float(lm_loss(m.eval()(batch[0]), batch[1])) for m in (a, mid, b)]
    assert torch.allclose(sl.losses, torch.tensor(expected, dtype=F64), rtol=1e-12)
    with pytest.raises(InfogeomError):
        interpolate_models(a, {"wte.weight": torch.zeros(3)}, batch)


def test_parameter_blocks_partitions_and_heads():
    op = HessianOperator(tiny_gpt(n_layer=2), random_batch())
    for gran in ("tensor", "module", "sublayer", "layer"):
        blocks = parameter_blocks(op, gran)
        assert torch.equal(torch.sort(torch.cat(list(blocks.values()))).values, torch.arange(op.dim))
    assert {"layer0.attn", "layer1.mlp", "wte"} <= set(parameter_blocks(op, "sublayer"))
    heads = parameter_blocks(op, "head", n_head=2)
    assert set(heads) == {"layer0.head0", "layer0.head1", "layer1.head0", "layer1.head1"}
    # head h of a layer: its q, k, v rows of c_attn (weight and bias) and its input columns of c_proj
    offsets = dict(
        zip(op.names, torch.cumsum(torch.tensor([0] + [s.numel() for s in op.shapes]), 0).tolist())
    )
    C, d = 8, 4
    idx = set(heads["layer1.head1"].tolist())
    base = offsets["blocks.1.attn.c_attn.weight"]
    for part in range(3):
        for r in range(part * C + d, part * C + 2 * d):
            assert all(base + r * C + c in idx for c in range(C))
    assert base + 0 * C not in idx
    pbase = offsets["blocks.1.attn.c_proj.weight"]
    assert all(pbase + r * C + c in idx for r in range(C) for c in range(d, 2 * d))
    assert len(idx) == 3 * d * C + 3 * d + C * d
    with pytest.raises(InfogeomError):
        parameter_blocks(op, "head")
    with pytest.raises(InfogeomError):
        parameter_blocks(op, "bogus")


def test_block_spectra_match_dense_sub_blocks():
    model, batch = tiny_gpt(), random_batch()
    H = dense_hessian(model, batch)
    op = HessianOperator(model, batch)
    blocks = parameter_blocks(op, "sublayer")
    spectra = block_spectra(op, blocks, num_probes=3, steps=20, generator=torch.Generator().manual_seed(0))
    for name, index in blocks.items():
        sub = H[index][:, index]
        evals = torch.linalg.eigvalsh(sub)
        s = spectra.summary[name]
        assert math.isclose(s["lambda_max"], float(evals.max()), rel_tol=1e-5, abs_tol=1e-9), name
        b = spectra.names.index(name)
        per_probe = (spectra.weights[b] * spectra.nodes[b]).sum(1)
        # SLQ first moment = Hutchinson's tr(H_SS)/p: within 4 theoretical SEs,
        # sd(vᵀAv) = √(2(‖A‖_F² − Σ A_ii²))
        sd = math.sqrt(2 * float((sub**2).sum() - (sub.diagonal() ** 2).sum())) / len(index)
        assert abs(float(per_probe.mean()) - float(evals.mean())) <= 4 * sd / math.sqrt(3) + 1e-9, name
    sub_op = restrict(op, ["blocks.0.mlp.c_fc.weight"])
    v = torch.randn(sub_op.dim, dtype=F64)
    idx = blocks["layer0.mlp"][:256]
    assert torch.allclose(sub_op.matvec(v), H[idx][:, idx] @ v, atol=1e-10)
    assert spectra.js.shape == (len(blocks), len(blocks)) and 0 < spectra.heterogeneity <= 1
    assert torch.allclose(spectra.js, spectra.js.T)


def test_js_distance_bounds():
    p = torch.tensor([1.0, 0.0, 0.0], dtype=F64)
    q = torch.tensor([0.0, 0.0, 2.0], dtype=F64)
    assert js_distance(p, p) == 0
    tiny = torch.tensor([1.0, 5e-324, 0.0], dtype=F64)  # a denormal must not make the distance infinite
    assert math.isfinite(js_distance(tiny, q)) and math.isclose(js_distance(tiny, q), 1.0)
    assert math.isclose(js_distance(p, q), 1.0)
    assert math.isclose(
        js_distance(torch.tensor([0.5, 0.5], dtype=F64), torch.tensor([1.0, 0.0], dtype=F64)),
        math.sqrt(
            0.5 * 0.5 * math.log2(0.5 / 0.75) + 0.5 * 0.5 * math.log2(0.5 / 0.25) + 0.5 * math.log2(1 / 0.75)
        ),
    )
