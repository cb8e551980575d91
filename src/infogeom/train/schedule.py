"""Learning-rate schedule: linear warmup, then cosine decay to ``min_lr`` (as a checkpointable ``LambdaLR``).

For optimizer step s = 0, 1, … (the factor multiplies each parameter group's base lr = ``lr``):
    f(s) = (s + 1) / W                                             for s < W (warmup),
    f(s) = r + (1 − r) · ½ (1 + cos(π · min(1, (s − W) / (S − W))))  otherwise,
with W = warmup_steps, S = max_steps, r = min_lr / lr. The lambda is a closure, so ``LambdaLR.state_dict``
holds only the step counters (plain numbers): a resumed run rebuilds the lambda from its config.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch


def warmup_cosine(warmup_steps: int, max_steps: int, min_ratio: float) -> Callable[[int], float]:
    """The factor f(s) above."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return factor


def build_scheduler(optimizer: torch.optim.Optimizer, warmup_steps: int, max_steps: int, lr: float,
                    min_lr: float) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(warmup_steps, max_steps, min_lr / lr))
