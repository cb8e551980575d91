"""Limits checked before anything is allocated: integer ranges, and a memory estimate against free memory.

The estimate (bytes, float32) for a GPT with ``P ≈ V·C·(2 − tied) + T·C + L·12C²`` parameters, a batch of
``B×T`` tokens, ``L`` layers, ``H`` heads and width ``C``:

- parameters, gradients and optimizer state: ``4·P·(2 + optimizer_copies)``;
- activations kept for backward: ``4·B·T·L·(16·C + 2·H·T)`` (the ``H·T²`` attention matrix on the math path);
- logits, their softmax and gradient: ``12·B·T·V``; any stored token batches: ``16`` bytes per token.

It errs high by design (inference and SDPA need less); it only has to refuse sizes that cannot fit, with a
message, instead of letting the allocator fail halfway or the machine swap.
"""

from __future__ import annotations

import os

import torch

from ..errors import InfogeomError

MAX_SEED = 2**63 - 2**20  # the trainer seeds seed + 1 + rank; torch takes 64-bit seeds
OPTIMIZER_COPIES = 3  # AdamW holds 2 moments; K-FAC/EK-FAC factors and Muon buffers are of that order


def check_int(value: int, key: str, low: int, high: int) -> None:
    """``low ≤ value ≤ high`` for a count or size named ``key``."""
    if not low <= value <= high:
        raise InfogeomError(f"{key} must be between {low:,} and {high:,}, got {value:,}")


def available_memory(device: torch.device) -> int:
    """Free bytes on ``device``: CUDA's free memory, else the OS's available memory (and the cgroup's room)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    try:
        with open("/proc/meminfo") as f:
            free = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
        limit, used = (open(f"/sys/fs/cgroup/memory.{k}").read().strip() for k in ("max", "current"))
        if limit.isdigit():
            free = min(free, int(limit) - int(used))
    except (OSError, StopIteration, ValueError):
        pass
    return free


def model_parameters(vocab: int, block: int, n_layer: int, n_embd: int, tied: bool = True) -> int:
    """Parameter count of the GPT shape (biases and norms ignored)."""
    return vocab * n_embd * (1 if tied else 2) + block * n_embd + 12 * n_layer * n_embd**2


def estimate_bytes(model, vocab: int, batch: int, tokens: int, training: bool = True,
                   stored_tokens: int = 0, params: int | None = None) -> int:
    """Bytes (see the module docstring) for ``model`` (a ModelConfig) on a ``batch × tokens`` batch;
    ``params``: the exact parameter count when known (a pretrained checkpoint's), instead of the GPT formula."""
    P = params if params is not None else model_parameters(vocab, model.block_size, model.n_layer, model.n_embd,
                                                           model.tie_weights)
    copies = 2 + OPTIMIZER_COPIES if training else 1
    acts = 4 * batch * tokens * (model.n_layer * (16 * model.n_embd + 2 * model.n_head * tokens) + 3 * vocab)
    return 4 * P * copies + acts + 16 * stored_tokens


def check_memory(need: int, device: torch.device, what: str) -> None:
    """Refuse ``what`` when its estimated ``need`` exceeds the free memory of ``device``."""
    free = available_memory(device)
    if need > free:
        raise InfogeomError(f"{what} needs about {need / 2**30:,.1f} GiB but only {free / 2**30:,.1f} GiB is "
                            f"available on {device}; make it smaller")
