"""One interface for every metric on the parameter tangent space.

Fisher, GGN, Hessian, K-FAC, EK-FAC, an optimizer's preconditioner and the Fubini–Study metric are all symmetric
P×P operators A. A subclass implements only :meth:`CurvatureOperator._matmat` (``V [P, k] -> A V [P, k]`` on flat
vectors); everything else (matvec on parameter-shaped tensors, dense form, diagonal, trace, scipy adapter, damped
solve, quadratic forms) comes from here, and structured operators override what they can do better: ``_solve``
(an exact ``(A + λI)^{-1} B`` for ``B [P, k]``, e.g. K-FAC's eigenbasis inverse), ``diagonal``, ``trace``,
``to_dense``, ``_quadratic_forms`` (vᵀAv without the product, e.g. the Hessian's from loss values alone).

Flat-vector convention: parameters are flattened in the order of ``operator.names`` and concatenated, so a flat
vector has length ``P = sum(numel)``. ``matvec`` accepts either a flat ``[P]`` tensor or a list of tensors with
``operator.shapes`` and returns the same kind.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch

from ..errors import InfogeomError

TensorList = Sequence[torch.Tensor]


def flatten(tensors: TensorList) -> torch.Tensor:
    """Concatenate tensors into one flat vector ``[sum(numel)]``."""
    return torch.cat([t.reshape(-1) for t in tensors])


def unflatten(vec: torch.Tensor, shapes: Sequence[torch.Size]) -> list[torch.Tensor]:
    """Split a flat ``[P]`` (or ``[P, k]``) tensor into tensors of the given shapes (with trailing ``k``)."""
    sizes = [int(torch.Size(s).numel()) for s in shapes]
    parts = vec.split(sizes, dim=0)
    tail = tuple(vec.shape[1:])
    return [p.reshape(*s, *tail) for p, s in zip(parts, shapes)]


class CurvatureOperator:
    """A symmetric linear operator on the flattened parameter space (P×P).

    Subclasses set ``names``, ``shapes``, ``dtype``, ``device`` (``_set_layout``) and implement ``_matmat``.
    ``max_dense`` guards :meth:`to_dense` against accidental P×P allocations.
    """

    names: list[str]
    shapes: list[torch.Size]
    dtype: torch.dtype
    device: torch.device
    max_dense: int = 20_000

    # ---- to implement -------------------------------------------------------------------------------------------
    def _set_layout(self, params: Mapping[str, torch.Tensor]) -> None:
        """``names``, ``shapes``, ``dtype`` and ``device`` from the parameters the operator acts on."""
        self.names = list(params)
        self.shapes = [p.shape for p in params.values()]
        first = next(iter(params.values()))
        self.dtype, self.device = first.dtype, first.device

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """``V [P, k] -> A V [P, k]``."""
        raise NotImplementedError

    # ---- derived --------------------------------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return int(sum(torch.Size(s).numel() for s in self.shapes))

    @property
    def shape(self) -> tuple[int, int]:
        return (self.dim, self.dim)

    def matmat(self, V: torch.Tensor) -> torch.Tensor:
        """``A V`` for a batch of flat vectors ``V [P, k]``."""
        if V.ndim != 2 or V.shape[0] != self.dim:
            raise InfogeomError(f"matmat expects a [{self.dim}, k] tensor, got {tuple(V.shape)}")
        return self._matmat(V.to(self.dtype))

    def matvec(self, v: torch.Tensor | TensorList) -> torch.Tensor | list[torch.Tensor]:
        """``A v`` for a flat vector ``[P]`` or a list of parameter-shaped tensors (returns the same kind)."""
        if isinstance(v, torch.Tensor):
            if v.shape != (self.dim,):
                raise InfogeomError(f"matvec expects a flat vector of length {self.dim}, got {tuple(v.shape)}")
            return self._matmat(v.to(self.dtype)[:, None])[:, 0]
        return unflatten(self.matvec(flatten(v)), self.shapes)

    def quadratic_forms(self, V: torch.Tensor, symmetric: bool = False) -> torch.Tensor:
        """``[k]``: v_iᵀ A v_i for the columns of ``V [P, k]`` (all a Hutchinson trace needs). ``symmetric=True``
        says the columns are drawn from a sign-symmetric distribution and only their mean matters: an operator
        may then return values exact only in expectation over ±v (the Hessian's one-sided differences)."""
        if V.ndim != 2 or V.shape[0] != self.dim:
            raise InfogeomError(f"quadratic_forms expects a [{self.dim}, k] tensor, got {tuple(V.shape)}")
        return self._quadratic_forms(V.to(self.dtype), symmetric)

    def _quadratic_forms(self, V: torch.Tensor, symmetric: bool = False) -> torch.Tensor:
        """Default: (V ⊙ AV) summed over P, one product per column."""
        return (V * self._matmat(V)).sum(0)

    def form_cost(self, symmetric: bool = False) -> float:
        """Cost of one :meth:`quadratic_forms` column relative to one product column; estimators use it to split a
        budget between products and forms. Here 1 (a product each), or the wrapped operator's (``self.op``: the
        restricted, damped, scaled and counted operators pass its forms through)."""
        inner = getattr(self, "op", None)
        return inner.form_cost(symmetric) if isinstance(inner, CurvatureOperator) else 1.0

    def sketch(self, V: torch.Tensor) -> torch.Tensor:
        """``A V [P, k]`` for a randomized range finder (Hutch++'s Q = orth(A S)): the exact product, or an
        approximation where an operator has a cheaper one (the Hessian's gradient differences on the CPU).
        Estimators that compute tr(QᵀAQ) exactly afterwards stay unbiased for any Q, so only the span matters."""
        if V.ndim != 2 or V.shape[0] != self.dim:
            raise InfogeomError(f"sketch expects a [{self.dim}, k] tensor, got {tuple(V.shape)}")
        return self._sketch(V.to(self.dtype))

    def _sketch(self, V: torch.Tensor) -> torch.Tensor:
        """Default: the product (wrappers pass their operator's sketch through)."""
        return self._matmat(V)

    def sketch_cost(self) -> float:
        """Cost of one :meth:`sketch` column relative to one product column (1, or the wrapped operator's)."""
        inner = getattr(self, "op", None)
        return inner.sketch_cost() if isinstance(inner, CurvatureOperator) else 1.0

    def __matmul__(self, v: torch.Tensor) -> torch.Tensor:
        return self.matmat(v) if v.ndim == 2 else self.matvec(v)

    def _identity_columns(self, chunk: int):
        P = self.dim
        for start in range(0, P, chunk):
            stop = min(P, start + chunk)
            E = torch.zeros(P, stop - start, dtype=self.dtype, device=self.device)
            E[torch.arange(start, stop), torch.arange(stop - start)] = 1
            yield start, stop, E

    def to_dense(self, chunk: int = 256, force: bool = False) -> torch.Tensor:
        """Dense ``[P, P]`` matrix by applying the operator to identity columns (cost: P matvecs)."""
        if self.dim > self.max_dense and not force:
            raise InfogeomError(
                f"to_dense would build a {self.dim}x{self.dim} matrix; pass force=True or use a smaller model"
            )
        return torch.cat([self._matmat(E) for _, _, E in self._identity_columns(chunk)], dim=1)

    def diagonal(self, num_probes: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Diagonal ``[P]``. Exact (P matvecs) if ``num_probes`` is None, else Hutchinson's estimator
        diag(A) ≈ mean_i v_i ⊙ A v_i with Rademacher probes (unbiased, ``num_probes`` matvecs)."""
        if num_probes is None:
            return torch.cat([self._matmat(E)[start:stop].diagonal() for start, stop, E in self._identity_columns(256)])
        return probe_diagonal(self, num_probes, generator)[0]

    def trace(self) -> torch.Tensor:
        """Exact trace (P matvecs unless overridden). Use ``infogeom.curvature`` for stochastic estimates."""
        return self.diagonal().sum()

    def to_scipy(self):
        """A ``scipy.sparse.linalg.LinearOperator`` in float64 (for ARPACK, scipy CG, ...)."""
        from scipy.sparse.linalg import LinearOperator

        def mm(x: np.ndarray) -> np.ndarray:
            X = torch.as_tensor(np.asarray(x, dtype=np.float64).reshape(self.dim, -1), device=self.device)
            return self._matmat(X.to(self.dtype)).to(torch.float64).cpu().numpy()

        return LinearOperator(self.shape, matvec=lambda x: mm(x)[:, 0], matmat=mm, rmatvec=lambda x: mm(x)[:, 0],
                              dtype=np.float64)

    def solve(self, b: torch.Tensor | TensorList, damping: float = 0.0, tol: float = 1e-6,
              maxiter: int | None = None, x0: torch.Tensor | None = None,
              reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor | list[torch.Tensor]:
        """``(A + λI)^{-1} b`` for a flat ``[P]``, a batch ``[P, k]`` or a parameter-shaped list (same kind back).

        Structured operators solve exactly (:meth:`_solve`); the default is conjugate gradient (A PSD or λ large
        enough) stopping at ‖r‖ ≤ ``tol``·‖b‖, started from ``x0`` (warm start), with every product passed
        through ``reduce`` (e.g. an all-reduce over data-parallel ranks) when given.
        """
        if not isinstance(b, torch.Tensor):
            x0 = flatten(x0) if x0 is not None and not isinstance(x0, torch.Tensor) else x0
            return unflatten(self.solve(flatten(b), damping, tol, maxiter, x0, reduce), self.shapes)
        if b.shape[0] != self.dim or b.ndim not in (1, 2):
            raise InfogeomError(f"solve expects [{self.dim}] or [{self.dim}, k], got {tuple(b.shape)}")
        B = b.to(self.dtype)
        X = self._solve(B if B.ndim == 2 else B[:, None], float(damping), tol, maxiter,
                        None if x0 is None else x0.to(self.dtype).reshape(self.dim, -1), reduce)
        return X if b.ndim == 2 else X[:, 0]

    def _solve(self, B: torch.Tensor, damping: float, tol: float, maxiter: int | None,
               x0: torch.Tensor | None, reduce: Callable[[torch.Tensor], torch.Tensor] | None) -> torch.Tensor:
        """``(A + λI)^{-1} B`` for ``B [P, k]`` by CG column by column (override with an exact solve)."""
        def product(v: torch.Tensor) -> torch.Tensor:
            Av = self._matmat(v[:, None])[:, 0]
            return (reduce(Av) if reduce is not None else Av) + damping * v

        cols = [conjugate_gradient(product, B[:, j], None if x0 is None else x0[:, j], tol=tol,
                                   maxiter=maxiter or 10 * self.dim)[0] for j in range(B.shape[1])]
        return torch.stack(cols, dim=1)


def rademacher(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device | str = "cpu",
               generator: torch.Generator | None = None) -> torch.Tensor:
    """Random ±1 entries of ``dtype`` (drawn on CPU from ``generator`` for reproducibility, then moved). Drawn
    in ``dtype`` itself (the same stream for every dtype): no int64 [shape] temporary, which at P = 3.2M and
    k = 108 columns would be 2.8 GB."""
    return torch.randint(0, 2, shape, generator=generator, dtype=dtype).mul_(2).sub_(1).to(device)


def conjugate_gradient(matvec, b: torch.Tensor, x0: torch.Tensor | None = None, tol: float = 1e-6,
                       maxiter: int = 1000) -> tuple[torch.Tensor, int]:
    """Solve A x = b for SPD A given as a function; stops at ‖r‖ ≤ tol·‖b‖. Returns (x, iterations)."""
    x = torch.zeros_like(b) if x0 is None else x0.clone()
    r = b - matvec(x) if x0 is not None else b.clone()
    p = r.clone()
    rs = r @ r
    stop = (tol * torch.linalg.vector_norm(b)) ** 2
    it = 0
    while it < maxiter and rs > stop:
        Ap = matvec(p)
        alpha = rs / (p @ Ap)
        x = x + alpha * p
        r = r - alpha * Ap
        rs_new = r @ r
        p = r + (rs_new / rs) * p
        rs = rs_new
        it += 1
    return x, it


def probe_diagonal(op: CurvatureOperator, num_probes: int, generator: torch.Generator | None = None,
                   chunk: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Hutchinson's diagonal (Bekas et al. 2007): mean and per-entry standard error of v ⊙ A v over
    ``num_probes`` Rademacher probes (``chunk`` per product). Unbiased; cost ``num_probes`` matvecs."""
    total = torch.zeros(op.dim, dtype=op.dtype, device=op.device)
    total_sq = torch.zeros_like(total)
    for start in range(0, num_probes, chunk):
        V = rademacher((op.dim, min(chunk, num_probes - start)), op.dtype, op.device, generator)
        D = V * op._matmat(V)
        total += D.sum(1)
        total_sq += (D * D).sum(1)
    m = int(num_probes)
    mean = total / m
    var = (total_sq - m * mean**2).clamp_min(0) / max(m - 1, 1)
    return mean, (var / m).sqrt()
