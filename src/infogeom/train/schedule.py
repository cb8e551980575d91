"""Learning-rate schedules (as checkpointable ``LambdaLR``): linear warmup, then cosine decay to ``min_lr``
(``cosine``, the default) or warmup-stable-decay (``wsd``: constant, then a linear cooldown; Hägele et al. 2024).

For optimizer step s = 0, 1, … (the factor multiplies each parameter group's base lr = ``lr``), with W =
warmup_steps, S = max_steps, r = min_lr / lr, K = round(decay_fraction · S) cooldown steps:
    f(s) = (s + 1) / W                                             for s < W (warmup), then
    cosine: f(s) = r + (1 − r) · ½ (1 + cos(π · min(1, (s − W) / (S − W)))),
    wsd:    f(s) = 1 for s < S − K,   f(s) = r + (1 − r) · (1 − min(1, (s − S + K) / K))   for s ≥ S − K.
WSD's factor before the cooldown does not depend on S, so a run checkpointed in its stable phase at step
S' − K' continues, with ``max_steps = S'``, exactly as a run planned for S' steps from the start (the cooldown
branches of a scaling sweep share one run). The lambda is a closure, so ``LambdaLR.state_dict`` holds only the
step counters (plain numbers): a resumed run rebuilds the lambda from its config.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

SCHEDULES = ("cosine", "wsd")


def warmup_cosine(warmup_steps: int, max_steps: int, min_ratio: float) -> Callable[[int], float]:
    """The cosine factor f(s) above."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return factor


def decay_steps(max_steps: int, decay_fraction: float) -> int:
    """K = round(decay_fraction · max_steps) (halves round up), WSD's cooldown length."""
    return int(math.floor(decay_fraction * max_steps + 0.5))


def warmup_stable_decay(warmup_steps: int, max_steps: int, min_ratio: float,
                        decay_fraction: float) -> Callable[[int], float]:
    """The WSD factor f(s) above."""
    k = decay_steps(max_steps, decay_fraction)
    start = max_steps - k

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if step < start or k == 0:  # decay_fraction 0: constant after the warmup
            return 1.0
        return min_ratio + (1.0 - min_ratio) * (1.0 - min(1.0, (step - start) / k))
    return factor


def build_scheduler(optimizer: torch.optim.Optimizer, warmup_steps: int, max_steps: int, lr: float,
                    min_lr: float, schedule: str = "cosine", decay_fraction: float = 0.2
                    ) -> torch.optim.lr_scheduler.LambdaLR:
    if schedule == "wsd":
        factor = warmup_stable_decay(warmup_steps, max_steps, min_lr / lr, decay_fraction)
    else:
        factor = warmup_cosine(warmup_steps, max_steps, min_lr / lr)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
