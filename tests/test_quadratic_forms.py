"""Quadratic forms vᵀAv (all a Hutchinson trace needs): the Hessian's product-free second differences of float64
loss values against the dense float64 Hessian (jacrev of grad), the "auto" confirmation and its fallback, and the
restricted / data-set operators' forms against the sub-block / weighted sum of dense Hessians."""

import copy

import pytest
import torch
from conftest import random_batch, tiny_gpt
from test_hessian_operator import dense_hessian

from infogeom.curvature import hutchinson, hutchpp
from infogeom.errors import InfogeomError
from infogeom.geometry import FiniteDifferenceHessian, HessianOperator, SecondDifferences
from infogeom.geometry.dataset import DatasetOperator
from infogeom.models import lm_loss
from infogeom.operators import RestrictedOperator, rademacher


def float32_model_and_dense_hessian(seed=0, **overrides):
    """A float32 tiny GPT (second differences are for parameters below float64 precision), its batch, and the
    dense float64 Hessian of the same weights."""
    torch.manual_seed(seed)
    model = tiny_gpt(dtype=torch.float32, **overrides)
    batch = random_batch(seed=seed + 3)
    return model, batch, dense_hessian(copy.deepcopy(model).double(), batch)


def forms_of(H, V):
    return (V.double() * (H @ V.double())).sum(0)


def probes(dim, k, seed=1, dtype=torch.float32):
    return rademacher((dim, k), dtype, torch.device("cpu"), torch.Generator().manual_seed(seed))


def test_second_differences_match_dense_hessian_forms():
    model, batch, H = float32_model_and_dense_hessian()
    names = [n for n, _ in model.named_parameters()]
    V = probes(H.shape[0], 6)
    V[:, 5] = torch.randn(H.shape[0])  # a Gaussian column: the step is relative to ‖v‖, any v works
    sd = SecondDifferences(model, batch, names)
    got, want = sd(V).double(), forms_of(H, V)
    scale = V.double().norm(dim=0) * (H @ V.double()).norm(dim=0)  # |vᵀHv| ≤ ‖v‖‖Hv‖; vᵀHv may be ~0 (indefinite)
    assert ((got - want).abs() / scale).max() <= 1e-5, (got, want)
    assert sd(torch.zeros(H.shape[0], 1))[0] == 0
    # one-sided (sign-symmetric probes): exact in the mean over ±v, per column within a small odd cubic term
    one, minus = sd(V, one_sided=True).double(), sd(-V, one_sided=True).double()
    assert (((one + minus) / 2 - got).abs() / scale).max() <= 1e-6
    assert ((one - want).abs() / scale).max() <= 1e-2
    # the step is where round-off and truncation balance; a step 10⁴× too small is visibly worse (a test that can fail)
    bad = SecondDifferences(model, batch, names, step=sd.step * 1e-4)(V).double()
    assert ((bad - want).abs() / scale).max() > 10 * ((got - want).abs() / scale).max()


@pytest.mark.parametrize("cls", [HessianOperator, FiniteDifferenceHessian])
def test_operators_forms_modes(cls):
    model, batch, H = float32_model_and_dense_hessian(seed=1)
    V = probes(H.shape[0], 5, seed=2)
    want = forms_of(H, V)
    scale = V.double().norm(dim=0) * (H @ V.double()).norm(dim=0)
    for forms in ("auto", "difference", "backward"):
        op = cls(model, batch, forms=forms)
        got = op.quadratic_forms(V).double()
        tol = 5e-3 if (cls is FiniteDifferenceHessian and op.forms == "backward") else 1e-4  # FD products: float32
        assert ((got - want).abs() / scale).max() <= tol, (forms, got, want)
        if forms == "auto":  # confirmed on the first probe, then product-free; the first value is the exact one
            assert op.forms == "difference" and op.form_error <= op.form_tolerance
            assert f"quadratic forms: {op.forms}" in repr(op)
    assert cls(model, batch).forms == "auto"
    assert cls(tiny_gpt(), batch).forms == "backward"  # float64 parameters: the product is already exact enough
    with pytest.raises(InfogeomError, match="forms must be"):
        cls(model, batch, forms="magic")
    with pytest.raises(InfogeomError, match="quadratic_forms expects"):
        cls(model, batch).quadratic_forms(V[:-1])


