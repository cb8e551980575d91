"""Diagonal and low-rank operators against dense linear algebra."""

import pytest
import torch

from infogeom.errors import InfogeomError
from infogeom.geometry import (
    CurvatureOperator,
    DenseOperator,
    DiagonalOperator,
    diagonal_approximation,
    low_rank_approximation,
)


class MatrixFree(CurvatureOperator):
    """A dense matrix seen only through products (forces the Lanczos path)."""

    def __init__(self, M):
        self.M, self.names, self.shapes = M, ["p"], [torch.Size([M.shape[0]])]
        self.dtype, self.device = M.dtype, M.device

    def _matmat(self, V):
        return self.M @ V


def psd(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, n, generator=g, dtype=torch.float64)
    return X @ torch.diag(torch.logspace(0, -4, n, dtype=torch.float64)) @ X.T


def test_low_rank_is_the_top_eigenspace_with_a_woodbury_solve():
    M = psd()
    evals, evecs = torch.linalg.eigh(M)
    best = evecs[:, -5:] @ torch.diag(evals[-5:]) @ evecs[:, -5:].T
    for op in (DenseOperator(M), MatrixFree(M)):
        lr = low_rank_approximation(op, 5)
        assert torch.allclose(lr.to_dense(), best, atol=1e-9)
        assert torch.allclose(lr.diagonal(), best.diagonal(), atol=1e-9)
    b = torch.randn(40, dtype=torch.float64)
    want = torch.linalg.solve(best + 0.3 * torch.eye(40, dtype=torch.float64), b)
    assert torch.allclose(lr.solve(b, damping=0.3), want, atol=1e-9)
    with pytest.raises(InfogeomError, match="positive damping"):
        lr.solve(b, damping=0.0)
    with pytest.raises(InfogeomError, match="rank"):
        low_rank_approximation(DenseOperator(M), 40)


def test_diagonal_operator():
    M = psd()
    d = diagonal_approximation(MatrixFree(M))
    assert isinstance(d, DiagonalOperator)
    assert torch.allclose(d.to_dense(), torch.diag(M.diagonal()), atol=1e-12)
    b = torch.randn(40, dtype=torch.float64)
    assert torch.allclose(d.solve(b, damping=0.1), b / (M.diagonal() + 0.1))
