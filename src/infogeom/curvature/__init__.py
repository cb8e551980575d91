"""Curvature diagnostics on any :class:`~infogeom.geometry.CurvatureOperator` (Hessian, GGN, Fisher, K-FAC, dense):
eigenpairs, traces, spectral densities, per-block spectra, sharpness, gradient noise scale, loss landscapes, and a
training-time :class:`CurvatureMonitor`."""

from .density import SpectralDensity, broaden, spectral_density
from .lanczos import EigenResult, eigsh, generalized_eigsh, lanczos_quadrature
from .operators import OPERATOR_KINDS, DiagonalOperator, RestrictedOperator, build_operator, restrict
from .power import power_iteration
from .trace import DiagonalEstimate, TraceEstimate, diagonal, hutchinson, hutchpp

__all__ = [
    "OPERATOR_KINDS", "DiagonalEstimate", "DiagonalOperator", "EigenResult", "RestrictedOperator",
    "SpectralDensity", "TraceEstimate", "broaden", "build_operator", "diagonal", "eigsh", "generalized_eigsh",
    "hutchinson", "hutchpp", "lanczos_quadrature", "power_iteration", "restrict", "spectral_density",
]
