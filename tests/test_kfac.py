"""K-FAC / EK-FAC capture and operators against curvlinops, dense float64 oracles and brute-force
constructions."""

import pytest
import torch
import torch.nn as nn
from conftest import random_batch, tiny_gpt
from curvlinops import EKFACLinearOperator, KFACLinearOperator
from test_geometry_oracles import dense_fisher, flat_params, logits_of_flat

from infogeom.errors import InfogeomError
from infogeom.geometry import EKFACOperator, KFACCapture, KFACOperator, ekfac_factors, kfac_factors
from infogeom.models import lm_loss


def rel(a, b):
    return (torch.linalg.norm(a - b) / torch.linalg.norm(b)).item()


class ClassFirst(nn.Module):
    """curvlinops' CrossEntropyLoss wants logits [B, V, T]."""

    def __init__(self, model):
        super().__init__()
        self.m = model

    def forward(self, x):
        return self.m(x).transpose(1, 2)


def linear_params(model):
    mods = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return [m.weight for m in mods] + [m.bias for m in mods if m.bias is not None]


@pytest.mark.parametrize("tie", [True, False])
@pytest.mark.parametrize("approx", ["expand", "reduce"])
@pytest.mark.parametrize("fisher", ["type-2", "empirical"])
def test_linear_factors_match_curvlinops(tie, approx, fisher):
    model, batch = tiny_gpt(tie_weights=tie).eval(), random_batch(B=3, T=5)
    ref = KFACLinearOperator(ClassFirst(model), nn.CrossEntropyLoss(), linear_params(model), [batch],
                             fisher_type=fisher, kfac_approx=approx, separate_weight_and_bias=False,
                             check_deterministic=False)
    ref.compute_kronecker_factors()
    ours = kfac_factors(model, batch, approx=approx, fisher=fisher)
    linear = {n: f for n, f in ours.items() if f.info.kind == "linear"}
    assert sorted(linear) == sorted(k[2:] for k in ref._input_covariances)
    for name, f in linear.items():
        assert rel(f.A, ref._input_covariances["m." + name]) <= 1e-12
        assert rel(f.G, ref._gradient_covariances["m." + name]) <= 1e-12
    embeddings = sorted(n for n, f in ours.items() if f.info.kind == "embedding")
    assert embeddings == (["wpe"] if tie else ["wpe", "wte"])  # tied wte is represented by lm_head
    assert ours["lm_head"].info.weight == ("wte.weight" if tie else "lm_head.weight")


@pytest.mark.parametrize("fisher", ["type-2", "empirical"])
def test_ekfac_moments_match_curvlinops(fisher):
    """curvlinops' EK-FAC supports 2-D outputs only: an MLP classifier."""
    mlp = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 5)).double()
    X, Y = torch.randn(7, 4, dtype=torch.float64), torch.randint(0, 5, (7,))
    ref = EKFACLinearOperator(mlp, nn.CrossEntropyLoss(), list(mlp.parameters()), [(X, Y)],
                              fisher_type=fisher, separate_weight_and_bias=False, check_deterministic=False)
    ref.compute_eigenvalue_correction()
    ours = ekfac_factors(mlp, (X, Y), fisher=fisher)
    for name, f in ours.items():
        assert rel(f.moments, ref._corrected_eigenvalues[name]) <= 1e-10


def test_kfac_is_exact_for_one_linear_layer_and_one_token():
    model = nn.Linear(5, 7).double()
    x, y = torch.randn(1, 1, 5, dtype=torch.float64), torch.randint(0, 7, (1, 1))
    F = dense_fisher(model, (x, y))
    for approx in ("expand", "reduce"):
        op = KFACOperator(model, (x, y), approx=approx, fisher="exact")
        assert op.names == ["weight", "bias"]
        assert rel(op.to_dense(), F) <= 1e-10
    two = (torch.randn(2, 1, 5, dtype=torch.float64), torch.randint(0, 7, (2, 1)))
    assert rel(KFACOperator(model, two, fisher="exact").to_dense(), dense_fisher(model, two)) > 1e-3


def test_exact_output_curvature_is_the_mc_limit():
    """'exact' (per position and class) = E['mc']; 'type-2' (classes shared across positions) is not."""
    model, batch = tiny_gpt(), random_batch(B=2, T=4)
    exact = kfac_factors(model, batch, fisher="exact")
    mc = kfac_factors(model, batch, fisher="mc", mc_samples=6000, generator=torch.Generator().manual_seed(0))
    type2 = kfac_factors(model, batch, fisher="type-2")
    for name in exact:
        assert rel(mc[name].G, exact[name].G) <= 0.08
        assert rel(mc[name].A, exact[name].A) <= 1e-12
    assert max(rel(type2[n].G, exact[n].G) for n in exact) > 0.2
    one = random_batch(B=2, T=1)
    a, b = kfac_factors(model, one, fisher="exact"), kfac_factors(model, one, fisher="type-2")
    assert all(rel(a[n].G, b[n].G) <= 1e-12 for n in a)