def test_auto_falls_back_when_the_forward_rounds():
    """A forward that rounds a parameter-dependent activation (here the logits to bfloat16, as transformers' Llama
    RMSNorm rounds to float32) makes the loss values useless for second differences: "auto" must detect it on the
    first probe and keep the exact products."""
    model, batch, _ = float32_model_and_dense_hessian(seed=2)

    def rounded(logits, y):
        return lm_loss(logits.to(torch.bfloat16).to(logits.dtype), y)

    op = HessianOperator(model, batch, loss=rounded)
    V = probes(op.dim, 4, seed=3)
    want = HessianOperator(model, batch, loss=rounded, forms="backward").quadratic_forms(V)
    got = op.quadratic_forms(V)
    assert op.forms == "backward" and op.form_error > op.form_tolerance
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_restricted_and_dataset_forms_against_dense():
    model, batch, H = float32_model_and_dense_hessian(seed=3)
    full = HessianOperator(model, batch, forms="difference")
    index = torch.arange(10, 60)
    V = probes(index.numel(), 4, seed=5)
    got = RestrictedOperator(full, index, "slice").quadratic_forms(V).double()
    want = forms_of(H[index][:, index], V)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))

    x, y = batch
    batches = [(x[:1], y[:1]), (x[1:], y[1:])]  # two micro-batches: H = Σ_m (N_m/N) H_m = the batch's H
    op = DatasetOperator(lambda b, m: HessianOperator(model, b, forms="difference"), batches)
    V = probes(H.shape[0], 4, seed=6)
    got, want = op.quadratic_forms(V).double(), forms_of(H, V)
    scale = V.double().norm(dim=0) * (H @ V.double()).norm(dim=0)
    assert ((got - want).abs() / scale).max() <= 1e-4


def test_trace_estimators_use_the_forms():
    """Same generator, same probes: Hutchinson and Hutch++ through the product-free (one-sided) forms give the
    exact-product estimate up to a small fraction of its standard error; and over many probes the one-sided
    Hutchinson mean converges to the dense trace (its cubic term averages out)."""
    model, batch, H = float32_model_and_dense_hessian(seed=4)
    for estimator in (hutchinson, hutchpp):
        exact = estimator(HessianOperator(model, batch, forms="backward"), 12, torch.Generator().manual_seed(7))
        cheap = estimator(HessianOperator(model, batch, forms="difference"), 12, torch.Generator().manual_seed(7))
        assert cheap.num_probes == exact.num_probes
        assert abs(cheap.value - exact.value) <= 0.05 * exact.stderr
    est = hutchinson(HessianOperator(model, batch), 400, torch.Generator().manual_seed(8), chunk=100)
    assert abs(est.value - float(torch.trace(H))) <= 3 * est.stderr


def test_wrappers_pass_the_forms_through():
    """Damped (vᵀAv + λ‖v‖²), scaled (c·vᵀAv) and counted operators keep the product-free forms and their cost;
    the counter tells forms from products."""
    from infogeom.operators import CountedOperator, DampedOperator, ScaledOperator

    model, batch, H = float32_model_and_dense_hessian(seed=5)
    V = probes(H.shape[0], 3, seed=9)
    base = HessianOperator(model, batch, forms="difference")
    want = forms_of(H, V)
    scale = V.double().norm(dim=0) * (H @ V.double()).norm(dim=0)
    damped = DampedOperator(base, 0.5).quadratic_forms(V).double()
    assert (((damped - want - 0.5 * V.double().square().sum(0)) / scale).abs()).max() <= 1e-4
    scaled = ScaledOperator(base, 3.0).quadratic_forms(V).double()
    assert (((scaled - 3 * want) / scale).abs()).max() <= 3e-4
    counted = CountedOperator(base)
    counted.quadratic_forms(V)
    assert (counted.forms, counted.products) == (3, 0)
    for op in (DampedOperator(base, 0.5), ScaledOperator(base, 3.0), counted):
        assert op.form_cost(True) == base.form_cost(True) < 1


