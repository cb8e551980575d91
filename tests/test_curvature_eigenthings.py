"""infogeom's Hessian products (both product paths) and λ_max against hessian-eigenthings v1 (an independent
implementation) on a tiny GPT in float64."""

import pytest
import torch
from conftest import random_batch, tiny_gpt
from peers.eigenthings_compat import eigenthings_hessian

from infogeom.curvature import eigsh
from infogeom.geometry import HessianOperator

he = pytest.importorskip("hessian_eigenthings")


@pytest.fixture(scope="module")
def setup():
    model, batch = tiny_gpt(), random_batch()
    return model, batch, HessianOperator(model, batch), eigenthings_hessian(model, batch)


@pytest.mark.parametrize("batched", [False, True], ids=["per-column", "vmapped"])
def test_products_agree(setup, batched):
    model, batch, _, theirs = setup
    ours = HessianOperator(model, batch, batched=batched)
    V = torch.randn(ours.dim, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    mine = ours.matmat(V)
    for j in range(3):
        ref = theirs.matvec(V[:, j].clone())
        assert torch.allclose(mine[:, j], ref, rtol=1e-9, atol=1e-11)
        assert not torch.allclose(mine[:, j], torch.zeros_like(ref))


def test_lambda_max_agrees(setup):
    _, _, ours, theirs = setup
    lam = float(eigsh(ours, k=1, which="LM", tol=1e-10, generator=torch.Generator().manual_seed(1)).values[0])
    ref = float(he.lanczos(theirs, k=1, max_iter=60, seed=1).eigenvalues[0])
    assert lam == pytest.approx(ref, rel=1e-8)
