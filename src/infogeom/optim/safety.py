"""Skip-the-step guards shared by the optimizers: a non-finite gradient or a failed decomposition must never reach
the parameters."""

from __future__ import annotations

import warnings
from collections.abc import Iterable

import torch


def all_finite(tensors: Iterable[torch.Tensor]) -> bool:
    """True when every entry of every tensor is finite (one reduction per tensor, one host sync)."""
    flags = [torch.isfinite(t).all() for t in tensors]
    return bool(torch.stack(flags).all()) if flags else True


def warn_skip(optimizer: str, reason: str, damping: float) -> None:
    warnings.warn(f"{optimizer}: {reason}; step skipped, damping raised to {damping:.3g}", RuntimeWarning,
                  stacklevel=3)