@pytest.mark.parametrize("cls", [HessianOperator, FiniteDifferenceHessian])
def test_sketch_is_the_hessian_product_up_to_gradient_differences(cls):
    """``sketch`` (Hutch++'s A S) by one-sided gradient differences against the dense float64 Hessian: ≤ 1e-5
    relative in float64 (h = √ε), ≤ 3e-2 in float32 (measured ≈ 7e-3 on the 210k benchmark GPT), and in float32
    visibly not the exact product (> 1e-5: the cheap path is the one taken); costs under half a product."""
    model, batch, H = float32_model_and_dense_hessian(seed=6)
    V = probes(H.shape[0], 4, seed=10)
    want = H @ V.double()
    for m, tol in ((copy.deepcopy(model).double(), 1e-5), (model, 3e-2)):
        op = cls(m, batch)
        rel = ((op.sketch(V.to(op.dtype)).double() - want).norm(dim=0) / want.norm(dim=0)).max()
        assert rel <= tol, (m.lm_head.weight.dtype, float(rel))
        assert op.sketch_cost() < 0.5
    assert rel > 1e-5
    with pytest.raises(InfogeomError, match="sketch expects"):
        op.sketch(V[:5])


def test_wrappers_pass_the_sketch_through():
    """Restricted (E_Sᵀ A E_S V), damped (+λV), scaled (c·AV), counted (counts ``sketches``) and dataset
    (Σ_m w_m A_m V) operators sketch with their operator's gradient differences, against the dense float64
    Hessian (float64 model: the differences are exact to 1e-5)."""
    from infogeom.operators import CountedOperator, DampedOperator, ScaledOperator

    model, batch, H = float32_model_and_dense_hessian(seed=7)
    model = model.double()
    base = HessianOperator(model, batch)
    V = probes(H.shape[0], 3, seed=11, dtype=torch.float64)
    AV = H @ V

    def close(got, want):
        assert ((got - want).norm(dim=0) / want.norm(dim=0)).max() <= 1e-5

    close(DampedOperator(base, 0.5).sketch(V), AV + 0.5 * V)
    close(ScaledOperator(base, 3.0).sketch(V), 3 * AV)
    counted = CountedOperator(base)
    close(counted.sketch(V), AV)
    assert (counted.sketches, counted.products) == (3, 0)
    index = torch.arange(10, 60)
    close(RestrictedOperator(base, index, "slice").sketch(V[index]), H[index][:, index] @ V[index])
    x, y = batch
    op = DatasetOperator(lambda b, m: HessianOperator(model, b), [(x[:1], y[:1]), (x[1:], y[1:])])
    close(op.sketch(V), AV)
    for wrapped in (DampedOperator(base, 0.5), counted, op):
        assert wrapped.sketch_cost() == base.sketch_cost() < 1


def test_hutchpp_with_difference_sketch_is_unbiased():
    """Hutch++ whose basis comes from the float32 gradient-difference sketch: over 20 seeds the mean estimate is
    within 3 standard errors (of the mean) of the dense trace, and each estimate's own 2-SE interval covers it in
    ≥ 80% of the seeds."""
    model, batch, H = float32_model_and_dense_hessian(seed=8)
    op = HessianOperator(model, batch)
    truth = float(torch.trace(H))
    ests = [hutchpp(op, 24, torch.Generator().manual_seed(s)) for s in range(20)]
    values = torch.tensor([e.value for e in ests], dtype=torch.float64)
    assert abs(float(values.mean()) - truth) <= 3 * float(values.std()) / 20**0.5
    assert sum(abs(e.value - truth) <= 2 * e.stderr for e in ests) >= 16


