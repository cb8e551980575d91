"""Fisher/GGN operators and per-example gradients against dense float64 oracles and closed forms."""

import pytest
import torch
import torch.nn as nn
from conftest import random_batch, tiny_gpt
from test_geometry_oracles import (
    dense_fisher,
    dense_jacobian,
    flat_params,
    logits_of_flat,
    per_token_gradients,
    softmax_hessian,
)

from infogeom.errors import InfogeomError
from infogeom.geometry import FisherOperator, GGNOperator, HessianOperator, per_example_gradients, unflatten
from infogeom.models import lm_loss


def rel(a, b):
    return (torch.linalg.norm(a - b) / torch.linalg.norm(b)).item()


@pytest.mark.parametrize("tie", [True, False])
def test_exact_fisher_and_ggn_match_jacobian_oracle(tie):
    model, batch = tiny_gpt(tie_weights=tie), random_batch()
    F = dense_fisher(model, batch)
    for op in (FisherOperator(model, batch), GGNOperator(model, batch)):
        assert rel(op.to_dense(), F) <= 1e-8
        v = torch.randn(op.dim, dtype=torch.float64)
        assert rel(op.matvec(v), F @ v) <= 1e-8
        parts = op.matvec(unflatten(v, op.shapes))
        assert [p.shape for p in parts] == op.shapes
        V = torch.randn(op.dim, 3, dtype=torch.float64)
        assert rel(op @ V, F @ V) <= 1e-8
    assert rel(op.diagonal(), F.diagonal()) <= 1e-8


def test_fisher_gradient_and_loss_match_autograd():
    model, batch = tiny_gpt(), random_batch()
    op = FisherOperator(model, batch)
    hess = HessianOperator(model, batch)
    assert torch.allclose(op.loss, hess.loss, rtol=1e-12)
    assert rel(op.gradient, hess.gradient) <= 1e-10


def test_fisher_on_parameter_subset_is_the_dense_block():
    model, batch = tiny_gpt(tie_weights=False), random_batch()
    names = ["blocks.0.mlp.c_fc.weight", "lm_head.weight"]
    op = FisherOperator(model, batch, names=names)
    assert op.names == names
    assert rel(op.to_dense(), dense_fisher(model, batch, names)) <= 1e-8


def test_ggn_of_a_non_softmax_loss():
    """GGN of ℓ = ½ mean(z²) is Jᵀ J / (B·T·V): the output Hessian comes from autodiff, not a closed form."""
    model, batch = tiny_gpt(), random_batch()
    J, logits = dense_jacobian(model, batch[0])
    Jf = J.reshape(-1, J.shape[-1])
    op = GGNOperator(model, batch, loss=lambda z, y: 0.5 * (z ** 2).mean())
    assert rel(op.to_dense(), Jf.T @ Jf / logits.numel()) <= 1e-8


def test_mc_fisher_is_unbiased_with_error_from_sample_count():
    """E‖F̂_S − F‖² = (1/(N²S)) Σ_n [E_y (r_yᵀ K_n r_y)² − tr(M_n K_n M_n K_n)], K_n = J_n J_nᵀ,
    r_y = p_n − e_y: computed exactly from the oracle Jacobian; the observed error must be of that size."""
    model, batch = tiny_gpt(), random_batch(B=1, T=6)
    F = dense_fisher(model, batch)
    J, logits = dense_jacobian(model, batch[0])
    p, M, N = logits.softmax(-1), softmax_hessian(logits), batch[1].numel()
    K = torch.einsum("btvp,btwp->btvw", J, J)
    R = p[..., None, :] - torch.eye(p.shape[-1], dtype=p.dtype)  # [B, T, y, V]
    quad = torch.einsum("btyv,btvw,btyw->bty", R, K, R)
    per_sample = (p * quad ** 2).sum(-1) - torch.einsum("btuv,btvw,btwx,btxu->bt", M, K, M, K)
    S = 400
    expected_sq = per_sample.sum() / (N ** 2 * S)
    errs = []
    for seed in range(3):
        gen = torch.Generator().manual_seed(seed)
        op = FisherOperator(model, batch, kind="mc", mc_samples=S, generator=gen)
        errs.append(torch.linalg.matrix_norm(op.to_dense() - F) ** 2)
    errs = torch.stack(errs)
    assert errs.mean() <= 3 * expected_sq  # Markov-type bound on the mean of 3 draws
    assert errs.mean() >= expected_sq / 10  # and it is genuinely random (not the exact Fisher)
    g1 = torch.Generator().manual_seed(7)
    g2 = torch.Generator().manual_seed(7)
    a = FisherOperator(model, batch, kind="mc", mc_samples=3, generator=g1).to_dense()
    b = FisherOperator(model, batch, kind="mc", mc_samples=3, generator=g2).to_dense()
    assert torch.equal(a, b)


