"""Training callbacks: subclass :class:`Callback` and override the hooks you need.

Hooks run on every process (``trainer.is_main`` tells rank 0). ``metrics`` dicts may be extended with new
keys; the trainer logs them (``metrics.jsonl``/TensorBoard) after the hooks return.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .trainer import Trainer


class Callback:
    def on_train_start(self, trainer: Trainer) -> None:
        """Before the first step of this run (after a resume: the first step after the checkpoint)."""

    def on_step_end(self, trainer: Trainer, metrics: dict) -> None:
        """After each optimizer step; ``metrics`` has ``step, loss, lr, tokens, train_time``."""

    def on_evaluate(self, trainer: Trainer, metrics: dict) -> None:
        """After each evaluation; ``metrics`` has ``step, val_loss, train_loss_eval, val_ppl, train_time``."""

    def on_train_end(self, trainer: Trainer) -> None:
        """After the last step (also when stopped by max_seconds or Ctrl-C), after the final checkpoint."""
