"""The study's statistics against scipy and hand-computed values."""

import math

import numpy as np
import pytest
import scipy.stats as sps

from infogeom.study import stats as S


@pytest.mark.parametrize("n", [8, 25])
@pytest.mark.parametrize("statistic", [np.mean, np.median])
def test_bca_matches_scipy_on_same_resamples(n, statistic):
    x = np.random.default_rng(n).lognormal(size=n)
    ours = S.bootstrap_ci(x, statistic, seed=7)
    ref = sps.bootstrap((x,), statistic, method="BCa", n_resamples=S.N_RESAMPLES, vectorized=True,
                        rng=np.random.default_rng(7)).confidence_interval
    assert ours.method == "bca"
    np.testing.assert_allclose([ours.lo, ours.hi], [ref.low, ref.high], rtol=1e-10)
    assert ours.value == pytest.approx(statistic(x))


def test_bca_coverage_is_nominal():
    """Coverage of the 95% BCa interval of a normal mean (n = 20) over 300 samples: within 3σ of 0.95."""
    rng = np.random.default_rng(0)
    hits = sum(ci.lo <= 1.0 <= ci.hi for ci in
               (S.bootstrap_ci(rng.normal(1.0, 2.0, 20), n_resamples=2000, seed=s) for s in range(300)))
    assert abs(hits / 300 - 0.95) < 3 * math.sqrt(0.95 * 0.05 / 300) + 0.02  # BCa is slightly liberal at n=20


def test_mean_ci_uses_t_below_eight():
    x = [1.0, 2.5, 0.5, 3.0, 2.0]
    ci = S.mean_ci(x)
    lo, hi = sps.t.interval(0.95, len(x) - 1, loc=np.mean(x), scale=sps.sem(x))
    assert ci.method == "t"
    assert (ci.lo, ci.hi) == pytest.approx((lo, hi), rel=1e-12)
    assert S.mean_ci(np.arange(8.0)).method == "bca"


def test_degenerate_and_nonfinite_inputs():
    assert S.mean_ci([2.0, 2.0, 2.0]).method == "degenerate"
    assert S.mean_ci([1.0]).value == 1.0
    ci = S.mean_ci([1.0, math.nan, 3.0, math.inf])
    assert ci.n == 2 and ci.value == 2.0
    assert S.fmt(S.mean_ci([2.0, 2.0])) == "2 (n=2)"
    assert S.fmt(S.Interval(0.5612, 0.51, 0.6104, 9, "bca")) == "0.561 [0.51, 0.61]"


def test_kendall_tau_matches_scipy_with_ties():
    rng = np.random.default_rng(3)
    x = rng.integers(0, 5, 40).astype(float)
    y = x + rng.integers(0, 3, 40)
    assert S.kendall_tau(x, y) == pytest.approx(sps.kendalltau(x, y).statistic, abs=1e-12)
    # τ-a by hand: pairs (1,2),(1,3),(2,3) of x=[1,2,3], y=[1,3,2] -> (+1 +1 −1)/3
    assert S.kendall_tau([1, 2, 3], [1, 3, 2], "a") == pytest.approx(1 / 3)


def test_kendall_ci_contains_tau_and_is_seeded():
    rng = np.random.default_rng(4)
    x = rng.normal(size=30)
    y = x + rng.normal(size=30)
    a, b = S.kendall_ci(x, y, seed=1), S.kendall_ci(x, y, seed=1)
    assert a.lo < a.value < a.hi and (a.lo, a.hi) == (b.lo, b.hi)
    assert a.value == pytest.approx(sps.kendalltau(x, y).statistic)
    # the bootstrap distribution's spread is close to the known asymptotic s.d. of τ̂ under dependence
    assert 0.05 < (a.hi - a.lo) / 4 < 0.2


def test_granulated_kendall_hand_example():
    """Two axes (lr, bs); within each group only one axis varies; τ-a per group, mean per axis, mean of axes."""
    configs = [{"lr": 1, "bs": "a"}, {"lr": 2, "bs": "a"}, {"lr": 1, "bs": "b"}, {"lr": 2, "bs": "b"}]
    m = [1.0, 2.0, 3.0, 4.0]
    g = [1.0, 3.0, 4.0, 5.0]  # lr groups: +1, +1; bs groups: +1 (1<4), +1 (3<5)
    out = S.granulated_kendall(configs, m, g, ["lr", "bs"])
    assert out["per_axis"] == {"lr": 1.0, "bs": 1.0} and out["psi"] == 1.0
    g = [1.0, 3.0, 4.0, 2.0]  # lr: bs=a +1, bs=b −1 → 0; bs: lr=1 +1, lr=2 (2,3) vs (4,2) −1 → 0
    assert S.granulated_kendall(configs, m, g, ["lr", "bs"])["psi"] == 0.0
    g = [1.0, 3.0, 4.0, 6.0]
    m = [1.0, 2.0, 3.0, 1.5]  # lr: +1, (3,4) vs (1.5,6) −1 → 0; bs: (1,1)/(3,4) +1, (2,3)/(1.5,6) −1 → 0
    assert S.granulated_kendall(configs, m, g, ["lr", "bs"])["psi"] == 0.0
    m = [1.0, 2.0, 3.0, 3.5]  # lr: +1, +1 → 1; bs: +1, (2,3)/(3.5,6) +1 → 1; a third config breaks one group
    configs.append({"lr": 3, "bs": "a"})
    out = S.granulated_kendall(configs, m + [0.0], g + [10.0], ["lr", "bs"])
    # lr axis, bs=a: lr1 (1,1), lr2 (2,3), lr3 (0,10): pairs 12 +, 13 −, 23 − → τa = −1/3; bs=b: +1 → ψ_lr = 1/3
    assert out["per_axis"]["lr"] == pytest.approx(1 / 3)
    assert out["per_axis"]["bs"] == 1.0 and out["groups"] == {"lr": 2, "bs": 2}
    assert out["psi"] == pytest.approx(2 / 3)


def test_holm_hand_example():
    # sorted p: .01 .02 .03 .04 (m = 4): 4·.01=.04, 3·.02=.06, 2·.03=.06, 1·.04=.04 → max-accumulated .04 .06 .06 .06
    assert S.holm([0.03, 0.01, 0.04, 0.02]) == pytest.approx([0.06, 0.04, 0.06, 0.06])
    assert S.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert S.holm([]) == []


def test_paired_difference_and_ratio():
    rng = np.random.default_rng(5)
    b = rng.normal(10, 1, 12)
    a = b + 1.0 + rng.normal(0, 0.1, 12)
    d = S.paired_difference(a, b)
    assert d.interval.lo < 1.0 < d.interval.hi and d.pvalue == pytest.approx(sps.ttest_rel(a, b).pvalue)
    r = S.paired_ratio([2.0, 4.0, 8.0], [1.0, 2.0, 4.0])
    assert r.interval.value == pytest.approx(2.0) and r.interval.method == "degenerate"
    r = S.paired_ratio([2.0, 4.4, 7.0, math.nan], [1.0, 2.0, 4.0, 1.0])
    assert r.n == 3 and r.interval.lo < r.interval.value < r.interval.hi
    assert r.interval.value == pytest.approx(math.exp(np.mean(np.log([2.0, 2.2, 1.75]))))
