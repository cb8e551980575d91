"""approximation_report against quantities computed independently from the dense float64 oracle."""

import pytest
import torch
from conftest import random_batch, tiny_gpt
from test_geometry_oracles import dense_fisher

from infogeom.errors import InfogeomError
from infogeom.geometry import CurvatureOperator, HessianOperator, approximation_report


def test_report_rows_against_the_dense_oracle(capsys):
    model, batch = tiny_gpt(tie_weights=False), random_batch()
    rep = approximation_report(model, batch, rank=20)
    assert rep["relative_dampings"] == pytest.approx([1e-3, 1e-2, 1e-1])
    rows = {r["name"]: r for r in rep["rows"]}
    names = [n for n, _ in model.named_parameters() if "ln_" not in n]
    F = dense_fisher(model, batch, names)
    assert rep["params_compared"] == F.shape[0] and rep["params_total"] == model.num_parameters()
    assert all("ln_" in n for n in rep["excluded"])
    g = HessianOperator(model, batch, names).gradient
    lam = 1e-2 * F.trace() / F.shape[0]
    assert rep["dampings"][1] == pytest.approx(lam.item(), rel=1e-10)
    target = torch.linalg.solve(F + lam * torch.eye(F.shape[0], dtype=F.dtype), g)
    cos = torch.nn.functional.cosine_similarity
    assert rows["SGD (F~ = 0)"]["rel_frobenius"] == pytest.approx(1.0)
    assert rows["SGD (F~ = 0)"]["cosines"][1] == pytest.approx(cos(g, target, dim=0).item(), rel=1e-8)
    norm = torch.linalg.matrix_norm(F)
    off = F - torch.diag(F.diagonal())
    diag_err = (torch.linalg.matrix_norm(off) / norm).item()
    assert rows["diagonal"]["rel_frobenius"] == pytest.approx(diag_err, rel=1e-8)
    diag_step = g / (F.diagonal() + lam)
    assert rows["diagonal"]["cosines"][1] == pytest.approx(cos(diag_step, target, dim=0).item(), rel=1e-8)
    evals = torch.linalg.eigvalsh(F)
    tail = torch.linalg.vector_norm(evals[:-20]) / norm
    assert rows["low-rank (top 20)"]["rel_frobenius"] == pytest.approx(tail.item(), rel=1e-6)
    best = rows["exact layer blocks"]["rel_frobenius"]
    # the exact blocks are the Frobenius-optimal block-diagonal matrix, and
    for approx in ("expand", "reduce"):
        kfac, ekfac = rows[f"K-FAC {approx}"]["rel_frobenius"], rows[f"EK-FAC {approx}"]["rel_frobenius"]
        assert best <= ekfac <= kfac  # exact EK-FAC moments project each block onto K-FAC's eigenbasis
    assert all(-1 <= c <= 1 for r in rep["rows"] for c in r["cosines"])
    out = capsys.readouterr().out
    assert "| K-FAC expand (pi-damping) |" in out and "LayerNorm excluded" in out and "cos @ r=1e-02" in out
    single = approximation_report(model, batch, damping=0.5, rank=20, verbose=False)
    assert single["dampings"] == [0.5] and all(len(r["cosines"]) == 1 for r in single["rows"])


def test_report_refuses_models_too_large_for_a_dense_fisher(monkeypatch):
    monkeypatch.setattr(CurvatureOperator, "max_dense", 100)
    with pytest.raises(InfogeomError, match="too large"):
        approximation_report(tiny_gpt(), random_batch(), verbose=False)
