"""The normalized effective dimension of a model's Fisher (Abbas et al. 2021, "The power of quantum neural
networks", Nat. Comput. Sci. 1, 403).

For Fisher matrices F(θ) ``[P, P]`` at parameter samples θ_s ~ Θ (s = 1..S) and a data count n, with
κ_n = γn / (2π log n) and the normalized Fisher F̂(θ) = P F(θ) / E_θ[tr F(θ)],

    d_{γ,n} = 2 log( E_θ √det(I + κ_n F̂(θ)) ) / log κ_n,

the Monte-Carlo estimate d = 2 (logsumexp_s z_s − log S) / log κ_n with z_s = ½ Σ_i log(1 + κ_n λ_i(F̂_s)).
``normalized`` = d / P ∈ [0, 1]. Unlike tr F / P, d is unchanged when F ↦ c F for every θ (the scalar
reparameterization θ = φ/√c), and for F = cI it is P log(1 + κ_n) / log κ_n → P.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..errors import InfogeomError


def effective_dimension(fishers: torch.Tensor, n: float | Sequence[float], gamma: float = 1.0) -> torch.Tensor:
    """d_{γ,n} (see module doc) of Fisher samples ``[S, P, P]`` for each data count in ``n`` (each > 1 with
    κ_n > 1); returns ``[len(n)]`` (a 0-d tensor for a scalar ``n``). Divide by P for the normalized value."""
    if fishers.ndim != 3 or fishers.shape[-1] != fishers.shape[-2] or fishers.shape[0] < 1:
        raise InfogeomError(f"effective_dimension needs Fisher samples [S, P, P], got {tuple(fishers.shape)}")
    if not gamma > 0:
        raise InfogeomError(f"gamma must be positive, got {gamma}")
    scalar = isinstance(n, (int, float))
    ns = torch.as_tensor([n] if scalar else list(n), dtype=torch.float64)
    kappa = gamma * ns / (2 * math.pi * torch.log(ns))
    if not bool((ns > 1).all() and (kappa > 1).all()):
        raise InfogeomError(f"need n > 1 with γn/(2π log n) > 1, got n = {ns.tolist()}")
    F = fishers.to(torch.float64)
    S, P = F.shape[0], F.shape[-1]
    mean_trace = torch.diagonal(F, dim1=-2, dim2=-1).sum(-1).mean()
    if not mean_trace > 0:
        raise InfogeomError("the Fisher samples have zero trace")
    lam = torch.linalg.eigvalsh(0.5 * (F + F.transpose(-1, -2)) * (P / mean_trace)).clamp_min(0)  # [S, P]
    z = 0.5 * torch.log1p(kappa[:, None, None] * lam[None]).sum(-1)  # [len(n), S]
    d = 2 * (torch.logsumexp(z, dim=-1) - math.log(S)) / torch.log(kappa)
    return d[0] if scalar else d
