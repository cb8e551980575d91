"""Adaptive SLQ (:func:`adaptive_spectral_density`): against the exact broadened density of dense matrices with
known spectra, the L1 error meets the tolerance; the budget goes to depth or to probes as the spectrum needs."""

import pytest
import torch

from infogeom.curvature.density import adaptive_spectral_density, broaden
from infogeom.errors import InfogeomError
from infogeom.operators import DenseOperator

F64 = torch.float64
P = 800


def _operator(eigenvalues: torch.Tensor) -> DenseOperator:
    U, _ = torch.linalg.qr(torch.randn(P, P, generator=torch.Generator().manual_seed(3), dtype=F64))
    return DenseOperator(U @ torch.diag(eigenvalues) @ U.T)


def _semicircle_with_outliers() -> torch.Tensor:
    X = torch.randn(P - 3, P - 3, generator=torch.Generator().manual_seed(1), dtype=F64)
    return torch.cat([torch.linalg.eigvalsh((X + X.T) / 2) / P**0.5, torch.tensor([6.0, 9.0, 15.0], dtype=F64)])


SPECTRA = {"semicircle+outliers": _semicircle_with_outliers(), "uniform": torch.linspace(-1, 10, P, dtype=F64)}


def l1_error(result, eigenvalues: torch.Tensor) -> float:
    d = result.density
    exact = broaden(eigenvalues[None], torch.full((1, P), 1 / P, dtype=F64), d.grid, d.sigma)
    return float((d.density - exact).abs().sum() * (d.grid[1] - d.grid[0]))


@pytest.mark.parametrize("tol", [0.1, 0.05])
def test_error_meets_the_tolerance_on_a_bulk_with_outliers(tol):
    lam = SPECTRA["semicircle+outliers"]
    op = _operator(lam)
    for seed in range(4):
        r = adaptive_spectral_density(op, tol=tol, max_products=2048, generator=torch.Generator().manual_seed(seed))
        assert l1_error(r, lam) <= tol, (seed, r.products)
        assert r.quadrature_change <= tol / 2 and r.probe_stderr <= tol / 2 * 1.5
        assert r.products == r.density.nodes.numel()
        assert torch.allclose(r.density.weights.sum(1), torch.ones(r.density.nodes.shape[0], dtype=F64))


def test_budget_goes_to_depth_for_a_flat_spectrum_and_is_capped():
    """A flat spectrum at σ = 1% of its range needs deep Lanczos; the bulk with outliers converges shallow."""
    flat = adaptive_spectral_density(_operator(SPECTRA["uniform"]), tol=0.1, max_products=512,
                                     generator=torch.Generator().manual_seed(0))
    easy = adaptive_spectral_density(_operator(SPECTRA["semicircle+outliers"]), tol=0.1, max_products=512,
                                     generator=torch.Generator().manual_seed(0))
    assert flat.density.nodes.shape[1] > 2 * easy.density.nodes.shape[1]
    assert flat.products <= 512 and easy.products <= 512
    assert l1_error(flat, SPECTRA["uniform"]) <= 0.1 or flat.quadrature_change > 0.05  # met, or says it is not


def test_the_error_estimates_can_fail():
    """Stopped by a tiny budget, the estimates report that the tolerance is not met."""
    r = adaptive_spectral_density(_operator(SPECTRA["uniform"]), tol=0.01, max_products=24,
                                  generator=torch.Generator().manual_seed(0))
    assert r.products <= 24 and r.quadrature_change > 0.005
    assert l1_error(r, SPECTRA["uniform"]) > 0.01


def test_bad_arguments_are_refused():
    op = _operator(SPECTRA["uniform"])
    with pytest.raises(InfogeomError, match="at least 2 probes"):
        adaptive_spectral_density(op, num_probes=1)
    with pytest.raises(InfogeomError, match="tolerance must be positive"):
        adaptive_spectral_density(op, tol=0)
    with pytest.raises(InfogeomError, match="below 16"):
        adaptive_spectral_density(op, max_products=10)
