"""The ground floor: symmetric operators on the parameter tangent space that need no model.

Every metric of the project (Fisher, GGN, Hessian, K-FAC, EK-FAC, an optimizer's preconditioner, the Fubini–Study
metric) is a :class:`CurvatureOperator`; the ones here are built from tensors (dense, diagonal, low-rank,
Kronecker eigen-blocks), from other operators (block-diagonal sums, restrictions, damped and scaled copies), plus
:func:`suspend_captures`, which keeps optimizers' hooks out of curvature computations. This package imports
nothing of the project but :mod:`infogeom.errors`.
"""

from .base import CurvatureOperator, conjugate_gradient, flatten, probe_diagonal, rademacher, unflatten
from .dense import BlockDiagonalOperator, DenseOperator
from .diagonal import DiagonalOperator, LowRankOperator
from .hooks import capture_active, suspend_captures
from .kronecker import (
    KroneckerBlock,
    KroneckerOperator,
    from_eigenbasis,
    pack_bias,
    pi_correction,
    pi_damped_grid,
    symmetric_eigh,
    to_eigenbasis,
    unpack_bias,
)
from .restricted import RestrictedOperator, parameter_index, restrict
from .transforms import CountedOperator, DampedOperator, ScaledOperator

__all__ = [
    "BlockDiagonalOperator", "CountedOperator", "CurvatureOperator", "DampedOperator", "DenseOperator",
    "DiagonalOperator",
    "KroneckerBlock", "KroneckerOperator", "LowRankOperator", "RestrictedOperator", "ScaledOperator",
    "capture_active", "conjugate_gradient", "flatten", "from_eigenbasis", "pack_bias", "parameter_index",
    "pi_correction", "pi_damped_grid", "probe_diagonal", "rademacher", "restrict", "suspend_captures",
    "symmetric_eigh", "to_eigenbasis", "unflatten", "unpack_bias",
]
