"""Export circuits to PennyLane (optional dependency, used by the tests and the benchmark as the reference)."""

from __future__ import annotations

from .circuit import Circuit


def queue_pennylane(circuit: Circuit, params, inputs=None) -> None:
    """Queue the circuit's gates as PennyLane operations (call inside a QNode). ``params`` / ``inputs`` are
    indexable arrays (e.g. ``pennylane.numpy`` with ``requires_grad``); gate ``k``'s angle is ``params[op.param]``,
    ``inputs[op.feature]`` or the constant, so PennyLane's classical Jacobian sees shared parameters."""
    import pennylane as qml

    for op in circuit.ops:
        gate = getattr(qml, op.gate)
        if op.param is not None:
            gate(params[op.param], wires=list(op.wires))
        elif op.feature is not None:
            gate(inputs[op.feature], wires=list(op.wires))
        elif op.angle is not None:
            gate(op.angle, wires=list(op.wires))
        else:
            gate(wires=list(op.wires))
