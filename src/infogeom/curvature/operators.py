"""The standard metrics of a model on a batch, built by name (restrictions, diagonal and block operators live in
:mod:`infogeom.operators` and are re-exported here)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from ..errors import InfogeomError
from ..geometry import FisherOperator, GGNOperator, HessianOperator
from ..geometry.functional import Batch
from ..operators import (
    CountedOperator,
    CurvatureOperator,
    DiagonalOperator,
    RestrictedOperator,
    parameter_index,
    restrict,
)

__all__ = ["OPERATOR_KINDS", "CountedOperator", "DiagonalOperator", "RestrictedOperator", "build_operator",
           "parameter_index", "restrict"]

OPERATOR_KINDS = ("hessian", "ggn", "fisher", "fisher-mc", "fisher-empirical")


def build_operator(
    kind: str,
    model: nn.Module,
    batch: Batch,
    names: Sequence[str] | None = None,
    generator: torch.Generator | None = None,
) -> CurvatureOperator:
    """The curvature of the mean token loss on ``batch`` by name: 'hessian', 'ggn', 'fisher' (exact),
    'fisher-mc' (one sampled label per token from ``generator``) or 'fisher-empirical'."""
    if kind == "hessian":
        return HessianOperator(model, batch, names=names)
    if kind == "ggn":
        return GGNOperator(model, batch, names=names)
    if kind.startswith("fisher"):
        fisher_kind = {"fisher": "exact", "fisher-mc": "mc", "fisher-empirical": "empirical"}.get(kind)
        if fisher_kind is not None:
            return FisherOperator(model, batch, kind=fisher_kind, generator=generator, names=names)
    raise InfogeomError(f"unknown operator {kind!r}; choose one of {', '.join(OPERATOR_KINDS)}")
