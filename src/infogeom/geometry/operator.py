"""One interface for every metric on the parameter tangent space.

Fisher, GGN, Hessian, K-FAC, EK-FAC and the Fubini–Study metric are all symmetric P×P operators A. A subclass
implements only :meth:`CurvatureOperator._matmat` (``V [P, k] -> A V [P, k]`` on flat vectors); everything else
(matvec on parameter-shaped tensors, dense form, diagonal, trace, scipy adapter, damped solve) comes from here, and
structured operators override what they can do better (e.g. K-FAC's exact inverse, a dense matrix's diagonal).

Flat-vector convention: parameters are flattened in the order of ``operator.names`` and concatenated, so a flat
vector has length ``P = sum(numel)``. ``matvec`` accepts either a flat ``[P]`` tensor or a list of tensors with
``operator.shapes`` and returns the same kind.
"""

from __future__ import annotations

from collections.abc import Sequence

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

    Subclasses set ``names``, ``shapes``, ``dtype``, ``device`` and implement ``_matmat``.
    ``max_dense`` guards :meth:`to_dense` against accidental P×P allocations.
    """

    names: list[str]
    shapes: list[torch.Size]
    dtype: torch.dtype
    device: torch.device
    max_dense: int = 20_000

    # ---- to implement -------------------------------------------------------------------------------------------
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
        V = rademacher((self.dim, num_probes), self.dtype, self.device, generator)
        return (V * self._matmat(V)).mean(dim=1)

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
              maxiter: int | None = None) -> torch.Tensor | list[torch.Tensor]:
        """``(A + λI)^{-1} b`` by conjugate gradient (A must be PSD or λ large enough). Same kind as ``b``."""
        if not isinstance(b, torch.Tensor):
            return unflatten(self.solve(flatten(b), damping, tol, maxiter), self.shapes)
        x, _ = conjugate_gradient(lambda v: self.matvec(v) + damping * v, b.to(self.dtype), tol=tol,
                                  maxiter=maxiter or 10 * self.dim)
        return x


def rademacher(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device | str = "cpu",
               generator: torch.Generator | None = None) -> torch.Tensor:
    """Random ±1 entries (drawn on CPU from ``generator`` for reproducibility, then moved)."""
    return (torch.randint(0, 2, shape, generator=generator) * 2 - 1).to(dtype=dtype, device=device)


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


class DenseOperator(CurvatureOperator):
    """A given symmetric matrix ``[P, P]`` as an operator (for tests, small models and quantum metrics)."""

    def __init__(self, matrix: torch.Tensor, shapes: Sequence[torch.Size] | None = None,
                 names: Sequence[str] | None = None):
        if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
            raise InfogeomError(f"DenseOperator needs a square matrix, got {tuple(matrix.shape)}")
        self.matrix = matrix
        self.shapes = list(shapes) if shapes is not None else [torch.Size([matrix.shape[0]])]
        self.names = list(names) if names is not None else [f"p{i}" for i in range(len(self.shapes))]
        self.dtype, self.device = matrix.dtype, matrix.device
        if self.dim != matrix.shape[0]:
            n = matrix.shape[0]
            raise InfogeomError(f"shapes add up to {self.dim} entries but the matrix is {n}x{n}")

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        return self.matrix @ V

    def to_dense(self, chunk: int = 256, force: bool = False) -> torch.Tensor:
        return self.matrix

    def diagonal(self, num_probes: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.matrix.diagonal() if num_probes is None else super().diagonal(num_probes, generator)

    def solve(self, b, damping: float = 0.0, tol: float = 1e-6, maxiter: int | None = None):
        if not isinstance(b, torch.Tensor):
            return unflatten(self.solve(flatten(b), damping), self.shapes)
        eye = torch.eye(self.dim, dtype=self.dtype, device=self.device)
        return torch.linalg.solve(self.matrix + damping * eye, b.to(self.dtype))
