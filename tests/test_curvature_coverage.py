"""Error bars that mean what they say: over many independent estimates on dense matrices with a known trace,
±2 reported standard errors must cover the truth about 95% of the time (nominal rate of a 2-SE interval)."""

import pytest
import torch

from infogeom.curvature import diagonal, hutchinson, hutchpp, spectral_density
from infogeom.operators import DenseOperator

N_ESTIMATES = 300
DIM = 48


def _matrices() -> dict[str, torch.Tensor]:
    """PSD (decaying spectrum), indefinite (heavy-tailed signed spectrum), low rank + symmetric noise."""
    g = torch.Generator().manual_seed(17)
    U, _ = torch.linalg.qr(torch.randn(DIM, DIM, generator=g, dtype=torch.float64))
    psd = U @ torch.diag(10 * torch.linspace(0, 1, DIM, dtype=torch.float64) ** 3) @ U.T
    indefinite = U @ torch.diag(torch.randn(DIM, generator=g, dtype=torch.float64) ** 3) @ U.T
    W = 3 * torch.randn(DIM, 5, generator=g, dtype=torch.float64)
    E = 0.1 * torch.randn(DIM, DIM, generator=g, dtype=torch.float64)
    return {"psd": psd, "indefinite": indefinite, "low-rank+noise": W @ W.T + (E + E.T) / 2}


MATRICES = _matrices()
# Each estimator at a probe count the library and the CLI actually use (the curvature command's budget never
# goes below 16 Hutchinson probes / 24 Hutch++ products; SLQ trace estimates use its probes).
ESTIMATORS = {
    "hutchinson-16": lambda op, g: hutchinson(op, 16, g),
    "hutchinson-32": lambda op, g: hutchinson(op, 32, g),
    "hutch++-24": lambda op, g: hutchpp(op, 24, g),
    "hutch++-48": lambda op, g: hutchpp(op, 48, g),
    "hutch++-adaptive-5%": lambda op, g: hutchpp(op, 12, g, rtol=0.05, max_probes=400),
    "hutchinson-adaptive-5%": lambda op, g: hutchinson(op, 16, g, rtol=0.05, max_probes=400),
    "slq-8": lambda op, g: _slq_trace(op, g),
}


def _slq_trace(op, g):
    sd = spectral_density(op, num_probes=8, steps=2, generator=g)  # the trace needs degree 1 only
    return sd.dim * sd.moment(1), sd.dim * sd.moment_stderr(1)


def coverage(estimate, A: torch.Tensor, seed: int = 0) -> float:
    """Fraction of ``N_ESTIMATES`` independent estimates whose ±2·SE interval contains tr(A)."""
    op, g, truth = DenseOperator(A), torch.Generator().manual_seed(seed), float(A.trace())
    hits = 0
    for _ in range(N_ESTIMATES):
        out = estimate(op, g)
        value, se = (out.value, out.stderr) if hasattr(out, "stderr") else out
        hits += abs(value - truth) <= 2 * se
    return hits / N_ESTIMATES


@pytest.mark.parametrize("matrix", list(MATRICES))
@pytest.mark.parametrize("estimator", list(ESTIMATORS))
def test_two_standard_errors_cover_the_trace_about_95_percent(estimator, matrix):
    rate = coverage(ESTIMATORS[estimator], MATRICES[matrix])
    assert 0.90 <= rate <= 0.99, f"{estimator} on {matrix}: 2-SE coverage {rate:.3f}"


@pytest.mark.parametrize("matrix", list(MATRICES))
def test_diagonal_standard_errors_cover_each_entry(matrix):
    A = MATRICES[matrix]
    op, g = DenseOperator(A), torch.Generator().manual_seed(1)
    est = [diagonal(op, 16, g) for _ in range(200)]
    values = torch.stack([e.value for e in est])
    se = torch.stack([e.stderr for e in est])
    rate = float(((values - A.diagonal()).abs() <= 2 * se).double().mean())
    assert 0.90 <= rate <= 0.99, f"diagonal on {matrix}: 2-SE coverage {rate:.3f}"


