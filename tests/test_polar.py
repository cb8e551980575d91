"""Newton–Schulz polar factors (``infogeom.optim.polar``) against the plain matrix iteration in float64: the
Gram-side form, batches, float32 rounding, and Fisher–Muon's batched Gram step against its per-layer plain one."""

import pytest
import torch
from conftest import random_batch, tiny_gpt
from test_optim_fisher_muon import newton_schulz_iteration

from infogeom.models import lm_loss
from infogeom.optim import build_optimizer
from infogeom.optim.polar import newton_schulz


def graded(m: int, n: int, low: float, seed: int = 0) -> torch.Tensor:
    """An m×n float64 matrix with singular values log-spaced from 1 down to ``low``."""
    g = torch.Generator().manual_seed(seed)
    k = min(m, n)
    U, _ = torch.linalg.qr(torch.randn(m, k, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(n, k, generator=g, dtype=torch.float64))
    return (U * torch.logspace(0, torch.log10(torch.tensor(low)).item(), k, dtype=torch.float64)) @ V.T


@pytest.mark.parametrize("shape", [(9, 32), (32, 9), (12, 40), (10, 12)])
@pytest.mark.parametrize("gram", [False, True])
def test_newton_schulz_is_the_matrix_iteration(shape, gram):
    """float64: both forms equal the plain quintic iteration to 1e-11, for wide and tall matrices; a batch
    gives each member's own result (the Gram form only runs where n > 1.5m: (10, 12) tests the fallback)."""
    M = torch.stack([graded(*shape, low=1e-3, seed=s) for s in range(3)])
    expected = torch.stack([newton_schulz_iteration(m) for m in M])
    torch.testing.assert_close(newton_schulz(M, gram=gram), expected, rtol=0, atol=1e-11)
    torch.testing.assert_close(newton_schulz(M[1], gram=gram), expected[1], rtol=0, atol=1e-11)


def test_gram_form_in_float32_stays_close():
    """float32 on a spectrum spanning 1..1e-7 (‖P_k‖ large): the Gram form is within 3e-4 relative of the float64
    iteration (measured 1.3e-4; the plain float32 form 7e-6), and both stay far inside NS's own distance from
    U Vᵀ (≥ 0.1 relative for this spectrum)."""
    M = graded(129, 512, low=1e-7)
    ref = newton_schulz_iteration(M)
    U, _, Vh = torch.linalg.svd(M, full_matrices=False)
    rel = [float((newton_schulz(M.float(), gram=g).double() - ref).norm() / ref.norm()) for g in (False, True)]
    assert rel[0] < 2e-5 and rel[1] < 3e-4, rel
    assert float((ref - U @ Vh).norm() / ref.norm()) > 0.1


def test_fisher_muon_batched_gram_step_equals_the_plain_one():
    """Fisher–Muon on a float64 GPT with two same-shape layers per kind (batched Newton–Schulz) and 32×9 MLP
    matrices (Gram form): three steps equal those of ``ns_gram=False`` to 1e-10."""
    models = [tiny_gpt(n_layer=2) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    opts = [build_optimizer("fisher-muon", m, 1e-2, 0.1, ns_gram=g, ns_dtype="float64")
            for m, g in zip(models, (True, False))]
    for seed in range(3):
        x, y = random_batch(seed=seed)
        for model, opt in zip(models, opts):
            opt.zero_grad()
            lm_loss(model(x), y).backward()
            opt.step()
    for p, q in zip(*(m.parameters() for m in models)):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-10)
    assert any(2 * max(la.weight.shape) > 3 * min(la.weight.shape) for la in opts[0].core.layers)