def dense_kronecker(op, factors):
    """Dense block-diagonal ⊕ G ⊗ A (embedding: diag(A) ⊗ G) placed at the operator's flat indices."""
    offsets, start = {}, 0
    for n, s in zip(op.names, op.shapes):
        offsets[n] = start
        start += s.numel()
    D = torch.zeros(op.dim, op.dim, dtype=torch.float64)
    for f in factors.values():
        info = f.info
        if info.kind == "embedding":
            idx = offsets[info.weight] + torch.arange(f.A.numel() * f.G.shape[0])
            D[idx[:, None], idx] = torch.kron(torch.diag(f.A), f.G)
            continue
        d_out, d_in = f.G.shape[0], f.A.shape[0] - (info.bias is not None)
        rows, cols = torch.meshgrid(torch.arange(d_out), torch.arange(f.A.shape[0]), indexing="ij")
        idx = torch.where(cols < d_in, offsets[info.weight] + rows * d_in + cols,
                          offsets[info.bias] + rows if info.bias else -1).reshape(-1)
        D[idx[:, None], idx] = torch.kron(f.G, f.A)
    return D


@pytest.mark.parametrize("tie", [True, False])
def test_kfac_operator_matches_dense_kronecker_construction(tie):
    model, batch = tiny_gpt(tie_weights=tie), random_batch()
    factors = kfac_factors(model, batch, approx="reduce", fisher="empirical")
    op = KFACOperator.from_factors(model, factors)
    D = dense_kronecker(op, factors)
    assert rel(op.to_dense(), D) <= 1e-10
    assert rel(op.diagonal(), D.diagonal()) <= 1e-10
    assert abs(op.trace() - D.trace()) <= 1e-10 * D.trace()
    b = torch.randn(op.dim, dtype=torch.float64)
    lam = 1e-3
    eye = torch.eye(op.dim, dtype=torch.float64)
    assert rel(op.solve(b, damping=lam), torch.linalg.solve(D + lam * eye, b)) <= 1e-8
    # π-corrected Tikhonov: (A + π√λ I) ⊗ (G + √λ/π I) per layer
    damped = {}
    for name, f in factors.items():
        dA, dG = f.A.shape[0], f.G.shape[0]
        pi = torch.sqrt((f.A.trace() / dA if f.A.ndim == 2 else f.A.mean()) / (f.G.trace() / dG))
        s = lam ** 0.5
        A = f.A + pi * s if f.A.ndim == 1 else f.A + pi * s * torch.eye(dA, dtype=torch.float64)
        damped[name] = type(f)(f.info, A, f.G + s / pi * torch.eye(dG, dtype=torch.float64))
    want = torch.linalg.solve(dense_kronecker(op, damped), b)
    assert rel(op.solve(b, damping=lam, pi_correction=True), want) <= 1e-8
    parts = op.solve(list(b.split([s.numel() for s in op.shapes])), lam)
    assert [p.shape for p in parts] == op.shapes
    assert rel(torch.cat([p.reshape(-1) for p in parts]), op.solve(b, lam)) <= 1e-14


def test_kfac_operator_names_follow_parameter_order():
    model, batch = tiny_gpt(tie_weights=False), random_batch()
    op = KFACOperator(model, batch, fisher="empirical")
    order = [n for n, _ in model.named_parameters()]
    assert op.names == [n for n in order if n in set(op.names)]
    assert "blocks.0.ln_1.weight" not in op.names and "wte.weight" in op.names


def test_ekfac_moments_match_brute_force_per_sequence_gradients():
    """S = (1/BT) Σ_b (Q_Gᵀ ∇_W ℓ_b Q_A)^{∘2} with ∇_W ℓ_b the summed-token gradient of sequence b, by
    autograd (empirical labels), for every layer including the shared position lookup wpe."""
    model, batch = tiny_gpt(tie_weights=False), random_batch(B=3)
    factors = ekfac_factors(model, batch, approx="expand", fisher="empirical")
    names, shapes, flat = flat_params(model)
    per_seq = []
    for b in range(3):
        v = flat.clone().requires_grad_(True)
        loss = lm_loss(logits_of_flat(model, batch[0][b:b + 1])(v), batch[1][b:b + 1]) * batch[1].shape[1]
        g = torch.autograd.grad(loss, v)[0]
        per_seq.append(dict(zip(names, g.split([s.numel() for s in shapes]))))
    N = batch[1].numel()
    params = dict(model.named_parameters())
    for f in factors.values():
        QA, QG = f.eigenbasis
        grads = []
        for g in per_seq:
            W = g[f.info.weight].reshape(params[f.info.weight].shape)
            if f.info.bias is not None:
                W = torch.cat([W, g[f.info.bias][:, None]], dim=1)
            grads.append(W)
        brute = sum((QG.T @ W @ QA).square() if QA is not None else (W @ QG).square() for W in grads) / N
        assert rel(f.moments, brute) <= 1e-10, f.info.name


