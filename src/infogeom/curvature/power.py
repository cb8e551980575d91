"""Power iteration with deflation (the baseline PyHessian uses; Lanczos in :mod:`.lanczos` is faster).

Eigenpair i is found by iterating v ← A_i v / ‖A_i v‖ on the projection-deflated operator A_i = (I − V Vᵀ) A
(I − V Vᵀ), V = [v_1 … v_{i−1}] the eigenvectors found so far. Each product gives the Rayleigh quotient θ =
vᵀAv and the residual at no extra cost; iteration i stops when the deflated residual ‖A_i v − θv‖ ≤ tol·|θ|
(the reported residual ‖Av − θv‖ also carries the error of the earlier eigenvectors). Converges to the
largest-|θ| eigenpairs at the rate |θ_{i+1}/θ_i| per product, so it can be much slower than Lanczos when the
top of the spectrum is clustered.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from ..errors import InfogeomError
from ..operators import CurvatureOperator
from .lanczos import EigenResult


def power_iteration(
    op: CurvatureOperator,
    k: int = 1,
    tol: float = 1e-4,
    max_iter: int = 1000,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> EigenResult:
    """Top-k eigenpairs by largest magnitude. ``max_iter`` products per eigenpair at most (then
    ``converged=False``). Residuals are the explicit ‖A v − θ v‖ of the last iterate."""
    if not 1 <= k <= op.dim:
        raise InfogeomError(f"k must be between 1 and the operator dimension {op.dim}, got {k}")
    if not tol > 0:
        raise InfogeomError(f"tol must be positive, got {tol}")
    values, vectors, residuals = [], [], []
    converged, matvecs = True, 0
    bar = tqdm(total=k * max_iter, desc="power iteration", disable=not progress, leave=False)
    for _ in range(k):
        V = torch.stack(vectors, 1) if vectors else torch.zeros(op.dim, 0, dtype=op.dtype, device=op.device)
        v = torch.randn(op.dim, generator=generator, dtype=torch.float64).to(dtype=op.dtype, device=op.device)
        v = v - V @ (V.T @ v)
        v = v / torch.linalg.vector_norm(v)
        done = False
        for _ in range(max_iter):
            Av = op.matvec(v)
            matvecs += 1
            bar.update(1)
            theta = v @ Av
            res = torch.linalg.vector_norm(Av - theta * v)
            w = Av - V @ (V.T @ Av)
            if torch.linalg.vector_norm(w - theta * v) <= tol * theta.abs():
                done = True
                break
            v = w / torch.linalg.vector_norm(w)
        converged &= done
        values.append(float(theta))
        vectors.append(v)
        residuals.append(float(res))
    bar.close()
    return EigenResult(
        torch.tensor(values, dtype=op.dtype),
        torch.stack(vectors, 1),
        torch.tensor(residuals, dtype=op.dtype),
        converged,
        matvecs,
    )
