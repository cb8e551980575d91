"""Circuit builders: angle embedding, hardware-efficient ansatz, basic entangler, QCNN.

Each builder appends to ``circuit`` when given (e.g. after an embedding) and returns the circuit.
"""

from __future__ import annotations

from ..errors import InfogeomError
from .circuit import Circuit

ROTATIONS = {"X": "RX", "Y": "RY", "Z": "RZ"}


def _circuit(n_qubits: int, circuit: Circuit | None) -> Circuit:
    if circuit is None:
        return Circuit(n_qubits)
    if circuit.n_qubits != n_qubits:
        raise InfogeomError(f"circuit has {circuit.n_qubits} qubits, the builder was asked for {n_qubits}")
    return circuit


def _check_layers(n_layers: int) -> None:
    if n_layers < 1:
        raise InfogeomError(f"n_layers must be a positive integer, got {n_layers}")


def angle_embedding(circuit: Circuit, rotation: str = "Y", wires: list[int] | None = None,
                    first_feature: int = 0) -> Circuit:
    """Encode classical features as angles: R_rotation(x_{first_feature + j}) on ``wires[j]`` (all wires by
    default), as PennyLane's ``AngleEmbedding``."""
    if rotation not in ROTATIONS:
        raise InfogeomError(f"rotation must be one of X, Y, Z, got {rotation!r}")
    for j, w in enumerate(range(circuit.n_qubits) if wires is None else wires):
        circuit.add(ROTATIONS[rotation], w, feature=first_feature + j)
    return circuit


def hardware_efficient(n_qubits: int, n_layers: int, rotations: tuple[str, ...] = ("RY", "RZ"),
                       entangler: str = "chain", circuit: Circuit | None = None) -> Circuit:
    """Per layer: each rotation in ``rotations`` on every qubit (all RY, then all RZ), then CNOTs on
    neighbours (``"chain"``: (0,1), (1,2), …; ``"ring"`` adds (n−1, 0)). Parameters: ``n_layers ·
    len(rotations) · n``, ordered layer, rotation, qubit."""
    _check_layers(n_layers)
    if entangler not in ("chain", "ring"):
        raise InfogeomError(f"entangler must be 'chain' or 'ring', got {entangler!r}")
    c = _circuit(n_qubits, circuit)
    pairs = [(q, q + 1) for q in range(n_qubits - 1)]
    if entangler == "ring" and n_qubits > 2:
        pairs.append((n_qubits - 1, 0))
    for _ in range(n_layers):
        for rot in rotations:
            for q in range(n_qubits):
                c.add(rot, q)
        for a, b in pairs:
            c.add("CNOT", (a, b))
    return c


def basic_entangler(n_qubits: int, n_layers: int, rotation: str = "RX", circuit: Circuit | None = None
                    ) -> Circuit:
    """PennyLane's ``BasicEntanglerLayers``: one rotation per qubit, then a CNOT ring (one CNOT for 2
    qubits)."""
    _check_layers(n_layers)
    c = _circuit(n_qubits, circuit)
    if n_qubits == 2:
        pairs = [(0, 1)]
    else:
        pairs = [(q, (q + 1) % n_qubits) for q in range(n_qubits)] if n_qubits > 2 else []
    for _ in range(n_layers):
        for q in range(n_qubits):
            c.add(rotation, q)
        for a, b in pairs:
            c.add("CNOT", (a, b))
    return c


def qcnn(n_qubits: int, circuit: Circuit | None = None) -> Circuit:
    """Quantum convolutional network: repeat {convolution on neighbouring pairs (even, then odd pairs),
    pooling that halves the active qubits} until one qubit is left; read it out on wire ``n_qubits − 1``.

    Convolution block on (a, b): RY(a) RY(b) CNOT(a, b) RY(a) RY(b) — its 4 angles are shared by all blocks of
    a level (translation invariance). Pooling (a → b, a dropped): CRZ(a, b), X(a), CRX(a, b) — 2 shared
    angles."""
    if n_qubits < 2:
        raise InfogeomError(f"a QCNN needs at least 2 qubits, got {n_qubits}")
    c = _circuit(n_qubits, circuit)
    active = list(range(n_qubits))
    while len(active) > 1:
        conv = list(range(c.n_params, c.n_params + 4))
        pairs = [(active[i], active[i + 1]) for i in range(0, len(active) - 1, 2)]
        shifted = [(active[i], active[i + 1]) for i in range(1, len(active) - 1, 2)]
        for a, b in pairs + shifted:
            c.add("RY", a, param=conv[0]).add("RY", b, param=conv[1]).add("CNOT", (a, b))
            c.add("RY", a, param=conv[2]).add("RY", b, param=conv[3])
        pool = [c.n_params, c.n_params + 1]
        for a, b in pairs:
            c.add("CRZ", (a, b), param=pool[0]).add("PauliX", a).add("CRX", (a, b), param=pool[1])
        active = [b for _, b in pairs] + ([active[-1]] if len(active) % 2 else [])
    return c
