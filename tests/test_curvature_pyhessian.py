"""Our estimators against PyHessian (peer library) on the same float32 tiny GPT and batch, both also checked
against the dense float64 Hessian (jacrev of grad) of the same weights."""

import copy
import math

import numpy as np
import pytest
import torch
from conftest import random_batch, tiny_gpt
from peers.pyhessian_compat import pyhessian_session
from test_hessian_operator import dense_hessian

from infogeom.curvature import eigsh, hutchinson, spectral_density
from infogeom.geometry import HessianOperator


@pytest.fixture(scope="module")
def setup():
    model, batch = tiny_gpt(dtype=torch.float32), random_batch()
    H = dense_hessian(copy.deepcopy(model).double(), batch)
    return model, batch, torch.linalg.eigvalsh(H), H


def test_lambda_max_agrees_with_pyhessian_and_dense(setup):
    model, batch, evals, _ = setup
    torch.manual_seed(0)
    with pyhessian_session(model, batch) as ph:
        ph_values, _ = ph.eigenvalues(maxIter=2000, tol=1e-6, top_n=1)
    ours = eigsh(
        HessianOperator(model, batch), k=1, which="LM", tol=1e-5, generator=torch.Generator().manual_seed(0)
    )
    top = float(evals[evals.abs().argmax()])
    assert math.isclose(float(ours.values[0]), top, rel_tol=1e-4)
    assert math.isclose(ph_values[0], top, rel_tol=1e-3)
    assert math.isclose(float(ours.values[0]), ph_values[0], rel_tol=1e-3)


def test_trace_agrees_with_pyhessian_within_standard_error(setup):
    model, batch, _, H = setup
    torch.manual_seed(0)
    with pyhessian_session(model, batch) as ph:
        # PyHessian stops when (mean − previous)/(previous + 1e-6) < tol, a *signed* ratio: with a negative
        # running mean it stops after two probes for any tol ≥ 0, so ask for exactly 128 probes with
        # tol = −inf.
        samples = np.array(ph.trace(maxIter=128, tol=-math.inf))
    ph_mean, ph_se = samples.mean(), samples.std(ddof=1) / math.sqrt(len(samples))
    ours = hutchinson(HessianOperator(model, batch), 128, torch.Generator().manual_seed(0))
    exact = float(H.trace())
    assert len(samples) == 128
    assert abs(ours.value - exact) <= 4 * ours.stderr and abs(ph_mean - exact) <= 4 * ph_se
    assert abs(ours.value - ph_mean) <= 4 * math.hypot(ours.stderr, ph_se)
    assert 0.7 < ours.stderr / ph_se < 1.4  # same estimator, same number of probes


def test_density_moments_agree_with_pyhessian_and_dense(setup):
    model, batch, evals, H = setup
    torch.manual_seed(0)
    with pyhessian_session(model, batch) as ph:
        nodes_ph, weights_ph = ph.density(iter=24, n_v=6)
    nodes_ph, weights_ph = (
        torch.tensor(nodes_ph, dtype=torch.float64),
        torch.tensor(weights_ph, dtype=torch.float64),
    )
    assert torch.allclose(
        weights_ph.sum(1), torch.ones(6, dtype=torch.float64), atol=1e-5
    )  # PR #23 weighting
    ours = spectral_density(
        HessianOperator(model, batch), num_probes=6, steps=24, generator=torch.Generator().manual_seed(0)
    )
    P = len(evals)
    for k in (1, 2):
        Hk = torch.linalg.matrix_power(H, k)
        exact = float(Hk.trace()) / P
        # Rademacher quadratic forms vᵀH^k v have variance 2(‖H^k‖_F² − Σ (H^k)_ii²): the SE of 6 probes
        se = math.sqrt(2 * float((Hk**2).sum() - (Hk.diagonal() ** 2).sum())) / P / math.sqrt(6)
        assert abs(ours.moment(k) - exact) <= 4 * se, k
        assert abs(float((weights_ph * nodes_ph**k).sum(1).mean()) - exact) <= 4 * se, k
    # both find the spectrum's edges
    assert math.isclose(float(ours.nodes.max()), float(nodes_ph.max()), rel_tol=1e-3)
    assert math.isclose(float(ours.nodes.min()), float(nodes_ph.min()), rel_tol=1e-3)
