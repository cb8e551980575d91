"""Skip-the-step guards shared by the optimizers: a non-finite gradient or a failed decomposition must never
reach the parameters."""

from __future__ import annotations

import warnings
from collections.abc import Iterable

import torch


def all_finite(tensors: Iterable[torch.Tensor]) -> bool:
    """True when every entry of every tensor is finite: the total 2-norm (fused ``foreach`` kernel, one host
    sync) is finite exactly then, unless finite entries beyond ~1e19 (float32) overflow it, which counts as
    failure too."""
    tensors = [t for t in tensors if t.numel()]
    return bool(torch.isfinite(torch.nn.utils.get_total_norm(tensors))) if tensors else True


def warn_skip(optimizer: str, reason: str, damping: float) -> None:
    warnings.warn(f"{optimizer}: {reason}; step skipped, damping raised to {damping:.3g}", RuntimeWarning,
                  stacklevel=3)
