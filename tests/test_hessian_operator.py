"""HessianOperator against a dense float64 Hessian from torch.func (jacrev of grad)."""

import pytest
import torch
from conftest import random_batch, tiny_gpt
from torch.func import functional_call, grad, jacrev

from infogeom.geometry import DenseOperator, HessianOperator, unflatten
from infogeom.models import lm_loss


def dense_hessian(model, batch):
    params = {n: p.detach() for n, p in model.named_parameters()}
    names, shapes = list(params), [p.shape for p in params.values()]
    flat = torch.cat([p.reshape(-1) for p in params.values()])

    def f(v):
        return lm_loss(functional_call(model, dict(zip(names, unflatten(v, shapes))), (batch[0],)), batch[1])

    # NB: jacrev(jacrev(f)) / torch.func.hessian give a wrong, asymmetric matrix for this model on torch 2.13
    # (vmapped inner backward); jacrev(grad(f)) is correct (checked against finite differences).
    H = jacrev(grad(f))(flat)
    assert torch.allclose(H, H.T, atol=1e-12)
    return H


@pytest.mark.parametrize("batched", [False, True], ids=["per-column", "vmapped"])
def test_hessian_operator_matches_dense_oracle(batched):
    for tie in (True, False):
        model = tiny_gpt(tie_weights=tie)
        batch = random_batch()
        H = dense_hessian(model, batch)
        op = HessianOperator(model, batch, batched=batched)
        assert op.batched is batched and ("vmapped" in repr(op)) is batched
        dense = op.to_dense()
        assert torch.linalg.matrix_norm(dense - H) <= 1e-8 * torch.linalg.matrix_norm(H)
        v = torch.randn(op.dim, dtype=torch.float64)
        assert torch.allclose(op.matvec(v), H @ v, rtol=1e-8, atol=1e-10)
        parts = op.matvec(unflatten(v, op.shapes))
        assert [p.shape for p in parts] == op.shapes
        assert torch.allclose(op.diagonal(), H.diagonal(), rtol=1e-8, atol=1e-10)


def test_dense_operator_solve_and_scipy():
    A = torch.randn(30, 30, dtype=torch.float64)
    A = A @ A.T
    op = DenseOperator(A)
    b = torch.randn(30, dtype=torch.float64)
    x = op.solve(b, damping=0.5)
    assert torch.allclose((A + 0.5 * torch.eye(30, dtype=torch.float64)) @ x, b, atol=1e-8)
    cg = super(DenseOperator, op).solve(b, damping=0.5, tol=1e-12)
    assert torch.allclose(cg, x, atol=1e-8)
    sp = op.to_scipy()
    assert torch.allclose(torch.from_numpy(sp.matvec(b.numpy())), A @ b)
