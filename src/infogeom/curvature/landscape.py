"""Loss-landscape slices (Li, Xu, Taylor, Studer & Goldstein 2018) and linear interpolation between
parameter sets.

- 1D slice: L(θ + α d); 2D slice: L(θ + α d₁ + β d₂), for α, β on a grid in [−span, span].
- Filter-normalized directions: d is Gaussian, then each *row* (first dimension: an output unit/filter of a
  linear layer, a token of an embedding) of each weight tensor (ndim ≥ 2) is rescaled to the norm of the
  same row of the weights, d_r ← d_r ‖θ_r‖/‖d_r‖, so the slice is comparable across layers and
  scale-invariant networks. 1-D tensors (biases, norm gains) follow ``one_dim``: 'zero' (default; Li et
  al.'s choice: they stay at θ), 'keep' (plain Gaussian entries) or 'filter' (the whole vector is one
  filter, rescaled to ‖θ‖).
- Interpolation: L((1 − α) θ_a + α θ_b) for α in [α_min, α_max] (default [−0.25, 1.25]; α = 0 is θ_a, 1 is
  θ_b).

Cost: one forward pass per grid point (no gradients).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from ..errors import InfogeomError
from ..geometry.functional import Batch
from ..operators import flatten, unflatten
from .params import FlatLoss, FlatModel

ONE_DIM_MODES = ("zero", "keep", "filter")


def filter_normalized_direction(
    theta: torch.Tensor,
    shapes: Sequence[torch.Size],
    one_dim: str = "zero",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """A random flat direction ``[P]`` filter-normalized against ``theta`` (see module doc)."""
    if one_dim not in ONE_DIM_MODES:
        raise InfogeomError(f"unknown one_dim mode {one_dim!r}; choose one of {', '.join(ONE_DIM_MODES)}")
    d = torch.randn(theta.numel(), generator=generator, dtype=torch.float64).to(theta.dtype).to(theta.device)
    parts = []
    for w, r in zip(unflatten(theta, shapes), unflatten(d, shapes)):
        if w.ndim >= 2 or one_dim == "filter":
            n_rows = len(w) if w.ndim >= 2 else 1
            rows_w, rows_r = w.reshape(n_rows, -1), r.reshape(n_rows, -1)
            norm_r = torch.linalg.vector_norm(rows_r, dim=1, keepdim=True).clamp_min(1e-30)
            parts.append(
                (rows_r * torch.linalg.vector_norm(rows_w, dim=1, keepdim=True) / norm_r).reshape(r.shape)
            )
        else:
            parts.append(torch.zeros_like(r) if one_dim == "zero" else r)
    return flatten(parts)


@dataclass
class LandscapeSlice:
    """Losses on a grid: ``kind`` '1d' | '2d' | 'interpolation'; ``alphas [n]``, ``betas [m]`` (2-D only)
    and ``losses [n]`` or ``[n, m]``; ``center_loss`` at α = β = 0."""

    kind: str
    alphas: torch.Tensor
    losses: torch.Tensor
    betas: torch.Tensor | None = None
    center_loss: float | None = None
    meta: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "alphas": self.alphas.tolist(),
            "losses": self.losses.tolist(),
            "betas": None if self.betas is None else self.betas.tolist(),
            "center_loss": self.center_loss,
            **self.meta,
        }


@torch.no_grad()
def evaluate_along(
    f: FlatLoss, points: torch.Tensor, progress: bool = False, desc: str = "landscape"
) -> torch.Tensor:
    """``f`` at each row of ``points [n, P]`` -> ``[n]`` (float64)."""
    return torch.tensor(
        [float(f(p)) for p in tqdm(points, desc=desc, disable=not progress, leave=False)], dtype=torch.float64
    )


def slice_1d(
    f: FlatLoss, theta: torch.Tensor, direction: torch.Tensor, alphas: torch.Tensor, progress: bool = False
) -> LandscapeSlice:
    """L(θ + α d) for each α."""
    alphas = alphas.to(torch.float64)
    losses = evaluate_along(f, theta + alphas.to(theta.dtype)[:, None] * direction, progress)
    return LandscapeSlice("1d", alphas, losses, center_loss=float(f(theta).detach()))


def slice_2d(
    f: FlatLoss,
    theta: torch.Tensor,
    d1: torch.Tensor,
    d2: torch.Tensor,
    alphas: torch.Tensor,
    betas: torch.Tensor,
    progress: bool = False,
) -> LandscapeSlice:
    """L(θ + α d₁ + β d₂) on the grid alphas × betas -> losses ``[len(alphas), len(betas)]``."""
    alphas, betas = alphas.to(torch.float64), betas.to(torch.float64)
    a, b = torch.meshgrid(alphas.to(theta.dtype), betas.to(theta.dtype), indexing="ij")
    points = theta + a.reshape(-1, 1) * d1 + b.reshape(-1, 1) * d2
    losses = evaluate_along(f, points, progress).reshape(len(alphas), len(betas))
    return LandscapeSlice("2d", alphas, losses, betas, center_loss=float(f(theta).detach()))


def interpolate(
    f: FlatLoss, theta_a: torch.Tensor, theta_b: torch.Tensor, alphas: torch.Tensor, progress: bool = False
) -> LandscapeSlice:
    """L((1 − α) θ_a + α θ_b) for each α."""
    alphas = alphas.to(torch.float64)
    al = alphas.to(theta_a.dtype)[:, None]
    losses = evaluate_along(f, (1 - al) * theta_a + al * theta_b, progress, "interpolation")
    return LandscapeSlice(
        "interpolation",
        alphas,
        losses,
        center_loss=float(f(theta_a).detach()),
        meta={"distance": float(torch.linalg.vector_norm(theta_b - theta_a))},
    )


def loss_landscape(
    model: nn.Module,
    batch: Batch,
    dims: int = 2,
    num_points: int = 21,
    span: float = 1.0,
    one_dim: str = "zero",
    generator: torch.Generator | None = None,
    names: Sequence[str] | None = None,
    progress: bool = False,
) -> LandscapeSlice:
    """A 1-D or 2-D filter-normalized slice of ``model``'s loss on ``batch`` around its parameters."""
    if dims not in (1, 2):
        raise InfogeomError(f"landscape dims must be 1 or 2, got {dims}")
    if int(num_points) < 2 or not span > 0:
        raise InfogeomError(f"need num_points >= 2 and span > 0, got {num_points} and {span}")
    flat = FlatModel(model, names)
    f = flat.loss_function(batch)
    alphas = torch.linspace(-span, span, int(num_points), dtype=torch.float64)
    d1 = filter_normalized_direction(flat.theta, flat.shapes, one_dim, generator)
    if dims == 1:
        out = slice_1d(f, flat.theta, d1, alphas, progress)
    else:
        d2 = filter_normalized_direction(flat.theta, flat.shapes, one_dim, generator)
        out = slice_2d(f, flat.theta, d1, d2, alphas, alphas.clone(), progress)
    out.meta.update({"one_dim": one_dim, "span": span})
    return out


def interpolate_models(
    model: nn.Module,
    params_b: Mapping[str, torch.Tensor],
    batch: Batch,
    alphas: torch.Tensor | None = None,
    names: Sequence[str] | None = None,
    progress: bool = False,
) -> LandscapeSlice:
    """Interpolate from ``model``'s parameters (α = 0) to ``params_b`` (α = 1; e.g. another checkpoint's
    state dict, same architecture) on ``batch``."""
    flat = FlatModel(model, names)
    missing = [n for n in flat.names if n not in params_b]
    if missing:
        raise InfogeomError(f"second parameter set lacks {', '.join(missing[:3])}")
    bad = [n for n, s in zip(flat.names, flat.shapes) if params_b[n].shape != s]
    if bad:
        raise InfogeomError(f"parameter shapes differ for {', '.join(bad[:3])}")
    theta_b = flatten([params_b[n].detach().to(flat.theta) for n in flat.names])
    alphas = torch.linspace(-0.25, 1.25, 31, dtype=torch.float64) if alphas is None else alphas
    return interpolate(flat.loss_function(batch), flat.theta, theta_b, alphas, progress)
