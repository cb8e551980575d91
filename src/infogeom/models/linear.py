"""The linear maps Kronecker-factored curvature sees: ``nn.Linear`` and transformers' ``Conv1D``.

``nn.Linear``: y = x Wᵀ + b with W ``[d_out, d_in]``. ``Conv1D`` (GPT-2, GPT-J-style checkpoints): y = x W + b
with W stored transposed, ``[d_in, d_out]`` (``nf = d_out``) — the same map. Conv1D is recognised without
importing transformers (a model holding one has imported it already).
"""

from __future__ import annotations

import sys

import torch.nn as nn

LINEAR, CONV1D = "linear", "conv1d"


def linear_kind(module: nn.Module) -> str | None:
    """``"linear"``, ``"conv1d"`` (weight stored ``[d_in, d_out]``) or None for any other module."""
    if isinstance(module, nn.Linear):
        return LINEAR
    conv1d = getattr(sys.modules.get("transformers.pytorch_utils"), "Conv1D", None)
    return CONV1D if conv1d is not None and isinstance(module, conv1d) else None


def linear_dims(module: nn.Module) -> tuple[int, int]:
    """``(d_in, d_out)`` of a linear map (:func:`linear_kind` not None)."""
    d0, d1 = module.weight.shape
    return (d0, d1) if linear_kind(module) == CONV1D else (d1, d0)
