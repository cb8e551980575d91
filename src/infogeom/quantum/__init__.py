"""Quantum circuits and their geometry in PyTorch: a batched state-vector simulator, the quantum geometric
tensor (Fubini–Study metric, QFI, Berry curvature), the classical Fisher of measurements, and pull-back
metrics.

Conventions follow PennyLane: wire 0 is the most significant bit, U(θ) = exp(−iθG) (RX(θ) = exp(−iθX/2)),
g = Re Q is ``qml.metric_tensor``'s metric and the QFI is 4g. See ``docs/quantum.md``.
"""

from .ansatz import angle_embedding, basic_entangler, hardware_efficient, qcnn
from .circuit import Circuit, Op
from .gates import GATES
from .geometry import (
    berry_curvature,
    classical_fisher,
    expval_z_jacobian,
    fisher_phase_decomposition,
    fubini_study_metric,
    qgt_from_jacobian,
    quantum_fisher_information,
    quantum_geometric_tensor,
)
from .observables import PauliSum
from .operators import BlockDiagonalOperator, circuit_metric, circuit_metric_operator
from .pullback import output_fisher_pullback, pullback_metric
from .simulator import expval_z, probabilities, sample

__all__ = [
    "GATES", "BlockDiagonalOperator", "Circuit", "Op", "PauliSum", "angle_embedding", "basic_entangler",
    "berry_curvature", "circuit_metric", "circuit_metric_operator", "classical_fisher", "expval_z",
    "expval_z_jacobian", "fisher_phase_decomposition", "fubini_study_metric", "hardware_efficient",
    "output_fisher_pullback", "probabilities", "pullback_metric", "qcnn", "qgt_from_jacobian",
    "quantum_fisher_information", "quantum_geometric_tensor", "sample",
]
