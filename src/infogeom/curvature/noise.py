"""Gradient noise scale (McCandlish, Kaplan, Amodei et al. 2018, "An Empirical Model of Large-Batch
Training").

With per-example gradients g_i (i = 1..B; one example = one sequence), true gradient G = E g and per-example
covariance Σ = Cov g:

    B_simple = tr(Σ) / |G|²,        B_noise = tr(HΣ) / (Gᵀ H G)        (the critical batch size ≈ B_noise).

Estimator used here: *per-example gradients of one batch* (not the two-batch-size estimator of the paper's
appendix). With ḡ the mean and S = (1/(B−1)) Σ_i (g_i − ḡ)(g_i − ḡ)ᵀ the unbiased sample covariance, E[ḡḡᵀ]
= GGᵀ + Σ/B gives the unbiased estimates

    tr Σ ≈ tr S,   |G|² ≈ |ḡ|² − tr(S)/B,   tr(HΣ) ≈ tr(HS),   GᵀHG ≈ ḡᵀHḡ − tr(HS)/B,

and B_simple, B_noise are their ratios (consistent, not unbiased; a ratio may be negative or huge when the
batch is too small to resolve |G|²). tr(HS) costs B Hessian-vector products, ḡᵀHḡ one more.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..errors import InfogeomError
from ..geometry import HessianOperator, per_example_gradients
from ..geometry.functional import Batch
from ..operators import CurvatureOperator

ESTIMATOR = "per-example gradients, unbiased |G|^2 and tr(Sigma) from one batch"


@dataclass
class NoiseScale:
    """Noise-scale estimates and their parts (``b_noise``, ``trace_h_sigma``, ``g_h_g`` are None without
    H)."""

    b_simple: float
    trace_sigma: float
    grad_norm_sq: float
    batch_size: int
    b_noise: float | None = None
    trace_h_sigma: float | None = None
    g_h_g: float | None = None
    estimator: str = ESTIMATOR

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def noise_scale(
    per_example: torch.Tensor, hessian: CurvatureOperator | None = None, chunk: int = 16
) -> NoiseScale:
    """B_simple (and B_noise when ``hessian`` is given) from per-example gradients ``[B, P]`` (B ≥ 2)."""
    if per_example.ndim != 2 or per_example.shape[0] < 2:
        raise InfogeomError(
            f"noise scale needs per-example gradients [B >= 2, P], got {tuple(per_example.shape)}"
        )
    B = per_example.shape[0]
    mean = per_example.mean(0)
    dev = per_example - mean
    trace_s = float((dev**2).sum() / (B - 1))
    grad_sq = float(mean @ mean) - trace_s / B
    out = NoiseScale(trace_s / grad_sq, trace_s, grad_sq, B)
    if hessian is not None:
        if hessian.dim != per_example.shape[1]:
            raise InfogeomError(
                f"Hessian has dimension {hessian.dim} but the gradients have {per_example.shape[1]}"
            )
        V = torch.cat([mean[None], dev]).T.to(hessian.dtype)
        quad = torch.cat(
            [
                (V[:, i : i + chunk] * hessian.matmat(V[:, i : i + chunk])).sum(0)
                for i in range(0, B + 1, chunk)
            ]
        )
        trace_hs = float(quad[1:].sum() / (B - 1))
        ghg = float(quad[0]) - trace_hs / B
        out.b_noise, out.trace_h_sigma, out.g_h_g = trace_hs / ghg, trace_hs, ghg
    return out


def gradient_noise_scale(
    model: nn.Module,
    batch: Batch,
    names: Sequence[str] | None = None,
    with_hessian: bool = True,
    chunk_size: int | None = None,
) -> NoiseScale:
    """Noise scale of the mean token loss on ``batch`` (per-sequence gradients; H = Hessian of the batch
    loss)."""
    G = per_example_gradients(model, batch, names=names, chunk_size=chunk_size)
    H = HessianOperator(model, batch, names=names) if with_hessian else None
    return noise_scale(G, H)
