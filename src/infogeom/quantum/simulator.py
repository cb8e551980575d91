"""Batched state-vector kernels: apply gates to many states at once, measure probabilities, expectations,
samples.

Internally a batch of states is a tensor ``[M, B, D]`` with ``D = 2^n`` amplitudes (basis index
x = Σ_w x_w 2^{n−1−w}, wire 0 most significant, as in PennyLane), ``B`` states and ``M`` channels that share
each state's gates (the state Jacobian sweep uses ``M = 1 + #parameters``; channel-major so a prefix of
channels is contiguous). Gate operators carry a leading batch axis of size ``B`` (one angle per state) or 1
(shared). Every kernel is one tensor program over the whole batch; cost per gate is O(B·M·D) for diagonal
gates and fused runs of fixed permutation/diagonal gates, O(B·M·D·2^k) for a dense k-wire gate.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import torch

from .gates import Gate


@cache
def _bits(n: int) -> np.ndarray:
    """``[D, n]`` bits of every basis index (column w = wire w)."""
    x = np.arange(2**n)
    return (x[:, None] >> (n - 1 - np.arange(n))[None, :]) & 1


@cache
def _local_index_np(n: int, wires: tuple[int, ...]) -> np.ndarray:
    """Index of each basis state within the sub-space of ``wires`` (first wire most significant)."""
    b = _bits(n)[:, list(wires)]
    return (b * (1 << np.arange(len(wires))[::-1])).sum(axis=1)


@cache
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
    """|0…0⟩ for a batch: ``[1, batch, 2^n]``."""
    psi = torch.zeros(1, batch, 2**n, dtype=dtype, device=device)
    psi[0, :, 0] = 1
    return psi


def _finish(result: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    return result if out is None else out.copy_(result)


def apply_monomial(state: torch.Tensor, gather: torch.Tensor | None, phase: torch.Tensor | None,
                   out: torch.Tensor | None = None) -> torch.Tensor:
    """ψ'[y] = phase[y] · ψ[gather[y]] on ``state [M, B, D]`` — a fused run of fixed permutation and diagonal
    gates (a whole CNOT chain costs one gather). ``out``: optional preallocated result (no autograd)."""
    if gather is None:
        return torch.mul(state, phase, out=out)
    state = torch.gather(state, -1, gather.view(1, 1, -1).expand(state.shape), out=out)
    if phase is None:
        return state
    return state.mul_(phase) if out is not None else state * phase


def monomial_tables(n: int, gates: list[tuple[Gate, tuple[int, ...]]]
                    ) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Compose fixed "perm"/"diag" gates (in circuit order) into (gather ``[D]``, phase ``[D]``); None parts
    are identities. After a perm g': g ← g[g'], phase ← phase[g']; after a diagonal d: phase ← d · phase."""
    D = 2**n
    g, ph = np.arange(D), np.ones(D, dtype=complex)
    for gate, wires in gates:
        if gate.kind == "perm":
            gp = _perm_gather_np(n, wires, gate.perm)
            g, ph = g[gp], ph[gp]
        else:
            ph = gate.diag[_local_index_np(n, wires)] * ph
    return (None if np.array_equal(g, np.arange(D)) else g), (None if np.all(ph == 1) else ph)


def apply_operator(state: torch.Tensor, operator: torch.Tensor, wires: tuple[int, ...], n: int,
                   diagonal: bool, out: torch.Tensor | None = None) -> torch.Tensor:
    """Apply a (not necessarily unitary) operator on ``wires`` to ``state [M, B, D]``: ``operator`` is ``[B|1,
    d]`` (diagonal) or ``[B|1, d, d]``, d = 2^len(wires). ``out``: optional preallocated result (no
    autograd)."""
    M, B, D = state.shape
    if diagonal:
        return torch.mul(state, operator[:, local_index(n, wires, state.device)], out=out)
    if len(wires) == 1:
        w = wires[0]
        shape = (M, B, 2**w, 2, 2 ** (n - w - 1))
        if shape[-1] >= 4:  # batched 2×2 @ 2×R matmuls
            res = torch.matmul(operator[:, None], state.reshape(shape),
                               out=None if out is None else out.view(shape))
            return res.reshape(M, B, D) if out is None else out
        # last wires (R ≤ 2): elementwise, matmul would broadcast the operator to every row
        s = state.reshape(shape)
        u = operator.reshape(1, -1, 1, 2, 2, 1)
        s0, s1 = s[:, :, :, 0], s[:, :, :, 1]
        if out is None:
            rows = [s0 * u[..., i, 0, :] + s1 * u[..., i, 1, :] for i in range(2)]
            return torch.stack(rows, dim=3).reshape(M, B, D)
        o = out.view(shape)
        for i in range(2):
            torch.mul(s0, u[..., i, 0, :], out=o[:, :, :, i]).addcmul_(s1, u[..., i, 1, :])
        return out
    k = len(wires)
    axes = [2 + w for w in wires]
    s = state.reshape(M, B, *([2] * n)).movedim(axes, list(range(2 + n - k, 2 + n)))
    shape = s.shape
    res = s.reshape(M, B, -1, 2**k) @ operator.transpose(-1, -2)
    return _finish(res.reshape(shape).movedim(list(range(2 + n - k, 2 + n)), axes).reshape(M, B, D), out)


# ---- measurement -------------------------------------------------------------------------------------------
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