@pytest.mark.parametrize("which", ["LA", "SA", "LM"])
def test_eigsh_on_the_sketch_against_dense_eigenvalues(which):
    """Lanczos on the float32 gradient-difference sketch, values as exact Rayleigh quotients: the top two of each
    end within 1e-3 relative of the dense float64 eigenvalues (measured ≤ 2.3e-4), ordered as asked, and with
    Ritz vectors whose exact residual ‖Hv − θv‖ is small (≤ 5e-2·|θ|)."""
    from infogeom.curvature import eigsh

    model, batch, H = float32_model_and_dense_hessian(seed=2)
    ev = torch.linalg.eigvalsh(H)
    want = {"LA": ev.flip(0), "SA": ev, "LM": ev[ev.abs().argsort(descending=True)]}[which][:2]
    res = eigsh(HessianOperator(model, batch), k=2, which=which, tol=1e-3, residuals=True,
                generator=torch.Generator().manual_seed(0), sketch=True)
    assert ((res.values.double() - want).abs() / want.abs()).max() <= 1e-3, (res.values, want)
    assert (res.residuals <= 5e-2 * res.values.abs()).all()


def test_eigsh_sketch_falls_back_to_exact_products_when_the_sketch_is_off():
    """A sketch 50% off along the top eigenvector (as the one-sided differences are along the sharpest direction of
    the 3.2M benchmark GPT): the exact residual fails, Lanczos is finished with exact products, and the result
    meets the residual test of the exact path (values within 1e-6 of the dense ones)."""
    from infogeom.curvature import eigsh
    from infogeom.operators import DenseOperator

    g = torch.Generator().manual_seed(3)
    Q, _ = torch.linalg.qr(torch.randn(60, 60, generator=g, dtype=torch.float64))
    e = torch.cat([torch.tensor([-50.0, 20.0], dtype=torch.float64), torch.linspace(-1, 1, 58, dtype=torch.float64)])
    A = (Q * e) @ Q.T

    class OffSketch(DenseOperator):
        def _sketch(self, V):
            return self._matmat(V) + 0.5 * Q[:, :1] @ (Q[:, 1:2].T @ V) * 50  # couples the top two directions

    op = OffSketch(A)
    res = eigsh(op, k=1, which="LM", tol=1e-3, generator=torch.Generator().manual_seed(0), sketch=True)
    assert abs(float(res.values[0]) + 50) <= 1e-6 * 50 and float(res.residuals[0]) <= 1e-3 * 50
    plain = eigsh(DenseOperator(A), k=1, which="LM", tol=1e-3, generator=torch.Generator().manual_seed(0))
    assert res.matvecs > plain.matvecs - 1  # the sketch columns were spent, then exact products


def test_auto_decides_general_and_sign_symmetric_forms_apart():
    """A loss far from quadratic along one sharp direction (simulated: the second differences are 10% off along
    the top eigenvector, as they are along the λ = −695 one of the 3.2M benchmark GPT) fails the general check
    on Hutch++'s basis, which then uses exact products, while random sign-symmetric probes keep the one-sided
    differences after their own check; both kinds agree with the dense Hessian, and Hutch++ stays on target."""
    model, batch, H = float32_model_and_dense_hessian(seed=9)
    evals, evecs = torch.linalg.eigh(H)
    u = evecs[:, evals.abs().argmax()].float()
    op = HessianOperator(model, batch)
    real = SecondDifferences(model, batch, op.names)

    def off_along_u(V, one_sided=False):
        out = real(V, one_sided)
        overlap = (u @ V).abs() / V.norm(dim=0)
        return torch.where(overlap > 0.5, out * 1.1, out)

    op._differences = off_along_u
    basis = torch.stack([u, probes(op.dim, 1, seed=12)[:, 0] / op.dim**0.5], 1)
    got = op.quadratic_forms(basis).double()
    assert op.forms == "backward" and op.form_errors[False] > op.form_tolerance
    torch.testing.assert_close(got, forms_of(H, basis), rtol=1e-4, atol=1e-6)
    V = probes(op.dim, 6, seed=13)
    sym = op.quadratic_forms(V, symmetric=True).double()
    assert op.symmetric_forms == "difference" and op.form_errors[True] <= op.form_tolerance
    assert "sign-symmetric probes: difference" in repr(op)
    assert op.form_cost(True) < 1 == op.form_cost(False)
    scale = V.double().norm(dim=0) * (H @ V.double()).norm(dim=0)
    assert ((sym - forms_of(H, V)).abs() / scale).max() <= 1e-2
