"""Parametrized circuits: a list of gates whose angles come from trainable parameters, classical inputs or
constants.

``Circuit.state(params, inputs)`` runs a whole batch of parameter sets ``[B, P]`` and/or classical inputs
``[B, F]`` as one tensor program (differentiable by autograd). ``Circuit.state_and_jacobian`` adds the exact
state Jacobian J_{k} = ∂ψ/∂θ_k for all P parameters in the same sweep (forward mode): the batch carries
channels [ψ, ∂_1ψ, …]; every gate U acts on all channels (∂(Uφ) = U ∂φ) and a gate with trainable angle k
appends the channel −iG_k ψ (∂U/∂θ = −iGU). Cost O(N_gates · P · 2^n) per parameter set, no Python loop over P
or the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import InfogeomError
from . import simulator as sim
from .gates import MACROS, gate_operator, generator_operator, get_gate


@dataclass(frozen=True)
class Op:
    """One gate. Its angle (parametrized gates only) is ``params[param]``, ``inputs[feature]`` or
    ``angle``."""

    gate: str
    wires: tuple[int, ...]
    param: int | None = None
    feature: int | None = None
    angle: float | None = None


class Circuit:
    """A parametrized circuit on ``n_qubits`` wires starting from |0…0⟩.

    Build with :meth:`add` (or the builders in :mod:`infogeom.quantum.ansatz`); ``n_params`` trainable angles
    and ``n_features`` classical inputs (angle embedding) are counted as gates are added."""

    def __init__(self, n_qubits: int):
        if n_qubits < 1:
            raise InfogeomError(f"a circuit needs at least one qubit, got {n_qubits}")
        self.n_qubits = int(n_qubits)
        self.ops: list[Op] = []
        self.n_params = 0
        self.n_features = 0
        self._compiled: dict[tuple, list] = {}  # gate programs by (#ops, dtype, device)

    # ---- building ------------------------------------------------------------------------------------------
    def add(self, gate: str, wires: int | tuple[int, ...] | list[int], *,
            param: int | tuple[int, ...] | None = None, feature: int | tuple[int, ...] | None = None,
            angle: float | tuple[float, ...] | None = None) -> Circuit:
        """Append ``gate`` on ``wires``. A parametrized gate takes its angle from ``param`` (an existing
        parameter index, to share it), ``feature`` (a classical input index) or ``angle`` (a constant); with
        none of them it gets a new trainable parameter. ``"Rot"`` expands to RZ(φ), RY(θ), RZ(ω) (three
        angles)."""
        wires = (wires,) if isinstance(wires, int) else tuple(int(w) for w in wires)
        names = MACROS.get(gate, (gate,))
        sources = [s for s in (param, feature, angle) if s is not None]
        if len(sources) > 1:
            raise InfogeomError(f"{gate}: give at most one of param, feature, angle")

        def per_angle(v):
            if v is None:
                return [None] * len(names)
            v = tuple(v) if isinstance(v, (tuple, list)) else (v,)
            if len(v) != len(names):
                raise InfogeomError(f"{gate} takes {len(names)} angle(s), got {len(v)}")
            return list(v)

        for name, p, f, a in zip(names, per_angle(param), per_angle(feature), per_angle(angle)):
            self._append(name, wires, p, f, a)
        return self

    def _append(self, name: str, wires: tuple[int, ...], param, feature, angle) -> None:
        g = get_gate(name)
        if len(wires) != g.n_wires or len(set(wires)) != len(wires):
            raise InfogeomError(f"{name} acts on {g.n_wires} distinct wire(s), got {wires}")
        if any(not 0 <= w < self.n_qubits for w in wires):
            raise InfogeomError(f"{name}: wires {wires} outside 0..{self.n_qubits - 1}")
        if not g.parametrized:
            if (param, feature, angle) != (None, None, None):
                raise InfogeomError(f"{name} takes no angle")
            self.ops.append(Op(name, wires))
            return
        if param is None and feature is None and angle is None:
            param = self.n_params
        if param is not None:
            if not 0 <= param <= self.n_params:
                raise InfogeomError(f"parameter index {param} out of range (next new one: {self.n_params})")
            self.n_params = max(self.n_params, param + 1)
        if feature is not None:
            if feature < 0:
                raise InfogeomError(f"feature index must be non-negative, got {feature}")
            self.n_features = max(self.n_features, feature + 1)
        self.ops.append(Op(name, wires, param, feature, None if angle is None else float(angle)))

    # ---- structure -----------------------------------------------------------------------------------------
    @property
    def trainable_ops(self) -> list[int]:
        """Positions (in ``ops``) of gates with a trainable angle, in circuit order."""
        return [i for i, op in enumerate(self.ops) if op.param is not None]

    def op_params(self) -> list[int]:
        """Parameter index of each trainable gate (same order as :attr:`trainable_ops`)."""
        return [self.ops[i].param for i in self.trainable_ops]

    def layers(self) -> list[list[int]]:
        """PennyLane's parametrized-layer grouping of the trainable gates (indices into
        :attr:`trainable_ops`).

        Greedy in circuit order (``CircuitGraph.parametrized_layers``): a gate joins the current layer unless
        one of the layer's gates is among its ancestors (a gate earlier on a shared wire, transitively), which
        starts a new layer. Gates in one layer act on disjoint wires, so their generators commute."""
        last_on_wire: dict[int, int] = {}
        ancestors: list[set[int]] = []
        for i, op in enumerate(self.ops):
            anc: set[int] = set()
            for w in op.wires:
                if w in last_on_wire:
                    j = last_on_wire[w]
                    anc |= ancestors[j] | {j}
            ancestors.append(anc)
            for w in op.wires:
                last_on_wire[w] = i
        layers: list[list[int]] = [[]]
        current_ops: list[int] = []
        for k, i in enumerate(self.trainable_ops):
            if any(j in ancestors[i] for j in current_ops):
                layers.append([])
                current_ops = []
            layers[-1].append(k)
            current_ops.append(i)
        return [layer for layer in layers if layer]

    def __repr__(self) -> str:
        return f"Circuit(n_qubits={self.n_qubits}, gates={len(self.ops)}, params={self.n_params}, " \
               f"features={self.n_features})"

    # ---- simulation ----------------------------------------------------------------------------------------
    def _prepare(self, params, inputs, dtype):
        """Broadcast ``params [P] | [B, P]`` and ``inputs [F] | [B, F]`` to a common batch; pick the complex
        dtype."""
        if params is None:
            if self.n_params:
                raise InfogeomError(f"this circuit has {self.n_params} trainable parameters; pass params")
            real = torch.float64 if dtype in (None, torch.complex128) else torch.float32
            params = torch.zeros(0, dtype=real,
                                 device=None if inputs is None else inputs.device)
        if params.shape[-1] != self.n_params or params.ndim not in (1, 2):
            raise InfogeomError(f"params must have shape [{self.n_params}] or [B, {self.n_params}], "
                                f"got {tuple(params.shape)}")
        if self.n_features and inputs is None:
            raise InfogeomError(f"this circuit embeds {self.n_features} input features; pass inputs")
        if inputs is not None and (inputs.ndim not in (1, 2) or inputs.shape[-1] < self.n_features):
            raise InfogeomError(f"inputs must have shape [F] or [B, F] with F >= {self.n_features}, "
                                f"got {tuple(inputs.shape)}")
        batched = params.ndim == 2 or (inputs is not None and inputs.ndim == 2)
        P = params if params.ndim == 2 else params[None]
        X = None if inputs is None else (inputs if inputs.ndim == 2 else inputs[None])
        B = max(P.shape[0], 1 if X is None else X.shape[0])
        if P.shape[0] not in (1, B) or (X is not None and X.shape[0] not in (1, B)):
            raise InfogeomError(f"params batch {P.shape[0]} and inputs batch {X.shape[0]} do not broadcast")
        if dtype is None:
            dtype = torch.complex128 if params.dtype == torch.float64 else torch.complex64
        real = torch.float64 if dtype == torch.complex128 else torch.float32
        P = P.to(real)
        X = None if X is None else X.to(device=P.device, dtype=real)
        return P, X, B, batched, dtype

    def _angle(self, op: Op, P: torch.Tensor, X: torch.Tensor | None) -> torch.Tensor | None:
        if op.param is not None:
            return P[:, op.param]
        if op.feature is not None:
            return X[:, op.feature]
        if op.angle is not None:
            return torch.full((1,), op.angle, dtype=P.dtype, device=P.device)
        return None

    def _program(self, dtype: torch.dtype, device) -> list:
        """The gate list compiled for simulation: runs of fixed permutation/diagonal gates (CNOT, CZ, SWAP, X,
        Z, S, T, ...) fused into one monomial step (gather index, phases) each; every other gate is its own
        step."""
        key = (len(self.ops), dtype, str(device))
        if key in self._compiled:
            return self._compiled[key]
        steps: list = []
        run: list = []

        def flush():
            if run:
                g, ph = sim.monomial_tables(self.n_qubits, run)
                steps.append(("mono", None if g is None else torch.as_tensor(g, device=device),
                              None if ph is None else torch.as_tensor(ph, dtype=dtype, device=device)))
                run.clear()

        for op in self.ops:
            gate = get_gate(op.gate)
            if not gate.parametrized and gate.kind in ("perm", "diag"):
                run.append((gate, op.wires))
                continue
            flush()
            fixed = None if gate.parametrized else gate_operator(gate, None, dtype, device)
            steps.append(("gate", op, gate, fixed,
                          generator_operator(gate, dtype, device) if op.param is not None else None))
        flush()
        self._compiled[key] = steps
        return steps

    def _run(self, P, X, B, dtype) -> torch.Tensor:
        """Final states ``[B, D]`` (differentiable by autograd)."""
        n, device = self.n_qubits, P.device
        state = sim.zero_state(n, B, dtype, device)
        for step in self._program(dtype, device):
            if step[0] == "mono":
                state = sim.apply_monomial(state, step[1], step[2])
            else:
                _, op, gate, fixed, _ = step
                operator = fixed if fixed is not None else \
                    gate_operator(gate, self._angle(op, P, X), dtype, device)
                state = sim.apply_operator(state, operator, op.wires, n, gate.kind == "diag")
        return state[0]

    @torch.no_grad()
    def _jacobian_sweep(self, P, X, B, dtype) -> torch.Tensor:
        """States and per-gate Jacobians ``[1 + K, B, D]`` (channel 0 = ψ, channel 1 + g = ∂ψ/∂(angle of
        trainable gate g)). Channels are appended when their gate is reached and updated by every later gate;
        two preallocated buffers are written in turn (one memory pass per gate; no autograd)."""
        n, device = self.n_qubits, P.device
        K = len(self.trainable_ops)
        bufs = [torch.empty(1 + K, B, 2**n, dtype=dtype, device=device) for _ in range(2)]
        bufs[0][:1] = sim.zero_state(n, B, dtype, device)
        a = 1
        for step in self._program(dtype, device):
            src, dst = bufs
            if step[0] == "mono":
                sim.apply_monomial(src[:a], step[1], step[2], out=dst[:a])
            else:
                _, op, gate, fixed, gen = step
                operator = fixed if fixed is not None else \
                    gate_operator(gate, self._angle(op, P, X), dtype, device)
                diagonal = gate.kind == "diag"
                sim.apply_operator(src[:a], operator, op.wires, n, diagonal, out=dst[:a])
                if gen is not None:
                    sim.apply_operator(dst[:1], gen, op.wires, n, diagonal, out=dst[a:a + 1])
                    a += 1
            bufs.reverse()
        return bufs[0]

    def state(self, params: torch.Tensor | None = None, inputs: torch.Tensor | None = None,
              dtype: torch.dtype | None = None) -> torch.Tensor:
        """Final state ``[B, 2, …, 2]`` (``[2, …, 2]`` when neither params nor inputs are batched).

        ``dtype`` defaults to complex128 for float64 params, else complex64."""
        P, X, B, batched, dtype = self._prepare(params, inputs, dtype)
        psi = self._run(P, X, B, dtype).reshape(B, *([2] * self.n_qubits))
        return psi if batched else psi[0]

    def state_and_jacobian(self, params: torch.Tensor, inputs: torch.Tensor | None = None,
                           dtype: torch.dtype | None = None, per_gate: bool = False
                           ) -> tuple[torch.Tensor, torch.Tensor]:
        """Flat state ψ ``[B, D]`` and Jacobian J ``[B, P, D]`` with J[b, k] = ∂ψ_b/∂θ_k (unbatched: no B).

        A parameter shared by several gates gets the sum of their contributions (chain rule); with
        ``per_gate=True`` J has one row per trainable gate (:attr:`trainable_ops` order) instead.
        Computed in one forward-mode sweep without autograd (the result is not differentiable)."""
        P, X, B, batched, dtype = self._prepare(params, inputs, dtype)
        out = self._jacobian_sweep(P, X, B, dtype)
        psi, J = out[0], out[1:].transpose(0, 1)
        if not per_gate:
            J = gate_to_param(J, self.op_params(), self.n_params, dim=1)
        return (psi, J) if batched else (psi[0], J[0])

    # ---- measurements --------------------------------------------------------------------------------------
    def probs(self, params=None, inputs=None, wires=None, dtype=None) -> torch.Tensor:
        """Computational-basis probabilities ``[B?, 2^k]`` on ``wires`` (all by default)."""
        return sim.probabilities(self.state(params, inputs, dtype), self.n_qubits, wires)

    def expval(self, observable, params=None, inputs=None, dtype=None) -> torch.Tensor:
        """⟨ψ|O|ψ⟩ for a :class:`~infogeom.quantum.observables.PauliSum` (or anything with
        ``expectation``)."""
        return observable.expectation(self.state(params, inputs, dtype), self.n_qubits)

    def expval_z(self, params=None, inputs=None, wires=None, dtype=None) -> torch.Tensor:
        """⟨Z_w⟩ for each wire ``[B?, len(wires)]`` (the usual quantum-layer readout)."""
        return sim.expval_z(self.state(params, inputs, dtype), self.n_qubits, wires)

    def sample(self, shots: int, params=None, inputs=None, generator: torch.Generator | None = None
               ) -> torch.Tensor:
        """Measurement outcomes ``[B?, shots, n]`` (bits)."""
        return sim.sample(self.state(params, inputs), self.n_qubits, shots, generator)


def gate_to_param(T: torch.Tensor, op_params: list[int], n_params: int, dim: int) -> torch.Tensor:
    """Map a per-trainable-gate axis ``dim`` to the parameter axis: T_param[k] = Σ_{gates g with param k}
    T[g]."""
    if op_params == list(range(n_params)):
        return T
    index = torch.as_tensor(op_params, device=T.device)
    shape = list(T.shape)
    shape[dim] = n_params
    return torch.zeros(shape, dtype=T.dtype, device=T.device).index_add(dim, index, T)
