"""Observables that are weighted sums of Pauli strings, O = Σ_t c_t P_t (Hamiltonians, readouts).

A Pauli string acts on a basis state as P|x⟩ = phase(x)|x ⊕ m⟩ with m the X/Y flip mask and
phase(x) = i^{#Y} Π_{w ∈ Z∪Y} (−1)^{x_w}, so ⟨ψ|P|ψ⟩ = Σ_x conj(ψ(x ⊕ m)) phase(x) ψ(x): one gather and one
reduction per term, all terms at once (cost O(B·T·2^n)).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import numpy as np
import torch

from ..errors import InfogeomError
from .simulator import flat_state

_PAULI = {"I": np.eye(2), "X": np.array([[0, 1], [1, 0]]), "Y": np.array([[0, -1j], [1j, 0]]),
          "Z": np.diag([1, -1])}


def parse_pauli(term: str | dict[int, str]) -> dict[int, str]:
    """``"X0 Z2"`` or ``{0: "X", 2: "Z"}`` -> ``{wire: letter}`` (identity factors dropped)."""
    if isinstance(term, dict):
        items = list(term.items())
    else:
        tokens = term.split()
        items = []
        for tok in tokens:
            m = re.fullmatch(r"([IXYZ])(\d+)", tok)
            if not m:
                raise InfogeomError(f"bad Pauli factor {tok!r} in {term!r}; write e.g. 'X0 Z1'")
            items.append((int(m.group(2)), m.group(1)))
    out: dict[int, str] = {}
    for w, letter in items:
        if letter not in _PAULI or w in out:
            raise InfogeomError(f"bad Pauli string {term!r}")
        if letter != "I":
            out[int(w)] = letter
    return out


class PauliSum:
    """O = Σ_t c_t P_t from ``[(c_t, "X0 Z1"), ...]``; ``PauliSum.from_string("Z0 Z1")`` for a single term."""

    def __init__(self, terms: Iterable[tuple[float, str | dict[int, str]]]):
        self.terms = [(float(c), parse_pauli(p)) for c, p in terms]
        if not self.terms:
            raise InfogeomError("an observable needs at least one term")

    @classmethod
    def from_string(cls, pauli: str | dict[int, str], coeff: float = 1.0) -> PauliSum:
        return cls([(coeff, pauli)])

    def _check(self, n: int) -> None:
        for _, p in self.terms:
            if any(w >= n for w in p):
                raise InfogeomError(f"observable acts on wire {max(p)} but the state has {n} qubits")

    def _tables(self, n: int, dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
        """Gather index ``[T, D]`` (x ⊕ m) and phases ``[T, D]``."""
        x = np.arange(2**n)
        idx, ph = [], []
        for _, p in self.terms:
            mask, phase = 0, np.ones(2**n, dtype=complex)
            for w, letter in p.items():
                bit = (x >> (n - 1 - w)) & 1
                if letter in "XY":
                    mask |= 1 << (n - 1 - w)
                if letter in "YZ":
                    phase = phase * (1 - 2 * bit)
                if letter == "Y":
                    phase = phase * 1j
            idx.append(x ^ mask)
            ph.append(phase)
        return (torch.as_tensor(np.stack(idx), device=device),
                torch.as_tensor(np.stack(ph), dtype=dtype, device=device))

    def term_expectations(self, state: torch.Tensor, n: int) -> torch.Tensor:
        """⟨P_t⟩ for every term: ``[..., T]`` (real)."""
        self._check(n)
        psi = flat_state(state, n)
        idx, ph = self._tables(n, psi.dtype, psi.device)
        flipped = psi[..., idx]  # [..., T, D]
        return torch.einsum("...td,td,...d->...t", flipped.conj(), ph, psi).real

    def expectation(self, state: torch.Tensor, n: int) -> torch.Tensor:
        """⟨ψ|O|ψ⟩ ``[...]`` for states ``[..., 2, …, 2]`` or ``[..., 2^n]``."""
        ev = self.term_expectations(state, n)
        return ev @ torch.tensor([c for c, _ in self.terms], dtype=ev.dtype, device=ev.device)

    def matrix(self, n: int) -> torch.Tensor:
        """Dense ``[2^n, 2^n]`` complex128 matrix (for exact diagonalisation of small systems)."""
        self._check(n)
        out = np.zeros((2**n, 2**n), dtype=complex)
        for c, p in self.terms:
            m = np.array([[1.0]])
            for w in range(n):
                m = np.kron(m, _PAULI[p.get(w, "I")])
            out += c * m
        return torch.as_tensor(out)

    def __repr__(self) -> str:
        body = " + ".join(f"{c:g}*" + (" ".join(f"{v}{w}" for w, v in sorted(p.items())) or "I")
                          for c, p in self.terms)
        return f"PauliSum({body})"
