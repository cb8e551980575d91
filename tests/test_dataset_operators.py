"""Data-set curvature (:mod:`infogeom.geometry.dataset`) in float64. Oracles: the operator of the concatenated
batch, and the token-weighted mean of the per-batch operators (dense matrices of a ≈1k-parameter GPT)."""

import pytest
import torch
from conftest import random_batch, tiny_gpt

from infogeom.curvature.operators import build_operator, dataset_operator
from infogeom.errors import InfogeomError
from infogeom.geometry import KFACOperator
from infogeom.geometry.dataset import micro_batches
from infogeom.geometry.kfac import kfac_factors

SIZES = (2, 3, 1, 2)  # sequences per batch: unequal token counts, so the weights matter


def four_batches():
    return [random_batch(vocab=11, B=b, T=8, seed=10 + i) for i, b in enumerate(SIZES)]


def probes(op, k: int = 6) -> torch.Tensor:
    """Random columns V [P, k]: two linear operators agree iff A V agrees (with probability 1)."""
    return torch.randn(op.dim, k, dtype=torch.float64, generator=torch.Generator().manual_seed(7))


def concatenated(batches):
    return torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])


@pytest.mark.parametrize("kind", ["hessian", "ggn", "fisher", "fisher-empirical"])
def test_dataset_operator_equals_concatenation_and_token_weighted_mean(kind):
    model = tiny_gpt()
    batches = four_batches()
    ref = build_operator(kind, model, concatenated(batches))
    V = probes(ref)
    whole = ref.matmat(V)
    tokens = [y.numel() for _, y in batches]
    mean = sum(n / sum(tokens) * build_operator(kind, model, b).matmat(V) for n, b in zip(tokens, batches))
    torch.testing.assert_close(mean, whole, rtol=1e-10, atol=1e-12)
    for micro in (None, 1):  # each batch whole, or one sequence at a time (rebuilt at every product)
        op = dataset_operator(kind, model, batches, micro_batch_size=micro)
        torch.testing.assert_close(op.matmat(V), whole, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(op.gradient, ref.gradient, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(op.loss, ref.loss, rtol=1e-12, atol=0)
    other = build_operator(kind, model, batches[1]).matmat(V)  # the check can fail: one batch is not all four
    assert torch.norm(whole - other) > 1e-3 * torch.norm(whole)


def test_mc_fisher_draws_fixed_labels_per_micro_batch():
    model = tiny_gpt()
    op = dataset_operator("fisher-mc", model, four_batches(), micro_batch_size=2, seed=3)
    v = torch.randn(op.dim, dtype=torch.float64)
    torch.testing.assert_close(op.matvec(v), op.matvec(v), rtol=0, atol=0)  # same labels at every rebuild
    cached = dataset_operator("fisher-mc", model, four_batches(), micro_batch_size=2, seed=3, cache=True)
    torch.testing.assert_close(cached.matvec(v), op.matvec(v), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("fisher", ["exact", "empirical"])
def test_kfac_over_batches_equals_concatenation_and_token_weighted_factors(fisher):
    model = tiny_gpt()
    batches = four_batches()
    op = dataset_operator("kfac", model, batches, micro_batch_size=1, approx="expand", fisher=fisher)
    whole = KFACOperator(model, concatenated(batches), approx="expand", fisher=fisher)
    torch.testing.assert_close(op.to_dense(), whole.to_dense(), rtol=1e-10, atol=1e-12)  # Kronecker: cheap
    tokens = [y.numel() for _, y in batches]
    per_batch = [kfac_factors(model, b, "expand", fisher) for b in batches]
    together = kfac_factors(model, batches, "expand", fisher)
    for name, f in together.items():
        for key in ("A", "G"):
            mean = sum(n / sum(tokens) * getattr(p[name], key) for n, p in zip(tokens, per_batch))
            torch.testing.assert_close(getattr(f, key), mean, rtol=1e-10, atol=1e-13)
    ekfac = dataset_operator("ekfac", model, batches, micro_batch_size=2, approx="expand", fisher=fisher)
    assert ekfac.dim == op.dim


def test_bad_arguments():
    model = tiny_gpt()
    with pytest.raises(InfogeomError, match="micro_batch_size must be a positive integer"):
        micro_batches(four_batches(), 0)
    with pytest.raises(InfogeomError, match="no batches"):
        dataset_operator("hessian", model, [])
    with pytest.raises(InfogeomError, match="unknown operator 'curly'"):
        dataset_operator("curly", model, four_batches())
    with pytest.raises(InfogeomError, match="only for kind 'kfac'"):
        dataset_operator("hessian", model, four_batches(), approx="expand")


def test_finite_difference_hessian_matches_the_exact_product():
    from infogeom.geometry import FiniteDifferenceHessian, HessianOperator
    model = tiny_gpt(attention="sdpa")  # the FD operator keeps the fused path: no double backward needed
    batch = random_batch(vocab=11, B=3, T=8, seed=4)
    exact, fd = HessianOperator(model, batch), FiniteDifferenceHessian(model, batch)
    V = probes(exact, 4)
    err = torch.linalg.matrix_norm(fd.matmat(V) - exact.matmat(V)) / torch.linalg.matrix_norm(exact.matmat(V))
    assert err <= 1e-4, err
    torch.testing.assert_close(fd.gradient, exact.gradient, rtol=1e-10, atol=1e-14)
    assert model.attention == "sdpa"
    model32 = tiny_gpt(dtype=torch.float32, attention="sdpa")  # float32: the documented ~1e-3
    e32, f32 = HessianOperator(model32, batch), FiniteDifferenceHessian(model32, batch)
    V32 = V.float()
    err32 = torch.linalg.matrix_norm(f32.matmat(V32) - e32.matmat(V32)) / torch.linalg.matrix_norm(e32.matmat(V32))
    assert err32 <= 1e-2, err32
    op = dataset_operator("hessian-fd", model, four_batches(), micro_batch_size=2)
    ref = dataset_operator("hessian", model, four_batches())
    assert torch.linalg.matrix_norm(op.matmat(V) - ref.matmat(V)) <= 1e-4 * torch.linalg.matrix_norm(ref.matmat(V))


@pytest.mark.parametrize("kind", ["ggn", "fisher", "fisher-empirical"])
def test_token_chunked_dataset_operator_equals_concatenation(kind):
    """Chunks of 5 tokens (not dividing the micro-batches' 8 or 16 tokens) inside every micro-batch."""
    model = tiny_gpt()
    batches = four_batches()
    ref = build_operator(kind, model, concatenated(batches), token_chunk=None)
    V = probes(ref, 3)
    for micro in (None, 2):
        op = dataset_operator(kind, model, batches, micro_batch_size=micro, token_chunk=5)
        assert op._part(0).token_chunk == 5
        torch.testing.assert_close(op.matmat(V), ref.matmat(V), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(op.matvec(V[:, 0]), ref.matvec(V[:, 0]), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(op.gradient, ref.gradient, rtol=1e-10, atol=1e-14)
