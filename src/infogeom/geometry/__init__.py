"""Metrics on the parameter tangent space behind one interface (:class:`CurvatureOperator`)."""

from .functional import curvature_mode, logits_function, loss_function, select_parameters
from .hessian import HessianOperator
from .operator import CurvatureOperator, DenseOperator, conjugate_gradient, flatten, rademacher, unflatten

__all__ = [
    "CurvatureOperator", "DenseOperator", "HessianOperator", "conjugate_gradient", "curvature_mode", "flatten",
    "logits_function", "loss_function", "rademacher", "select_parameters", "unflatten",
]