def test_empirical_fisher_is_mean_of_per_token_gradient_outer_products():
    model, batch = tiny_gpt(), random_batch()
    G = per_token_gradients(model, batch)
    op = FisherOperator(model, batch, kind="empirical")
    assert rel(op.to_dense(), G.T @ G / G.shape[0]) <= 1e-8


@pytest.mark.parametrize("tie", [True, False])
def test_per_example_gradients_match_per_sequence_autograd(tie):
    model, batch = tiny_gpt(tie_weights=tie), random_batch(B=3)
    names, _, flat = flat_params(model)
    rows = []
    for b in range(3):
        v = flat.clone().requires_grad_(True)
        loss = lm_loss(logits_of_flat(model, batch[0][b:b + 1])(v), batch[1][b:b + 1])
        rows.append(torch.autograd.grad(loss, v)[0])
    brute = torch.stack(rows)
    assert rel(per_example_gradients(model, batch), brute) <= 1e-10
    sub = ["blocks.0.attn.c_attn.weight", "wpe.weight"]
    cols = torch.cat([torch.arange(*span) for span in _spans(model, names, sub)])
    assert rel(per_example_gradients(model, batch, names=sub, chunk_size=2), brute[:, cols]) <= 1e-10


def _spans(model, names, subset):
    params = dict(model.named_parameters())
    start, out = 0, {}
    for n in names:
        out[n] = (start, start + params[n].numel())
        start += params[n].numel()
    return [out[n] for n in subset]


class LogisticRegression(nn.Module):
    """Bernoulli model as a 2-class softmax with logits [w·x, 0]: p = σ(w·x)."""

    def __init__(self, d):
        super().__init__()
        self.w = nn.Parameter(torch.randn(d, dtype=torch.float64))

    def forward(self, x):
        s = x @ self.w
        return torch.stack([s, torch.zeros_like(s)], dim=-1)


def test_logistic_regression_closed_forms():
    d, B, T = 5, 4, 3
    model = LogisticRegression(d)
    x = torch.randn(B, T, d, dtype=torch.float64)
    y = torch.randint(0, 2, (B, T))
    X = x.reshape(-1, d)
    p = torch.sigmoid(X @ model.w.detach())
    F = X.T @ torch.diag(p * (1 - p)) @ X / X.shape[0]
    assert rel(FisherOperator(model, (x, y)).to_dense(), F) <= 1e-10
    resid = p - (y.reshape(-1) == 0).to(p.dtype)  # gradient of −log p(y) w.r.t. w·x
    E = X.T @ torch.diag(resid ** 2) @ X / X.shape[0]
    assert rel(FisherOperator(model, (x, y), kind="empirical").to_dense(), E) <= 1e-10
    # GGN of the loss = its Hessian for a linear model with a convex output loss
    assert rel(HessianOperator(model, (x, y)).to_dense(), F) <= 1e-10


def test_bad_kind_and_samples_raise():
    model, batch = tiny_gpt(), random_batch()
    with pytest.raises(InfogeomError, match="Fisher kind"):
        FisherOperator(model, batch, kind="true")
    with pytest.raises(InfogeomError, match="mc_samples"):
        FisherOperator(model, batch, kind="mc", mc_samples=0)


# ---- token-chunked products (vocabulary-scale memory) -----------------------------------------------------------

def _chunked_pair(cls, model, batch, chunk, **kw):
    return cls(model, batch, token_chunk=None, **kw), cls(model, batch, token_chunk=chunk, **kw)


@pytest.mark.parametrize("tie", [True, False])
@pytest.mark.parametrize("cls", [FisherOperator, GGNOperator])
def test_token_chunked_products_equal_unchunked_and_dense_oracle(tie, cls):
    """10 tokens in chunks of 1, 3, 4, 7, 10, 64 (matvec) and 1, 3, 4 tokens (3 columns: chunk // 3 tokens):
    most do not divide the token count."""
    model, batch = tiny_gpt(tie_weights=tie), random_batch(B=2, T=5)
    F = dense_fisher(model, batch)
    ref = cls(model, batch, token_chunk=None)
    assert "unchunked" in repr(ref) and ref.token_chunk is None and ref.logits is not None
    v, V = torch.randn(ref.dim, dtype=torch.float64), torch.randn(ref.dim, 3, dtype=torch.float64)
    for chunk in (1, 3, 4, 7, 10, 64):
        op = cls(model, batch, token_chunk=chunk)
        assert f"token chunks of {chunk} (head 'lm_head')" in repr(op) and op.logits is None
        assert rel(op.matvec(v), F @ v) <= 1e-10 and rel(op.matvec(v), ref.matvec(v)) <= 1e-12
        torch.testing.assert_close(op.loss, ref.loss, rtol=1e-12, atol=0)
        torch.testing.assert_close(op.gradient, ref.gradient, rtol=1e-10, atol=1e-14)
    for chunk in (3, 9, 12):
        op = cls(model, batch, token_chunk=chunk)
        assert rel(op @ V, F @ V) <= 1e-10 and rel(op @ V, ref @ V) <= 1e-12
    assert rel(op.to_dense(), F) <= 1e-10  # the base class's P products
    other = cls(model, random_batch(B=2, T=5, seed=1), token_chunk=3)  # the check can fail
    assert rel(other.matvec(v), F @ v) > 1e-3