def test_plain_standard_error_would_fail_the_coverage_test():
    """The test can fail: sd/√n without the t correction under-covers Hutch++ with few products."""
    from infogeom.curvature import trace as trace_module

    A = MATRICES["low-rank+noise"]
    original = trace_module.t_factor
    try:
        trace_module.t_factor = lambda n: 1.0
        rate = coverage(lambda op, g: hutchpp(op, 12, g), A)
    finally:
        trace_module.t_factor = original
    assert rate < 0.90


@pytest.mark.parametrize("n", [2, 4, 16, 32, 200])
def test_t_factor_is_students_quantile_over_the_normal_one(n):
    from scipy import stats

    from infogeom.curvature.trace import t_factor

    assert t_factor(n) == pytest.approx(stats.t.ppf(0.975, n - 1) / stats.norm.ppf(0.975), rel=1e-12)


@pytest.mark.parametrize("matrix", ["psd", "low-rank+noise"])
def test_adaptive_hutchpp_reaches_its_target_with_fewer_products_than_hutchinson(matrix):
    op = DenseOperator(MATRICES[matrix])
    h = hutchinson(op, 16, torch.Generator().manual_seed(3), rtol=0.01, max_probes=4000)
    hpp = hutchpp(op, 12, torch.Generator().manual_seed(3), rtol=0.01, max_probes=4000)
    assert h.stderr <= 0.01 * abs(h.value)  # checks as it goes
    assert hpp.stderr <= 0.015 * abs(hpp.value)  # sized from its pilot: about the target
    for est in (h, hpp):
        assert abs(est.value - float(op.to_dense().trace())) <= 4 * est.stderr
    assert hpp.num_probes < h.num_probes


class _CheapForms(DenseOperator):
    """A dense operator whose quadratic forms are declared 10× cheaper than a product (as the Hessian's
    second differences are 3×): the adaptive Hutch++ then prefers residual forms to a bigger sketch."""

    def form_cost(self, symmetric: bool = False) -> float:
        return 0.1


def test_adaptive_hutchpp_grows_its_sketch_when_the_residual_would_cost_more():
    """Rank 64 plus noise, an initial sketch of 4: the residual needs thousands of probes, so the sketch doubles
    (4 → 64+) until it holds the low-rank part, keeping Q orthonormal (the estimate unbiased, within its SE) —
    unless forms are cheap enough that the residual probes win."""
    g = torch.Generator().manual_seed(0)
    U = torch.linalg.qr(torch.randn(300, 64, dtype=torch.float64, generator=g))[0]
    A = U @ torch.diag(torch.linspace(1, 10, 64, dtype=torch.float64)) @ U.T
    A += 1e-3 * torch.eye(300, dtype=torch.float64)
    truth = float(A.trace())
    grown = hutchpp(DenseOperator(A), 12, torch.Generator().manual_seed(1), rtol=0.01, max_probes=4000)
    fixed = hutchpp(DenseOperator(A), 12, torch.Generator().manual_seed(1))  # the initial sketch's residual spread
    needed_at_k4 = 4 * (fixed.stderr / (0.01 * truth)) ** 2  # its 4 residual probes → probes for 1% at k = 4
    assert needed_at_k4 > 1000 and grown.num_probes < needed_at_k4 / 4
    assert abs(grown.value - truth) <= 4 * grown.stderr and grown.stderr <= 0.015 * truth
    cheap = hutchpp(_CheapForms(A), 12, torch.Generator().manual_seed(1), rtol=0.01, max_probes=4000)
    assert cheap.num_probes > grown.num_probes  # more (cheap) residual forms, a smaller sketch
    assert abs(cheap.value - truth) <= 4 * cheap.stderr
