"""Eigenpairs, traces, diagonals and SLQ densities against dense float64 oracles (known spectra, and the
tiny GPT's Hessian from jacrev(grad(f)) with torch.linalg.eigvalsh)."""

import math

import pytest
import torch
from conftest import random_batch, tiny_gpt
from test_hessian_operator import dense_hessian

from infogeom.curvature import (
    diagonal,
    eigsh,
    hutchinson,
    hutchpp,
    lanczos_quadrature,
    power_iteration,
    spectral_density,
)
from infogeom.errors import InfogeomError
from infogeom.geometry import DenseOperator, HessianOperator, rademacher

F64 = torch.float64


def known_spectrum(P=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    evals = torch.cat(
        [torch.tensor([10.0, 9.7, 9.4, -6.0], dtype=F64), torch.rand(P - 4, generator=g, dtype=F64) * 2 - 1]
    )
    U, _ = torch.linalg.qr(torch.randn(P, P, generator=g, dtype=F64))
    return U @ torch.diag(evals) @ U.T, evals


@pytest.fixture(scope="module")
def gpt_hessian():
    model, batch = tiny_gpt(), random_batch()
    return model, batch, dense_hessian(model, batch)


@pytest.mark.parametrize(
    "which, expected", [("LA", [10.0, 9.7, 9.4]), ("SA", [-6.0, -1.0, -1.0]), ("LM", [10.0, 9.7, 9.4])]
)
def test_eigsh_known_spectrum(which, expected):
    A, evals = known_spectrum()
    sorted_evals = torch.sort(evals).values
    if which == "SA":
        expected = sorted_evals[:3].tolist()
    res = eigsh(DenseOperator(A), k=3, which=which, tol=1e-8, generator=torch.Generator().manual_seed(1))
    assert res.converged
    assert torch.allclose(res.values, torch.tensor(expected, dtype=F64), atol=1e-8)
    # explicit residuals, recomputed from the matrix itself
    assert torch.allclose(
        res.residuals, torch.linalg.vector_norm(A @ res.vectors - res.vectors * res.values, dim=0)
    )
    assert (res.residuals <= 1e-8 * res.values.abs() * 1.01).all()
    assert torch.allclose(res.vectors.T @ res.vectors, torch.eye(3, dtype=F64), atol=1e-10)


def test_eigsh_thick_restart_small_basis():
    A, evals = known_spectrum(P=300, seed=3)
    res = eigsh(DenseOperator(A), k=3, tol=1e-9, max_basis=8, generator=torch.Generator().manual_seed(0))
    assert res.converged and res.matvecs > 8  # restarted at least once
    assert torch.allclose(res.values, torch.tensor([10.0, 9.7, 9.4], dtype=F64), atol=1e-8)


def test_eigsh_tolerance_is_a_residual_test():
    A, _ = known_spectrum()
    loose = eigsh(DenseOperator(A), k=1, tol=1e-2, generator=torch.Generator().manual_seed(0))
    tight = eigsh(DenseOperator(A), k=1, tol=1e-10, generator=torch.Generator().manual_seed(0))
    assert loose.matvecs < tight.matvecs
    assert loose.residuals[0] <= 1e-2 * 10.0 * 1.01 and tight.residuals[0] <= 1e-10 * 10.0 * 1.01


def test_eigsh_exhausts_small_operator():
    evals = torch.tensor([3.0, 1.0, 1.0, -2.0], dtype=F64)
    res = eigsh(DenseOperator(torch.diag(evals)), k=4, tol=1e-12, generator=torch.Generator().manual_seed(0))
    assert res.converged
    assert torch.allclose(torch.sort(res.values).values, torch.sort(evals).values, atol=1e-10)


def test_eigsh_bad_input():
    op = DenseOperator(torch.eye(5, dtype=F64))
    for kwargs in ({"k": 0}, {"k": 6}, {"which": "XX"}, {"tol": 0}):
        with pytest.raises(InfogeomError):
            eigsh(op, **kwargs)


def test_power_iteration_known_spectrum():
    A, _ = known_spectrum(P=100)
    res = power_iteration(
        DenseOperator(A), k=2, tol=1e-7, max_iter=5000, generator=torch.Generator().manual_seed(0)
    )
    assert res.converged
    assert torch.allclose(res.values, torch.tensor([10.0, 9.7], dtype=F64), atol=1e-8)
    assert torch.allclose(
        res.residuals, torch.linalg.vector_norm(A @ res.vectors - res.vectors * res.values, dim=0)
    )


def test_power_iteration_reports_nonconvergence():
    A, _ = known_spectrum(P=100)
    res = power_iteration(
        DenseOperator(A), k=1, tol=1e-12, max_iter=5, generator=torch.Generator().manual_seed(0)
    )
    assert not res.converged and res.matvecs == 5


def test_gpt_hessian_eigenpairs_match_dense(gpt_hessian):
    model, batch, H = gpt_hessian
    evals = torch.linalg.eigvalsh(H)
    op = HessianOperator(model, batch)
    top = eigsh(op, k=3, tol=1e-9, generator=torch.Generator().manual_seed(0))
    assert top.converged
    assert torch.allclose(top.values, evals.flip(0)[:3], rtol=1e-7, atol=1e-10)
    assert torch.allclose(
        top.residuals, torch.linalg.vector_norm(H @ top.vectors - top.vectors * top.values, dim=0), atol=1e-10
    )
    bottom = eigsh(op, k=2, which="SA", tol=1e-9, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(bottom.values, evals[:2], rtol=1e-7, atol=1e-10)
    power = power_iteration(op, k=1, tol=1e-6, max_iter=3000, generator=torch.Generator().manual_seed(0))
    assert math.isclose(float(power.values[0]), float(evals.abs().max()), rel_tol=1e-6)


def test_hutchinson_within_stderr_and_stderr_matches_theory(gpt_hessian):
    model, batch, H = gpt_hessian
    est = hutchinson(
        HessianOperator(model, batch), num_probes=256, generator=torch.Generator().manual_seed(0)
    )
    assert abs(est.value - float(H.trace())) <= 4 * est.stderr
    # Var(vᵀHv) = 2(‖H‖_F² − Σ H_ii²) for Rademacher v
    sd = math.sqrt(2 * (float((H**2).sum()) - float((H.diagonal() ** 2).sum())))
    assert 0.75 < est.stderr / (sd / math.sqrt(256)) < 1.25


def test_hutchinson_adaptive_stops_at_rtol():
    A, evals = known_spectrum()
    A = A + 3 * torch.eye(A.shape[0], dtype=F64)
    est = hutchinson(DenseOperator(A), num_probes=8, rtol=0.01, generator=torch.Generator().manual_seed(0))
    assert est.stderr <= 0.01 * abs(est.value) and est.num_probes % 8 == 0
    assert abs(est.value - float(A.trace())) <= 4 * est.stderr


def test_hutchpp_exact_on_low_rank_and_better_than_hutchinson():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(150, 5, generator=g, dtype=F64)
    low_rank = X @ X.T
    est = hutchpp(DenseOperator(low_rank), num_probes=18, generator=g)
    assert math.isclose(est.value, float(low_rank.trace()), rel_tol=1e-10) and est.stderr < 1e-8
    U, _ = torch.linalg.qr(torch.randn(300, 300, generator=g, dtype=F64))
    decaying = U @ torch.diag(1.0 / torch.arange(1, 301, dtype=F64) ** 2) @ U.T
    errs_pp, errs_h = [], []
    for seed in range(20):
        gen = torch.Generator().manual_seed(seed)
        errs_pp.append(abs(hutchpp(DenseOperator(decaying), 30, gen).value - float(decaying.trace())))
        errs_h.append(abs(hutchinson(DenseOperator(decaying), 30, gen).value - float(decaying.trace())))
    assert sum(errs_pp) < 0.5 * sum(errs_h)


def test_diagonal_estimate_z_scores(gpt_hessian):
    model, batch, H = gpt_hessian
    est = diagonal(HessianOperator(model, batch), num_probes=64, generator=torch.Generator().manual_seed(0))
    z = (est.value - H.diagonal()) / est.stderr.clamp_min(1e-14)
    assert z.abs().mean() < 1.2 and (z.abs() > 5).float().mean() < 0.01
    exact = diagonal(DenseOperator(torch.diag(torch.arange(1.0, 6.0, dtype=F64))), num_probes=4)
    assert torch.allclose(exact.value, torch.arange(1.0, 6.0, dtype=F64)) and exact.stderr.max() == 0


def test_lanczos_quadrature_is_gauss_exact():
    """Σ_i w_i θ_i^p = vᵀA^p v / vᵀv for p ≤ 2m − 1 (the defining property of m-point Gauss quadrature)."""
    A, _ = known_spectrum(P=120)
    A = A / 10
    probes = rademacher((120, 3), F64, generator=torch.Generator().manual_seed(0))
    m = 10
    nodes, weights = lanczos_quadrature(DenseOperator(A), probes, m)
    assert torch.allclose(weights.sum(1), torch.ones(3, dtype=F64))
    for p in range(0, 2 * m):
        exact = (probes * (torch.linalg.matrix_power(A, p) @ probes)).sum(0) / (probes**2).sum(0)
        assert torch.allclose((weights * nodes**p).sum(1), exact, rtol=1e-8, atol=1e-10), p


def test_slq_density_moments_match_dense_gpt_hessian(gpt_hessian):
    model, batch, H = gpt_hessian
    evals = torch.linalg.eigvalsh(H)
    sd = spectral_density(
        HessianOperator(model, batch), num_probes=8, steps=30, generator=torch.Generator().manual_seed(0)
    )
    P = H.shape[0]
    for k in (1, 2, 3, 4):
        exact = float((evals**k).sum()) / P
        assert abs(sd.moment(k) - exact) <= 4 * sd.moment_stderr(k) + 1e-12, k
    dx = float(sd.grid[1] - sd.grid[0])
    assert math.isclose(float(sd.density.sum()) * dx, 1.0, rel_tol=1e-3)
    # extreme Ritz values converge to the extreme eigenvalues
    assert math.isclose(float(sd.nodes.max()), float(evals.max()), rel_tol=1e-6)
    assert math.isclose(float(sd.nodes.min()), float(evals.min()), rel_tol=1e-6)


def test_slq_density_is_broadened_spectrum_when_krylov_space_is_full():
    """With m = P steps the quadrature is exact: nodes = eigenvalues, weights = (u_jᵀv)²/P."""
    evals = torch.tensor([-1.0, 0.5, 2.0, 4.0], dtype=F64)
    U, _ = torch.linalg.qr(torch.randn(4, 4, generator=torch.Generator().manual_seed(0), dtype=F64))
    A = U @ torch.diag(evals) @ U.T
    sd = spectral_density(
        DenseOperator(A), num_probes=2, steps=4, sigma=0.1, generator=torch.Generator().manual_seed(1)
    )
    v = rademacher((4, 2), F64, generator=torch.Generator().manual_seed(1))
    w_true = ((U.T @ v) ** 2 / 4).T  # [probes, eigen]
    expected = sum(
        w_true[:, j].mean()
        * torch.exp(-0.5 * ((sd.grid - evals[j]) / 0.1) ** 2)
        / (0.1 * math.sqrt(2 * math.pi))
        for j in range(4)
    )
    assert torch.allclose(sd.density, expected, atol=1e-8)