def test_ekfac_is_the_frobenius_projection_and_beats_kfac_on_one_layer():
    """One Linear layer, one token per sequence, exact output curvature: the per-sequence gradients decompose
    F exactly, so EK-FAC = Q diag(diag(Qᵀ F Q)) Qᵀ, the best approximation in K-FAC's eigenbasis."""
    model = nn.Linear(4, 6).double()
    x, y = torch.randn(5, 1, 4, dtype=torch.float64), torch.randint(0, 6, (5, 1))
    F = dense_fisher(model, (x, y))
    kfac = KFACOperator(model, (x, y), fisher="exact")
    ekfac = EKFACOperator(model, (x, y), fisher="exact")
    blk = kfac.blocks[0]
    # basis of the joint [W | b] block in the flat (weight, bias) layout
    Q = torch.kron(blk.QL, blk.QR)  # linear layer: L = G, R = A
    d_in = 4
    rows, cols = torch.meshgrid(torch.arange(6), torch.arange(d_in + 1), indexing="ij")
    idx = torch.where(cols < d_in, rows * d_in + cols, 6 * d_in + rows).reshape(-1)
    Qf = torch.zeros_like(Q)
    Qf[idx] = Q
    projection = Qf @ torch.diag(torch.diagonal(Qf.T @ F @ Qf)) @ Qf.T
    E, K = ekfac.to_dense(), kfac.to_dense()
    assert rel(E, projection) <= 1e-10
    assert torch.linalg.matrix_norm(F - E) < torch.linalg.matrix_norm(F - K)


def test_capture_accumulates_from_the_callers_backward():
    """Optimizer-style use: attach once, run training forwards/backwards, read (and reset) the factors."""
    model, b1, b2 = tiny_gpt(), random_batch(seed=1), random_batch(seed=2)
    plain = model(b1[0])
    capture = KFACCapture(model, approx="expand", fisher="empirical").attach()
    outputs = []
    for x, y in (b1, b2):
        outputs.append(model(x))
        lm_loss(outputs[-1], y).backward()
    assert torch.equal(outputs[0], plain)  # the wpe lookup expanded to [B, T, C] gives the same output
    with torch.no_grad():
        model(b1[0])  # evaluation forwards are ignored
    capture.enabled = False
    lm_loss(model(b1[0]), b1[1]).backward()
    got = capture.pop()
    both = (torch.cat([b1[0], b2[0]]), torch.cat([b1[1], b2[1]]))
    want = kfac_factors(model, both, approx="expand", fisher="empirical")
    for name in want:
        assert rel(got[name].A, want[name].A) <= 1e-12 and rel(got[name].G, want[name].G) <= 1e-12
    assert capture.factors() == {}
    capture.detach()
    capture.enabled = True
    lm_loss(model(b1[0]), b1[1]).backward()
    assert capture.factors() == {}
    summed = KFACCapture(model, fisher="empirical", loss_reduction="sum")
    with summed:
        logits = model(b1[0]).reshape(-1, 11)
        torch.nn.functional.cross_entropy(logits, b1[1].reshape(-1), reduction="sum").backward()
    ref = kfac_factors(model, b1, fisher="empirical")
    assert all(rel(summed.factors()[n].G, ref[n].G) <= 1e-12 for n in ref)


def test_capture_with_custom_output_gradient_source_and_mc():
    model, batch = tiny_gpt(), random_batch()
    mc = kfac_factors(model, batch, fisher="mc", mc_samples=3, generator=torch.Generator().manual_seed(5))
    gen = torch.Generator().manual_seed(5)

    def source(logits):
        p = logits.softmax(-1)
        labels = torch.multinomial(p.reshape(-1, 11), 3, replacement=True, generator=gen)
        labels = labels.reshape(*p.shape[:-1], 3)
        for k in range(3):
            yield (p - nn.functional.one_hot(labels[..., k], 11)) / 3 ** 0.5

    capture = KFACCapture(model, fisher=source)
    with capture:
        model(batch[0])
    got = capture.factors()
    assert all(rel(got[n].G, mc[n].G) <= 1e-12 for n in mc)


def test_bad_options_raise():
    model = tiny_gpt()
    with pytest.raises(InfogeomError, match="approximation"):
        KFACCapture(model, approx="diag")
    with pytest.raises(InfogeomError, match="Fisher type"):
        KFACCapture(model, fisher="true")
    with pytest.raises(InfogeomError, match="not a Linear/Embedding"):
        KFACCapture(model, modules=["blocks.0.ln_1"])
    op = KFACOperator(model, random_batch(), fisher="empirical")
    with pytest.raises(InfogeomError, match="pi_correction"):
        op.solve(torch.ones(op.dim, dtype=torch.float64), damping=0.0, pi_correction=True)
