"""Several optimizers on disjoint parameter groups, presented as one ``torch.optim.Optimizer``.

Used for "precondition the matrices, AdamW for the rest" recipes (Muon + AdamW, K-FAC + AdamW). The hybrid's
``param_groups`` is the concatenation of the parts' groups — the very same dict objects — so an LR scheduler
that edits ``group["lr"]`` steers every part, and all parts share ``self.state``, so the inherited
``state_dict``/``load_state_dict`` cover everything. ``load_state_dict`` rebuilds the group dicts, after which
the parts are re-linked. Parts may keep non-tensor-per-parameter state in :meth:`extra_state` (saved under the
``"extra"`` key of the state dict).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.optim import Optimizer

from .preconditioner import Preconditioned, PreconditionerPart, preconditioner_parts
from .step import closure_loss


class HybridOptimizer(Preconditioned, Optimizer):
    """Steps each part in order; ``param_groups``/``state`` are shared with the parts (see module doc). Its
    preconditioner is the block-diagonal sum of the parts' (:mod:`.preconditioner`)."""

    def __init__(self, parts: Sequence[Optimizer]):
        self._parts = list(parts)
        self._sizes = [len(part.param_groups) for part in self._parts]
        super().__init__([g for part in self._parts for g in part.param_groups], {})
        self._link()

    def _link(self) -> None:
        groups = iter(self.param_groups)
        for part, n in zip(self._parts, self._sizes):
            part.param_groups = [next(groups) for _ in range(n)]
            part.state = self.state

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure_loss(closure)
        for part in self._parts:
            part.step()
        return loss

    def _preconditioner_parts(self, names: dict[int, str], batch=None) -> list[PreconditionerPart]:
        return [q for part in self._parts for q in preconditioner_parts(part, names=names, batch=batch)]

    def extra_state(self) -> dict[str, Any]:
        """Optimizer-wide state that is not per parameter (counters, RNG state); override to add some."""
        return {}

    def load_extra_state(self, extra: dict[str, Any]) -> None:
        """Restore what :meth:`extra_state` returned."""

    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        sd["extra"] = self.extra_state()
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._link()
        self.load_extra_state(state_dict.get("extra", {}))