@pytest.mark.parametrize("names", [["lm_head.weight"], ["blocks.0.mlp.c_fc.weight", "lm_head.weight"],
                                   ["blocks.0.attn.c_attn.weight"]])
def test_token_chunked_parameter_subsets(names):
    """Head only (no body tangents), body and head, body only (head constant)."""
    model, batch = tiny_gpt(tie_weights=False), random_batch(B=2, T=5)
    F = dense_fisher(model, batch, names)
    for cls in (FisherOperator, GGNOperator):
        op = cls(model, batch, names=names, token_chunk=4)
        V = torch.randn(op.dim, 2, dtype=torch.float64)
        assert op.names == names and rel(op @ V, F @ V) <= 1e-10


def test_token_chunked_sampled_and_empirical_fisher():
    model, batch = tiny_gpt(), random_batch(B=2, T=5)
    ref, op = _chunked_pair(FisherOperator, model, batch, 3, kind="empirical")
    v = torch.randn(ref.dim, dtype=torch.float64)
    assert rel(op.matvec(v), ref.matvec(v)) <= 1e-12 and torch.equal(op.labels, ref.labels)
    # MC: against the dense formula on the operator's own labels, (1/NS) Σ_ns J_nᵀ r_ns r_nsᵀ J_n
    op = FisherOperator(model, batch, kind="mc", mc_samples=3, generator=torch.Generator().manual_seed(1),
                        token_chunk=4)
    J, logits = dense_jacobian(model, batch[0])
    p = logits.softmax(-1)
    R = p[..., None] - nn.functional.one_hot(op.labels, p.shape[-1]).to(p.dtype).transpose(-1, -2)
    G = torch.einsum("btvp,btvs->btsp", J, R).reshape(-1, J.shape[-1])
    assert op.labels.shape == (2, 5, 3) and rel(op.matvec(v), G.T @ (G @ v) / G.shape[0]) <= 1e-10


def test_token_chunk_auto_and_bad_arguments(monkeypatch):
    import infogeom.geometry.fisher as fisher

    model, batch = tiny_gpt(), random_batch(B=2, T=5)
    assert FisherOperator(model, batch).token_chunk is None  # 10 × 11 float64 logits: far below the budget
    monkeypatch.setattr(fisher, "TOKEN_BLOCK_BYTES", 3 * 11 * 8)  # three tokens' logits
    op = FisherOperator(model, batch)
    assert op.token_chunk == 3 and "token chunks of 3" in repr(op)
    assert rel(op.matvec(torch.ones(op.dim, dtype=torch.float64)), FisherOperator(model, batch, token_chunk=None)
               .matvec(torch.ones(op.dim, dtype=torch.float64))) <= 1e-12
    x, y = torch.randn(2, 3, 5, dtype=torch.float64), torch.randint(0, 2, (2, 3))
    assert FisherOperator(LogisticRegression(5), (x, y)).token_chunk is None  # no output layer: unchunked
    with pytest.raises(InfogeomError, match="token_chunk needs a model with an output layer"):
        FisherOperator(LogisticRegression(5), (x, y), token_chunk=2)
    for bad in (0, -1, 2.5, True, "many"):
        with pytest.raises(InfogeomError, match="token_chunk must be a positive integer"):
            GGNOperator(model, batch, token_chunk=bad)

    class Capped(nn.Module):  # logits post-processed after the head (soft-capping): chunking would be wrong
        def __init__(self):
            super().__init__()
            self.inner = tiny_gpt()
            self.lm_head = self.inner.lm_head

        def forward(self, idx):
            return 3 * torch.tanh(self.inner(idx) / 3)

    with pytest.raises(InfogeomError, match="not its output layer .* applied to the hidden states"):
        FisherOperator(Capped(), batch, token_chunk=4)
    assert FisherOperator(Capped(), batch).token_chunk is None  # "auto" (3 tokens here) falls back instead
