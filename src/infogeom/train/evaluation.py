"""Evaluation on fixed batches: mean token cross-entropy (nats/token) and perplexity exp(loss).

The batches are drawn once from a generator seeded independently of the training stream, so every evaluation
of a run (and ``infogeom eval`` on its checkpoints) sees the same tokens and never advances the training data.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..data import TokenData
from ..models.gpt import lm_loss

Batch = tuple[torch.Tensor, torch.Tensor]
EVAL_SEED_OFFSET = 1_000_003  # eval generator seed = run seed + this (train stream uses the seed itself)


def eval_batches(data: TokenData, split: str, n_batches: int, batch_size: int, block_size: int,
                 seed: int) -> list[Batch]:
    """``n_batches`` CPU batches ``(x, y)`` ``[batch_size, block_size]`` of ``split``, seeded by ``seed``."""
    gen = torch.Generator().manual_seed(seed + EVAL_SEED_OFFSET + (0 if split == "val" else 1))
    return [data.get_batch(split, batch_size, block_size, gen) for _ in range(n_batches)]


@torch.no_grad()
def mean_loss(model: nn.Module, batches: list[Batch], device: torch.device) -> torch.Tensor:
    """Mean over batches of the mean token cross-entropy, as a 0-d tensor (eval mode; restores train mode)."""
    was_training = model.training
    model.eval()
    try:
        total = torch.zeros((), device=device)
        for x, y in batches:
            total += lm_loss(model(x.to(device)), y.to(device)).float()
        return total / len(batches)
    finally:
        model.train(was_training)
