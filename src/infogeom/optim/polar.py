"""The polar factor of a matrix by Newton–Schulz iteration: Muon's orthogonalization, shared by the Muon
metric (:mod:`.preconditioner`) and :mod:`.fisher_muon`.

For M = U Σ Vᵀ the polar factor is U Vᵀ. The quintic iteration X ← aX + (bXXᵀ + c(XXᵀ)²)X from
X₀ = M/‖M‖_F acts on each singular value as s ← as + bs³ + cs⁵ (:func:`newton_schulz_map`); with Muon's
coefficients (3.4445, −4.7750, 2.0315) five steps map (0, 1] into ≈ [0.7, 1.2]. Cost: 3 matmuls of the
smaller Gram side per step, ≈ 2·(2mn·m + m³)·steps flops for m ≤ n. torch's Muon runs it in bfloat16, which
is fast on GPUs and on CPUs with native bfloat16 matmuls but ≈ 15× slower than float32 on CPUs without them
(this project's AMD EPYC machines: 172 vs 11.5 ms for a 512 × 129 matrix).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import InfogeomError

#: Newton–Schulz dtypes by option value (None: the matrix's own)
NS_DTYPES = {None: None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float64": torch.float64}

#: torch.optim.Muon's defaults (Jordan et al. 2024)
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NS_STEPS = 5


def _addmm(C: torch.Tensor, A: torch.Tensor, B: torch.Tensor, beta: float, alpha: float = 1.0) -> torch.Tensor:
    """beta·C + alpha·A B for matrices or batches of them (one fused call either way)."""
    return (torch.addmm if C.dim() == 2 else torch.baddbmm)(C, A, B, beta=beta, alpha=alpha)


def newton_schulz(M: torch.Tensor, steps: int = NS_STEPS, coefficients: Sequence[float] = NS_COEFFICIENTS,
                  eps: float = 1e-7, dtype: torch.dtype | None = None, gram: bool = False) -> torch.Tensor:
    """NS(M) ≈ U Vᵀ for ``M [..., m, n]`` (a batch of same-shape matrices allowed), iterated on the smaller
    Gram side in ``dtype`` (default M's), returned in M's dtype.

    ``gram=True`` carries the iteration on the m×m side alone (m ≤ n): every iterate is X_k = P_k X₀ with P_k a
    polynomial in G = X₀X₀ᵀ, so P_{k+1} = aP_k + (bA_k + cA_k²)P_k with A_k = P_k G P_kᵀ, and X = P_steps X₀
    at the end. Cost 2m²n + (4·steps − 3)m³ flops·2 instead of steps·(2m²n + m³)·2: cheaper once n > 1.5m
    (the 129 × 512 MLP matrices of the default GPT: 0.64 vs 1.1 ms), used there and only there, and only in
    float32/float64 (in bfloat16 the rounding of A_k = P_k G P_kᵀ grows with ‖P_k‖ ≈ 1/σ_min). In float32
    the result differs from the plain iteration by ≲ 2e-4 relative (rounding of A_k on spectra spanning
    1e-7..1; tested), far inside the iteration's own distance to U Vᵀ (singular values in ≈ [0.7, 1.2])."""
    a, b, c = coefficients
    X = M.to(dtype or M.dtype)
    flip = X.shape[-2] > X.shape[-1]
    X = X.mT if flip else X
    X = X / X.norm(dim=(-2, -1), keepdim=True).clamp_min(eps)
    if gram and 2 * X.shape[-1] > 3 * X.shape[-2] and torch.finfo(X.dtype).bits >= 32:
        G = X @ X.mT
        A, P = G, None
        for k in range(steps):
            B = _addmm(A, A, A, beta=b, alpha=c)
            if P is None:
                B.diagonal(dim1=-2, dim2=-1).add_(a)
                P = B
            else:
                P = _addmm(P, B, P, beta=a)
            if k < steps - 1:
                A = P @ G @ P.mT
        X = P @ X
    else:
        for _ in range(steps):
            A = X @ X.mT
            X = _addmm(X, _addmm(A, A, A, beta=b, alpha=c), X, beta=a)
    return (X.mT if flip else X).to(M.dtype)


def ns_dtype(name: str | None) -> torch.dtype | None:
    """The dtype of an ``ns_dtype`` option (one-line error for an unknown name)."""
    if name not in NS_DTYPES:
        raise InfogeomError(f"unknown ns_dtype {name!r}; choose one of {', '.join(k for k in NS_DTYPES if k)} "
                            "or None (the parameters' dtype)")
    return NS_DTYPES[name]


def newton_schulz_map(s: torch.Tensor, steps: int, coefficients: Sequence[float]) -> torch.Tensor:
    """The quintic Newton–Schulz iteration on singular values: s ← a s + b s³ + c s⁵, ``steps`` times."""
    a, b, c = coefficients
    for _ in range(steps):
        s = a * s + b * s**3 + c * s**5
    return s


def polar_metric(M: torch.Tensor, steps: int, coefficients: Sequence[float], eps: float
                 ) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """(Q, e, left): the SPD matrix P = Q diag(e) Qᵀ on the smaller side of ``M`` with P⁻¹M = NS(M) (``left``)
    or M P⁻¹ = NS(M), exactly for the float64 polynomial: Q the singular vectors of that side, e = σ / p(σ/‖M‖_F)
    (p = :func:`newton_schulz_map`). float64."""
    Md = M.double()
    left = M.shape[0] <= M.shape[1]
    U, S, _ = torch.linalg.svd(Md if left else Md.T, full_matrices=False)
    shrunk = newton_schulz_map(S / Md.norm().clamp_min(eps), steps, coefficients)
    floor = torch.finfo(torch.float64).eps * float(S.max().clamp_min(eps))
    return U, S.clamp_min(floor) / shrunk.clamp_min(floor), left
