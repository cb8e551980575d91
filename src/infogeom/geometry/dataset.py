"""Curvature averaged over a data set of batches, with memory bounded by one micro-batch.

The loss the trainer minimizes on a data set of batches b with N_b tokens each is the token-weighted mean
L = Σ_b (N_b/N) L_b (N = Σ_b N_b, L_b the mean token loss of b), so every curvature of L is the token-weighted
mean of the per-batch ones: H = Σ_b (N_b/N) H_b, and the same for the GGN and the Fisher — exactly the operator
of the concatenated batch. :class:`DatasetOperator` applies A V = Σ_m (N_m/N) A_m V over *micro-batches* m
(at most ``micro_batch_size`` sequences each), building each A_m when it is needed and dropping it afterwards
(``cache=False``): memory is one micro-batch's graph, time one operator construction per micro-batch and
product. ``cache=True`` keeps every A_m (construction once; memory of all of them).

K-FAC factors are token means too (A = (1/N) Σ_n a_n a_nᵀ, G likewise): :func:`~infogeom.geometry.kfac.kfac_factors`
accumulates them over any iterable of batches, so a data-set K-FAC needs no wrapper.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from ..errors import InfogeomError
from ..operators import CurvatureOperator
from .functional import Batch


def as_batches(batches: Batch | Iterable[Batch]) -> list[Batch]:
    """One batch ``(x, y)`` → ``[(x, y)]``; an iterable of batches → their list."""
    if isinstance(batches, tuple) and len(batches) == 2 and isinstance(batches[0], torch.Tensor):
        return [batches]
    out = list(batches)
    if not out:
        raise InfogeomError("no batches: a data-set operator needs at least one (x, y) batch")
    return out


def micro_batches(batches: Batch | Iterable[Batch], size: int | None = None) -> list[Batch]:
    """Every batch cut into consecutive pieces of at most ``size`` sequences (None: as they are)."""
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise InfogeomError(f"micro_batch_size must be a positive integer, got {size!r}")
    out = []
    for x, y in as_batches(batches):
        step = size or x.shape[0]
        out += [(x[i:i + step], y[i:i + step]) for i in range(0, x.shape[0], step)]
    return out


class DatasetOperator(CurvatureOperator):
    """``A = Σ_m (N_m/N) A_m`` with ``A_m = build(micro_batch_m, m)`` (module doc); ``loss`` and ``gradient`` are the
    token-weighted means of the parts' (when they have them). ``build`` receives the micro-batch index so that a
    sampled operator (MC Fisher) can draw the same labels at every rebuild."""

    def __init__(self, build: Callable[[Batch, int], CurvatureOperator], batches: Batch | Iterable[Batch],
                 micro_batch_size: int | None = None, cache: bool = False):
        self._build, self.parts = build, micro_batches(batches, micro_batch_size)
        tokens = [y.numel() for _, y in self.parts]
        self.num_tokens = sum(tokens)
        self.weights = [n / self.num_tokens for n in tokens]
        self._cache: list[CurvatureOperator] | None = [] if cache else None
        loss = gradient = None
        for m, (part, w) in enumerate(zip(self.parts, self.weights)):  # one pass: layout, loss and gradient
            op = build(part, m)
            if m == 0:
                self.names, self.shapes, self.dtype, self.device = op.names, op.shapes, op.dtype, op.device
                self._form_costs = {s: op.form_cost(s) for s in (False, True)}
                self._sketch_cost = op.sketch_cost()
            if hasattr(op, "gradient"):
                loss = w * op.loss.detach() + (0 if loss is None else loss)
                gradient = w * op.gradient + (0 if gradient is None else gradient)
            if self._cache is not None:
                self._cache.append(op)
        self.loss, self.gradient = loss, gradient

    def _part(self, m: int) -> CurvatureOperator:
        return self._cache[m] if self._cache is not None else self._build(self.parts[m], m)

    def _weighted_sum(self, apply: Callable[[CurvatureOperator], torch.Tensor]) -> torch.Tensor:
        """Σ_m (N_m/N) apply(A_m), one part at a time (a part may be rebuilt for it)."""
        out = None
        for m, w in enumerate(self.weights):
            term = apply(self._part(m)) * w
            out = term if out is None else out.add_(term)
        return out

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        return self._weighted_sum(lambda part: part._matmat(V))

    def _quadratic_forms(self, V: torch.Tensor, symmetric: bool = False) -> torch.Tensor:
        """vᵀAv = Σ_m (N_m/N) vᵀA_m v, each part by its own (possibly product-free) quadratic forms."""
        return self._weighted_sum(lambda part: part._quadratic_forms(V, symmetric))

    def _sketch(self, V: torch.Tensor) -> torch.Tensor:
        """Σ_m (N_m/N) A_m V, each part by its own (possibly approximate) sketch."""
        return self._weighted_sum(lambda part: part._sketch(V))

    def form_cost(self, symmetric: bool = False) -> float:
        """The first part's (every part is the same kind of operator)."""
        return self._form_costs[symmetric]

    def sketch_cost(self) -> float:
        """The first part's."""
        return self._sketch_cost
