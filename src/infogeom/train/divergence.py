"""Divergence detection: a step is bad when its loss or update norm is non-finite or explodes relative to the
running median of the recent steps.

For step t with loss ℓ_t (of the weights before the update) and update norm u_t = ‖θ_t − θ_{t−1}‖ / lr_t (per
unit learning rate, so warmup and decay do not look like growth), with medians m_ℓ, m_u over the last
``window`` accepted steps, the run has diverged when ℓ_t or u_t is not finite, ℓ_t > ``loss_factor``·m_ℓ, or
u_t > ``update_factor``·m_u (the latter once ``min_updates`` steps are known). The same loss test is applied to
a probe of the weights about to be checkpointed, so the checkpoint called "last good" is never a diverged one.
"""

from __future__ import annotations

import math
import statistics
from collections import deque

LOSS_FACTOR = 3.0
UPDATE_FACTOR = 1000.0
WINDOW = 50
MIN_UPDATES = 10
MAX_SKIPS = 10  # consecutive steps skipped for a non-finite gradient before the run counts as diverged


class DivergenceMonitor:
    """Running medians of the accepted steps' losses and update norms; ``check`` says why a step is bad."""

    def __init__(self, loss_factor: float = LOSS_FACTOR, update_factor: float = UPDATE_FACTOR,
                 window: int = WINDOW):
        self.loss_factor, self.update_factor = loss_factor, update_factor
        self.losses: deque[float] = deque(maxlen=window)
        self.updates: deque[float] = deque(maxlen=window)
        self.skips = 0  # consecutive skipped steps

    def check_loss(self, loss: float, what: str = "training loss") -> str | None:
        if not math.isfinite(loss):
            return f"{what} became {loss}"
        if self.losses and loss > self.loss_factor * (m := statistics.median(self.losses)):
            return f"{what} {loss:.4g} is {loss / m:.3g}x the running median {m:.4g}"
        return None

    def check(self, loss: float, update: float | None) -> str | None:
        """Judge one step (``update=None``: the step was skipped); record it when it is good."""
        reason = self.check_loss(loss)
        if reason is None and update is not None:
            if not math.isfinite(update):
                reason = f"update norm became {update}"
            elif len(self.updates) >= min(MIN_UPDATES, self.updates.maxlen) and update > self.update_factor * (
                    m := statistics.median(self.updates)):
                reason = f"update norm per unit lr {update:.4g} is {update / m:.3g}x the running median {m:.4g}"
        if reason is not None:
            return reason
        self.skips = self.skips + 1 if update is None else 0
        if self.skips > MAX_SKIPS:
            return f"the gradient was non-finite for {self.skips} steps in a row"
        self.losses.append(loss)
        if update is not None:
            self.updates.append(update)
        return None

    def state_dict(self) -> dict:
        return {"losses": list(self.losses), "updates": list(self.updates), "skips": self.skips}

    def load_state_dict(self, state: dict) -> None:
        self.losses.extend(float(v) for v in state.get("losses", []))
        self.updates.extend(float(v) for v in state.get("updates", []))
        self.skips = int(state.get("skips", 0))
