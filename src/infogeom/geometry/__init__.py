"""Metrics of a model on the parameter tangent space: Fisher, GGN, Hessian, K-FAC, EK-FAC, per-example gradients.

Every metric is a :class:`~infogeom.operators.CurvatureOperator` (the model-free operators live in
:mod:`infogeom.operators` and are re-exported here for convenience).
"""

from ..operators import (
    CurvatureOperator,
    DenseOperator,
    DiagonalOperator,
    KroneckerOperator,
    LowRankOperator,
    conjugate_gradient,
    flatten,
    rademacher,
    unflatten,
)
from .fisher import (
    FISHER_KINDS,
    FisherOperator,
    GGNOperator,
    OutputCurvatureOperator,
    per_example_gradients,
    sample_labels,
)
from .functional import (
    curvature_mode,
    freeze_except,
    logits_function,
    loss_function,
    match_parameters,
    select_parameters,
)
from .hessian import FiniteDifferenceHessian, HessianOperator, SecondDifferences
from .kfac import KFACCapture, LayerFactors, LayerInfo, ekfac_factors, kfac_factors
from .report import approximation_report, format_report
from .structured import EKFACOperator, KFACOperator, diagonal_approximation, low_rank_approximation

__all__ = [
    "CurvatureOperator", "DenseOperator", "DiagonalOperator", "EKFACOperator", "FISHER_KINDS",
    "FiniteDifferenceHessian",
    "FisherOperator",
    "GGNOperator", "HessianOperator", "KFACCapture", "KFACOperator", "KroneckerOperator", "LayerFactors",
    "SecondDifferences",
    "LayerInfo", "LowRankOperator", "OutputCurvatureOperator", "approximation_report", "conjugate_gradient",
    "curvature_mode", "diagonal_approximation", "ekfac_factors", "flatten", "format_report", "kfac_factors",
    "logits_function", "loss_function",
    "low_rank_approximation", "per_example_gradients", "rademacher", "sample_labels", "select_parameters",
    "freeze_except", "match_parameters",
    "unflatten",
]
