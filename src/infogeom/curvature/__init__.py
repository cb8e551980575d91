"""Curvature diagnostics on any :class:`~infogeom.geometry.CurvatureOperator` (Hessian, GGN, Fisher, K-FAC,
dense): eigenpairs, traces, spectral densities, per-block spectra, sharpness, gradient noise scale, loss
landscapes, and a training-time :class:`CurvatureMonitor`."""

from .blocks import GRANULARITIES, BlockSpectra, block_spectra, js_distance, parameter_blocks
from .density import AdaptiveDensity, SpectralDensity, adaptive_spectral_density, broaden, spectral_density
from .effdim import effective_dimension
from .lanczos import EigenResult, eigsh, generalized_eigsh, lanczos_quadrature
from .landscape import (
    LandscapeSlice,
    filter_normalized_direction,
    interpolate,
    interpolate_models,
    loss_landscape,
    slice_1d,
    slice_2d,
)
from .monitor import MONITOR_QUANTITIES, CurvatureMonitor
from .noise import NoiseScale, gradient_noise_scale, noise_scale
from .operators import OPERATOR_KINDS, DiagonalOperator, RestrictedOperator, build_operator, restrict
from .power import power_iteration
from .sharpness import (
    BallSharpness,
    adam_preconditioner,
    ball_sharpness,
    eos_threshold,
    epsilon_sharpness,
    fisher_rao_sharpness,
    optimizer_sharpness,
    preconditioned_sharpness,
)
from .trace import DiagonalEstimate, TraceEstimate, diagonal, hutchinson, hutchpp, xdiag, xtrace

__all__ = [
    "GRANULARITIES",
    "MONITOR_QUANTITIES",
    "OPERATOR_KINDS",
    "CurvatureMonitor",
    "BallSharpness",
    "BlockSpectra",
    "DiagonalEstimate",
    "DiagonalOperator",
    "EigenResult",
    "LandscapeSlice",
    "NoiseScale",
    "RestrictedOperator",
    "SpectralDensity",
    "TraceEstimate",
    "adam_preconditioner",
    "ball_sharpness",
    "block_spectra",
    "broaden",
    "build_operator",
    "diagonal",
    "effective_dimension",
    "eigsh",
    "eos_threshold",
    "epsilon_sharpness",
    "filter_normalized_direction",
    "fisher_rao_sharpness",
    "generalized_eigsh",
    "gradient_noise_scale",
    "hutchinson",
    "hutchpp",
    "xdiag",
    "xtrace",
    "interpolate",
    "interpolate_models",
    "js_distance",
    "lanczos_quadrature",
    "loss_landscape",
    "noise_scale",
    "optimizer_sharpness",
    "parameter_blocks",
    "power_iteration",
    "preconditioned_sharpness",
    "restrict",
    "slice_1d",
    "slice_2d",
    "spectral_density",
    "adaptive_spectral_density",
    "AdaptiveDensity",
]
