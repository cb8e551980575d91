"""How good is each Fisher approximation? Measured against the exact Fisher of a small model.

For a batch, F is the exact Fisher (= GGN of the mean token loss, :class:`FisherOperator`) restricted to
the parameters K-FAC covers (Linear and Embedding weights and biases; LayerNorm gains/biases are excluded,
< 1% of a GPT), g the loss gradient on the same parameters, λ the damping. For every approximation F̃:

- relative Frobenius error ‖F̃ − F‖_F / ‖F‖_F (dense, so P ≤ ``CurvatureOperator.max_dense``);
- cosine (one per damping λ) between its damped natural gradient (F̃ + λI)^{-1} g (each operator's own
  exact solve) and the exact (F + λI)^{-1} g (dense solve).

Rows: SGD (F̃ = 0, the plain gradient), the empirical Fisher, the diagonal of F, the top-k eigenpairs of
F, the exact per-layer block diagonal of F (the best any layer-block-diagonal method can do), K-FAC
expand/reduce (plain and π-corrected damping) and EK-FAC expand/reduce. Cost: P Fisher-vector products
plus O(P³) dense linear algebra.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from ..errors import InfogeomError
from ..operators import CurvatureOperator, DenseOperator, DiagonalOperator, LowRankOperator
from .fisher import FisherOperator
from .functional import Batch, select_parameters
from .kfac import ekfac_factors, find_layers
from .structured import EKFACOperator, KFACOperator, diagonal_approximation


def _block_diagonal(F: torch.Tensor, op: KFACOperator) -> torch.Tensor:
    """Keep the per-layer diagonal blocks of ``F`` (a layer's weight and bias form one block)."""
    sizes = dict(zip(op.names, (s.numel() for s in op.shapes)))
    starts, pos = {}, 0
    for n in op.names:
        starts[n] = pos
        pos += sizes[n]
    out = torch.zeros_like(F)
    for b in op.blocks:
        idx = torch.cat([torch.arange(starts[n], starts[n] + sizes[n]) for n in b.names])
        out[idx[:, None], idx] = F[idx[:, None], idx]
    return out


def _eigen_solver(evals: torch.Tensor, evecs: torch.Tensor, g: torch.Tensor):
    """λ ↦ (Q diag(e) Qᵀ + λI)^{-1} g, one eigendecomposition for all dampings."""
    coeff = evecs.T @ g
    return lambda lam: evecs @ (coeff / (evals + lam))


def approximation_report(model: nn.Module, batch: Batch, damping: float | Sequence[float] | None = None,
                         rank: int = 50, fisher: str = "exact", mc_samples: int = 1,
                         generator: torch.Generator | None = None, verbose: bool = True) -> dict:
    """Compare Fisher approximations with the exact Fisher on ``batch`` (module docstring).

    ``damping``: one λ or several (one cosine column each); None = (1e-3, 1e-2, 1e-1)·tr(F)/P, i.e. 0.1%, 1%
    and 10% of the mean eigenvalue. ``fisher``: the output curvature of K-FAC/EK-FAC (``"exact"``,
    ``"type-2"``, ``"mc"`` with ``mc_samples`` and ``generator``, ``"empirical"``). Returns ``{"params_total",
    "params_compared", "excluded", "dampings", "relative_dampings", "rank", "fisher", "tokens", "loss",
    "rows": [{"name", "rel_frobenius", "cosines": [one per damping]}]}``; prints the table when ``verbose``.
    """
    all_params = select_parameters(model)
    owned = {n for info in find_layers(model) for n in (info.weight, info.bias) if n is not None}
    names = [n for n in all_params if n in owned]
    if sum(all_params[n].numel() for n in names) > CurvatureOperator.max_dense:
        raise InfogeomError(f"the exact Fisher of this model is too large to compare densely "
                            f"(> {CurvatureOperator.max_dense} parameters); use a smaller model")
    exact = FisherOperator(model, batch, names=names)
    F, g = exact.to_dense(), exact.gradient
    P, mean_eig = F.shape[0], F.trace().item() / F.shape[0]
    if damping is None:
        lams = [r * mean_eig for r in (1e-3, 1e-2, 1e-1)]
    else:
        lams = [float(d) for d in (damping if isinstance(damping, Sequence) else [damping])]
    evals, evecs = torch.linalg.eigh(F)
    target = _eigen_solver(evals, evecs, g)
    factors = {a: ekfac_factors(model, batch, a, fisher, mc_samples, generator) for a in ("expand", "reduce")}
    kfac = {a: KFACOperator.from_factors(model, f) for a, f in factors.items()}
    candidates: list[tuple[str, CurvatureOperator, dict]] = [
        ("SGD (F~ = 0)", DiagonalOperator(torch.zeros_like(g), names, exact.shapes), {}),
        ("empirical Fisher", DenseOperator(FisherOperator(model, batch, "empirical", names=names).to_dense()),
         {}),
        ("diagonal", diagonal_approximation(DenseOperator(F)), {}),
        (f"low-rank (top {rank})", LowRankOperator(evecs[:, -rank:], evals[-rank:].clamp_min(0), names,
                                                   exact.shapes), {}),
        ("exact layer blocks", DenseOperator(_block_diagonal(F, kfac["expand"])), {}),
    ]
    for a in ("expand", "reduce"):
        candidates.append((f"K-FAC {a}", kfac[a], {}))
        candidates.append((f"K-FAC {a} (pi-damping)", kfac[a], {"pi_correction": True}))
        candidates.append((f"EK-FAC {a}", EKFACOperator.from_factors(model, factors[a]), {}))
    rows = []
    norm_F = torch.linalg.matrix_norm(F)
    errors: dict[int, float] = {}
    for name, op, opts in candidates:
        if id(op) not in errors:
            D = op.matrix if isinstance(op, DenseOperator) else op.to_dense()
            errors[id(op)] = (torch.linalg.matrix_norm(D - F) / norm_F).item()
            del D
        solve = (_eigen_solver(*torch.linalg.eigh(op.matrix), g) if isinstance(op, DenseOperator)
                 else lambda lam, op=op, opts=opts: op.solve(g, damping=lam, **opts))
        cosines = [torch.nn.functional.cosine_similarity(solve(lam), target(lam), dim=0).item()
                   for lam in lams]
        rows.append({"name": name, "rel_frobenius": errors[id(op)], "cosines": cosines})
    report = {
        "params_total": sum(p.numel() for p in all_params.values()), "params_compared": P,
        "excluded": [n for n in all_params if n not in owned], "dampings": lams,
        "relative_dampings": [lam / mean_eig for lam in lams], "rank": rank, "fisher": fisher,
        "tokens": int(batch[1].numel()), "loss": exact.loss.item(), "rows": rows,
    }
    if verbose:
        print(format_report(report))
    return report


def format_report(report: dict) -> str:
    """The report as a Markdown table with a header line naming what was compared."""
    head = (f"Fisher approximations vs the exact Fisher on {report['tokens']} tokens "
            f"(loss {report['loss']:.3f}): {report['params_compared']} of {report['params_total']} "
            f"parameters (LayerNorm excluded), K-FAC output curvature '{report['fisher']}'; "
            "damping λ = r·tr(F)/P")
    cols = " | ".join(f"cos @ r={r:.0e}" for r in report["relative_dampings"])
    lines = [head, "", f"| approximation | rel. Frobenius error | {cols} |",
             "|---|---:|" + "---:|" * len(report["dampings"])]
    for r in report["rows"]:
        cos = " | ".join(f"{c:.4f}" for c in r["cosines"])
        lines.append(f"| {r['name']} | {r['rel_frobenius']:.3f} | {cos} |")
    return "\n".join(lines)
