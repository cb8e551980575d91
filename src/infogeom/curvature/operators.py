"""The standard metrics of a model on a batch, built by name (restrictions, diagonal and block operators live in
:mod:`infogeom.operators` and are re-exported here)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn as nn

from ..errors import InfogeomError
from ..geometry import (
    EKFACOperator,
    FiniteDifferenceHessian,
    FisherOperator,
    GGNOperator,
    HessianOperator,
    KFACOperator,
)
from ..geometry.dataset import DatasetOperator, micro_batches
from ..geometry.functional import Batch
from ..geometry.kfac import ekfac_factors, kfac_factors
from ..operators import (
    CountedOperator,
    CurvatureOperator,
    DiagonalOperator,
    RestrictedOperator,
    parameter_index,
    restrict,
)

__all__ = ["OPERATOR_KINDS", "CountedOperator", "DatasetOperator", "DiagonalOperator", "RestrictedOperator",
           "build_operator", "dataset_operator", "parameter_index", "restrict"]

OPERATOR_KINDS = ("hessian", "hessian-fd", "ggn", "fisher", "fisher-mc", "fisher-empirical")


def build_operator(
    kind: str,
    model: nn.Module,
    batch: Batch,
    names: Sequence[str] | None = None,
    generator: torch.Generator | None = None,
    token_chunk: int | str | None = "auto",
) -> CurvatureOperator:
    """The curvature of the mean token loss on ``batch`` by name: 'hessian', 'hessian-fd' (central differences of
    gradients, no double backward), 'ggn', 'fisher' (exact),
    'fisher-mc' (one sampled label per token from ``generator``) or 'fisher-empirical'. ``token_chunk`` bounds the
    [tokens, vocabulary] blocks of the GGN/Fisher kinds (:class:`~infogeom.geometry.OutputCurvatureOperator`)."""
    if kind == "hessian":
        return HessianOperator(model, batch, names=names)
    if kind == "hessian-fd":
        return FiniteDifferenceHessian(model, batch, names=names)
    if kind == "ggn":
        return GGNOperator(model, batch, names=names, token_chunk=token_chunk)
    if kind.startswith("fisher"):
        fisher_kind = {"fisher": "exact", "fisher-mc": "mc", "fisher-empirical": "empirical"}.get(kind)
        if fisher_kind is not None:
            return FisherOperator(model, batch, kind=fisher_kind, generator=generator, names=names,
                                  token_chunk=token_chunk)
    raise InfogeomError(f"unknown operator {kind!r}; choose one of {', '.join(OPERATOR_KINDS)}")


def dataset_operator(
    kind: str,
    model: nn.Module,
    batches: Batch | Iterable[Batch],
    micro_batch_size: int | None = None,
    names: Sequence[str] | None = None,
    seed: int = 0,
    cache: bool = False,
    token_chunk: int | str | None = "auto",
    **kfac_options,
) -> CurvatureOperator:
    """The curvature ``kind`` of the token-weighted mean loss over ``batches`` (:mod:`infogeom.geometry.dataset`):
    the :func:`build_operator` kinds as a :class:`DatasetOperator` over micro-batches of at most
    ``micro_batch_size`` sequences ('fisher-mc' draws the labels of micro-batch m from seed ``seed + m``, the
    same at every product; ``token_chunk`` as :func:`build_operator`, per micro-batch), or ``'kfac'`` /
    ``'ekfac'`` with factors accumulated over all micro-batches (``kfac_options``: approx, fisher, mc_samples,
    modules as :class:`~infogeom.geometry.KFACOperator`; the MC generator is seeded with ``seed``)."""
    if kind in ("kfac", "ekfac"):
        factors = (kfac_factors if kind == "kfac" else ekfac_factors)(
            model, micro_batches(batches, micro_batch_size), generator=torch.Generator().manual_seed(seed),
            **kfac_options)
        return (KFACOperator if kind == "kfac" else EKFACOperator).from_factors(model, factors)
    if kfac_options:
        raise InfogeomError(f"options {', '.join(kfac_options)} are only for kind 'kfac' or 'ekfac'")
    if kind not in OPERATOR_KINDS:
        raise InfogeomError(f"unknown operator {kind!r}; choose one of {', '.join(OPERATOR_KINDS)}, kfac, ekfac")

    def build(batch: Batch, m: int) -> CurvatureOperator:
        return build_operator(kind, model, batch, names, torch.Generator().manual_seed(seed + m), token_chunk)

    return DatasetOperator(build, batches, micro_batch_size, cache)
