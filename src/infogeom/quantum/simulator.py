"""Batched state-vector kernels: apply gates to many states at once, measure probabilities, expectations, samples.

Internally a batch of states is a tensor ``[B, M, D]`` with ``D = 2^n`` amplitudes (basis index
x = Σ_w x_w 2^{n−1−w}, wire 0 most significant, as in PennyLane) and ``M`` extra channels that share the gate
(the state Jacobian sweep uses ``M = 1 + #parameters``). Gate operators carry a leading batch axis of size ``B``
(one angle per state) or 1 (shared). Every kernel is one tensor program over the whole batch; cost per gate is
O(B·M·D) for diagonal and permutation gates and O(B·M·D·2^k) for a dense k-wire gate.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from .gates import Gate


@lru_cache(maxsize=None)
def _bits(n: int) -> np.ndarray:
    """``[D, n]`` bits of every basis index (column w = wire w)."""
    x = np.arange(2**n)
    return (x[:, None] >> (n - 1 - np.arange(n))[None, :]) & 1


@lru_cache(maxsize=None)
def _local_index_np(n: int, wires: tuple[int, ...]) -> np.ndarray:
    """Index of each basis state within the sub-space of ``wires`` (first wire most significant)."""
    b = _bits(n)[:, list(wires)]
    return (b * (1 << np.arange(len(wires))[::-1])).sum(axis=1)


@lru_cache(maxsize=None)
def _perm_gather_np(n: int, wires: tuple[int, ...], perm: tuple[int, ...]) -> np.ndarray:
    """Gather index g with ψ'[y] = ψ[g[y]] for U|j⟩ = |perm[j]⟩ on ``wires``."""
    inv = np.argsort(perm)
    local = _local_index_np(n, wires)
    k = len(wires)
    new_local = inv[local]
    shifts = (n - 1 - np.asarray(wires))
    x = np.arange(2**n)
    for i, s in enumerate(shifts):
        bit_old = (local >> (k - 1 - i)) & 1
        bit_new = (new_local >> (k - 1 - i)) & 1
        x = x ^ ((bit_old ^ bit_new) << s)
    return x


_DEVICE_CACHE: dict[tuple, torch.Tensor] = {}


def _cached(key: tuple, build, device) -> torch.Tensor:
    full = (*key, str(device))
    if full not in _DEVICE_CACHE:
        _DEVICE_CACHE[full] = torch.as_tensor(build(), dtype=torch.long, device=device)
    return _DEVICE_CACHE[full]


def local_index(n: int, wires: tuple[int, ...], device) -> torch.Tensor:
    return _cached(("local", n, wires), lambda: _local_index_np(n, wires), device)


def basis_bits(n: int, device) -> torch.Tensor:
    """``[D, n]`` long tensor of the bits of every basis index."""
    return _cached(("bits", n), lambda: _bits(n), device)


def zero_state(n: int, batch: int, dtype: torch.dtype, device) -> torch.Tensor:
    """|0…0⟩ for a batch: ``[batch, 1, 2^n]``."""
    psi = torch.zeros(batch, 1, 2**n, dtype=dtype, device=device)
    psi[:, 0, 0] = 1
    return psi


def apply_gate(state: torch.Tensor, gate: Gate, operator: torch.Tensor | None, wires: tuple[int, ...],
               n: int) -> torch.Tensor:
    """Apply a gate to ``state [B, M, D]``. ``operator`` is from :func:`gate_operator` / :func:`generator_operator`
    (``[B|1, d]`` phases for "diag", ``[B|1, d, d]`` for "dense", ignored for "perm")."""
    if gate.kind == "perm":
        return state.index_select(-1, _cached(("perm", n, wires, gate.perm),
                                              lambda: _perm_gather_np(n, wires, gate.perm), state.device))
    return apply_operator(state, operator, wires, n, diagonal=gate.kind == "diag")


def apply_operator(state: torch.Tensor, operator: torch.Tensor, wires: tuple[int, ...], n: int,
                   diagonal: bool) -> torch.Tensor:
    """Apply a (not necessarily unitary) operator on ``wires`` to ``state [B, M, D]``."""
    B, M, D = state.shape
    if diagonal:
        return state * operator[:, local_index(n, wires, state.device)][:, None, :]
    if len(wires) == 1:
        w = wires[0]
        s = state.reshape(B, M * 2**w, 2, 2 ** (n - w - 1))
        out = torch.einsum("bij,bljr->blir", operator.expand(B, 2, 2), s)
        return out.reshape(B, M, D)
    k = len(wires)
    axes = [2 + w for w in wires]
    s = state.reshape(B, M, *([2] * n)).movedim(axes, list(range(2 + n - k, 2 + n)))
    shape = s.shape
    out = s.reshape(B, -1, 2**k) @ operator.expand(B, 2**k, 2**k).transpose(-1, -2)
    return out.reshape(shape).movedim(list(range(2 + n - k, 2 + n)), axes).reshape(B, M, D)


# ---- measurement ----------------------------------------------------------------------------------------------
def flat_state(state: torch.Tensor, n: int) -> torch.Tensor:
    """``[..., 2, …, 2]`` or ``[..., D]`` -> ``[..., D]``."""
    return state.reshape(*state.shape[: state.ndim - n], 2**n) if state.shape[-1] == 2 and n > 1 else state


def probabilities(state: torch.Tensor, n: int, wires: tuple[int, ...] | None = None) -> torch.Tensor:
    """Born probabilities |ψ(x)|² ``[..., 2^k]`` of the computational basis on ``wires`` (all when None)."""
    psi = flat_state(state, n)
    p = psi.real**2 + psi.imag**2
    if wires is None or tuple(wires) == tuple(range(n)):
        return p
    idx = local_index(n, tuple(wires), p.device)
    out = torch.zeros(*p.shape[:-1], 2 ** len(wires), dtype=p.dtype, device=p.device)
    return out.index_add(-1, idx, p)


def expval_z(state: torch.Tensor, n: int, wires: tuple[int, ...] | None = None) -> torch.Tensor:
    """⟨Z_w⟩ = Σ_x p(x)(1 − 2x_w) for each wire: ``[..., len(wires)]`` (one matmul)."""
    wires = tuple(range(n)) if wires is None else tuple(wires)
    p = probabilities(state, n)
    signs = 1 - 2 * basis_bits(n, p.device)[:, list(wires)].to(p.dtype)
    return p @ signs


def sample(state: torch.Tensor, n: int, shots: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Computational-basis samples ``[..., shots, n]`` (bits, long) drawn from the Born distribution."""
    p = probabilities(state, n)
    flat = p.reshape(-1, p.shape[-1])
    idx = torch.multinomial(flat.cpu(), shots, replacement=True, generator=generator).to(p.device)
    bits = basis_bits(n, p.device)[idx]
    return bits.reshape(*p.shape[:-1], shots, n)
