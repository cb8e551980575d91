"""Export circuits to PennyLane (optional dependency; the tests and the benchmark use it as the reference)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from infogeom.errors import InfogeomError
from infogeom.quantum.circuit import Circuit
from infogeom.quantum.observables import PauliSum


def queue_pennylane(circuit: Circuit, params, inputs=None) -> None:
    """Queue the circuit's gates as PennyLane operations (call inside a QNode). Gate angles are
    ``params[op.param]`` (indexing keeps PennyLane's trainability tracking, so shared parameters reach its
    classical Jacobian), ``inputs[op.feature]`` or the constant."""
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


def pennylane_observable(observable: PauliSum):
    """The PauliSum as a PennyLane Hamiltonian (``qml.dot`` of coefficients and Pauli words)."""
    import pennylane as qml

    words = {"X": qml.PauliX, "Y": qml.PauliY, "Z": qml.PauliZ}
    ops = []
    for _, p in observable.terms:
        factors = [words[letter](w) for w, letter in sorted(p.items())]
        ops.append(qml.prod(*factors) if len(factors) > 1 else factors[0] if factors else qml.Identity(0))
    return qml.dot([c for c, _ in observable.terms], ops)


def pennylane_qnode(circuit: Circuit, measure: Callable[[], Any], inputs=None, aux_wire: bool = False,
                    device: str = "default.qubit", **qnode_options):
    """A QNode ``f(params)`` that runs ``circuit`` and returns ``measure()`` (e.g. ``lambda: qml.state()``).
    ``aux_wire=True`` adds one spare wire (index ``n_qubits``) for ``qml.metric_tensor``'s Hadamard tests."""
    try:
        import pennylane as qml
    except ImportError:  # pragma: no cover - depends on the environment
        raise InfogeomError("PennyLane is not installed (pip install pennylane)") from None
    dev = qml.device(device, wires=circuit.n_qubits + int(aux_wire))

    @qml.qnode(dev, **qnode_options)
    def qnode(params):
        queue_pennylane(circuit, params, inputs)
        return measure()

    return qnode
