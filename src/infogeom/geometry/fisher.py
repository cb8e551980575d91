"""Fisher information and generalized Gauss–Newton of a language model, matrix-free (``torch.func`` jvp/vjp).

Convention (the one of the training loss): a batch has N = B·T tokens n, with logits z_n = f_θ(x)_n ∈ R^V,
probabilities p_n = softmax(z_n) and Jacobians J_n = ∂z_n/∂θ ∈ R^{V×P}. Every operator here is

    A = (1/N) Σ_n J_nᵀ M_n J_n,        M_n ⪰ 0 a V×V output-space curvature,

and differs only in M_n:

- ``FisherOperator(kind="exact")``: M_n = diag(p_n) − p_n p_nᵀ = E_{y~p_n}[r rᵀ], r = p_n − e_y (the true
  Fisher; for softmax cross-entropy it equals the GGN of :func:`~infogeom.models.lm_loss`, mean token loss);
- ``kind="mc"``: M_n = (1/S) Σ_s r_ns r_nsᵀ with r_ns = p_n − e_{y_s}, y_s ~ p_n drawn from ``generator``
  (``S = mc_samples``; unbiased for the exact Fisher);
- ``kind="empirical"``: M_n = r_n r_nᵀ with the observed label, r_n = p_n − e_{y_n}. Then
  A = (1/N) Σ_n g_n g_nᵀ with g_n = J_nᵀ r_n = ∇_θ[−log p(y_n | x_≤n)] the *per-token* gradient (one example =
  one token; not the per-sequence gradients of :func:`per_example_gradients`).
- ``GGNOperator``: M_n = ∂²ℓ/∂z_n² of an arbitrary loss ℓ(logits, y) by forward-over-reverse autodiff (for
  ``lm_loss`` this is (1/N)(diag p_n − p_n p_nᵀ), i.e. the exact Fisher, computed independently).

Cost of ``A V`` for V [P, k]: one forward-mode pass (jvp, k tangents batched by ``vmap``) and one reverse pass
(vjp, k cotangents batched) — about 2–3 gradients per column, O(P·k) memory, never a P×P matrix. Construction
runs one forward and keeps the vjp graph. All evaluation is in :func:`curvature_mode` (eval, math attention).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn as nn
from torch.func import functional_call, grad, jvp, vjp, vmap

from ..errors import InfogeomError
from ..models.gpt import lm_loss
from ..operators import CurvatureOperator
from .functional import Batch, curvature_mode, logits_function, select_parameters

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
FISHER_KINDS = ("exact", "mc", "empirical")


def per_example_gradients(model: nn.Module, batch: Batch, names: Sequence[str] | None = None,
                          loss: Loss = lm_loss, chunk_size: int | None = None) -> torch.Tensor:
    """Per-sequence gradients ``G [B, P]``: row b = ∇_θ loss(model(x_b), y_b), the mean token loss of
    sequence b.

    One example = one sequence (rows average to the batch gradient of the mean loss, all sequences having the
    same length). Flat in :func:`select_parameters` order. ``torch.func.vmap(grad)``; ``chunk_size`` bounds
    memory (vmap over at most that many sequences at once). Cost ≈ one batch gradient, memory O(B·P).
    """
    x, y = batch
    params = {n: p.detach() for n, p in select_parameters(model, names).items()}

    def seq_loss(p: dict[str, torch.Tensor], xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        return loss(functional_call(model, p, (xb[None],), strict=False), yb[None])

    with curvature_mode(model), torch.no_grad():  # no outer graph through parameters outside ``names``
        g = vmap(grad(seq_loss), in_dims=(None, 0, 0), chunk_size=chunk_size)(params, x, y)
    return torch.cat([g[n].reshape(x.shape[0], -1) for n in params], dim=1)


class OutputCurvatureOperator(CurvatureOperator):
    """``A = Σ_n J_nᵀ M_n J_n`` (Jacobian of the logits w.r.t. the selected parameters) for a subclass-defined
    output-space product :meth:`_output_matmat` ``U [k, B, T, V] -> M U``, which carries the normalization.

    Attributes after construction: ``logits`` [B, T, V], ``probs``, ``loss`` (``loss_fn(logits, y)``, default
    the mean token cross-entropy) and ``gradient`` (flat [P], its gradient), all detached.
    """

    def __init__(self, model: nn.Module, batch: Batch, names: Sequence[str] | None = None,
                 chunk_size: int | None = None, loss_fn: Loss = lm_loss):
        params = select_parameters(model, names)
        self._set_layout(params)
        self.model, self.batch, self.chunk_size = model, batch, chunk_size
        # a copy: the operator stays the metric at construction when an optimizer later updates the model in
        # place (parameters outside ``names`` are read from the model as they are)
        self._params = {n: p.detach().clone() for n, p in params.items()}
        self._f = logits_function(model, batch[0])
        with curvature_mode(model):
            logits, self._vjp = vjp(self._f, self._params)
        self.logits = logits.detach()
        self.probs = self.logits.softmax(dim=-1)
        y = batch[1]
        self.num_tokens = y.numel()
        self.loss = loss_fn(self.logits, y)
        with torch.no_grad():
            self.gradient = self._pullback(grad(lambda z: loss_fn(z, y))(self.logits)[None])[:, 0]

    def _output_matmat(self, U: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _pushforward(self, V: torch.Tensor) -> torch.Tensor:
        """``J V``: flat ``[P, k]`` -> ``[k, B, T, V]`` (jvp, vmapped over the k columns when k > 1)."""
        tangents = dict(zip(self.names, [t.T.reshape(-1, *s) for t, s in zip(V.split(
            [s.numel() for s in self.shapes]), self.shapes)]))
        push = lambda t: jvp(self._f, (self._params,), (t,))[1]  # noqa: E731
        with curvature_mode(self.model):
            if V.shape[1] == 1:
                return push({n: t[0] for n, t in tangents.items()})[None]
            return vmap(push, chunk_size=self.chunk_size)(tangents)

    def _pullback(self, U: torch.Tensor) -> torch.Tensor:
        """``Jᵀ U``: ``[k, B, T, V]`` -> flat ``[P, k]`` (vjp on the stored graph, vmapped when k > 1)."""
        if U.shape[0] == 1:
            g = {n: t[None] for n, t in self._vjp(U[0])[0].items()}
        else:
            (g,) = vmap(self._vjp, chunk_size=self.chunk_size)(U)
        return torch.cat([g[n].reshape(U.shape[0], -1) for n in self.names], dim=1).T

    def _output_factor(self) -> torch.Tensor | None:
        """``R [B, T, V, K]`` with M_n = R_n R_nᵀ (normalization included), if the subclass has one."""
        return None

    def to_dense(self, chunk: int = 256, force: bool = False) -> torch.Tensor:
        """Dense ``A``. With an output factor of K columns per token and N·K < P, as ``Γ Γᵀ`` where
        Γ = [J_nᵀ R_nk] [P, N·K] comes from N·K vjps; otherwise P products (base class)."""
        R = self._output_factor()
        if R is None or R[..., 0, :].numel() >= self.dim:
            return super().to_dense(chunk, force)
        if self.dim > self.max_dense and not force:
            raise InfogeomError(f"to_dense would build a {self.dim}x{self.dim} matrix; pass force=True or "
                                "use a smaller model")
        B, T, V, K = R.shape
        # row j of ``cols``: token j // K, factor column j % K
        cols = R.reshape(B * T, V, K).permute(0, 2, 1).reshape(B * T * K, V)
        blocks = []
        with torch.no_grad():
            for start in range(0, cols.shape[0], chunk):
                j = torch.arange(start, min(start + chunk, cols.shape[0]), device=cols.device)
                U = cols.new_zeros(j.numel(), B * T, V)
                U[torch.arange(j.numel(), device=cols.device), j // K] = cols[j]
                blocks.append(self._pullback(U.reshape(-1, B, T, V)))
        gamma = torch.cat(blocks, dim=1)
        return gamma @ gamma.T

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        # no_grad: torch.func transforms still differentiate, but parameters outside ``names`` that require
        # grad (e.g. LayerNorm gains) must not record an outer autograd graph on the result
        with torch.no_grad():
            return self._pullback(self._output_matmat(self._pushforward(V)))


class FisherOperator(OutputCurvatureOperator):
    """Fisher information of the next-token distribution, normalized like the mean token loss (module doc).

    ``kind``: ``"exact"`` (true Fisher = GGN of lm_loss), ``"mc"`` (``mc_samples`` labels per token sampled
    from p_θ with ``generator``; drawn once at construction, so the operator is a fixed PSD matrix) or
    ``"empirical"`` (observed labels, per-token gradients).
    """

    def __init__(self, model: nn.Module, batch: Batch, kind: str = "exact", mc_samples: int = 1,
                 generator: torch.Generator | None = None, names: Sequence[str] | None = None,
                 chunk_size: int | None = None):
        if kind not in FISHER_KINDS:
            raise InfogeomError(f"unknown Fisher kind {kind!r}; choose one of {', '.join(FISHER_KINDS)}")
        if kind == "mc" and int(mc_samples) < 1:
            raise InfogeomError(f"mc_samples must be a positive integer, got {mc_samples}")
        super().__init__(model, batch, names, chunk_size)
        self.kind = kind
        self.residuals = None  # [B, T, V, S]: r = p − e_y, so M_n = R_n R_nᵀ / S
        if kind != "exact":
            labels = (batch[1][..., None] if kind == "empirical"
                      else sample_labels(self.probs, mc_samples, generator))
            self.residuals = self.probs[..., None] - nn.functional.one_hot(labels, self.probs.shape[-1]).to(
                self.dtype).transpose(-1, -2)

    def _output_factor(self) -> torch.Tensor:
        if self.residuals is None:  # per-class square root: column c = √p_c (e_c − p)
            sqrt_p = self.probs.sqrt()
            R = torch.diag_embed(sqrt_p) - self.probs[..., :, None] * sqrt_p[..., None, :]
            return R / self.num_tokens ** 0.5
        return self.residuals / (self.residuals.shape[-1] * self.num_tokens) ** 0.5

    def _output_matmat(self, U: torch.Tensor) -> torch.Tensor:
        if self.residuals is None:
            p = self.probs
            return (p * U - p * (p * U).sum(-1, keepdim=True)) / self.num_tokens
        R = self.residuals
        coeff = torch.einsum("btvs,kbtv->kbts", R, U)
        return torch.einsum("btvs,kbts->kbtv", R, coeff) / (R.shape[-1] * self.num_tokens)


class GGNOperator(OutputCurvatureOperator):
    """Generalized Gauss–Newton ``G = Jᵀ (∂²ℓ/∂z²) J`` of ``loss(logits, y)`` (default ``lm_loss``).

    The output Hessian is applied by forward-over-reverse autodiff on the logits (no closed form), so for
    ``lm_loss`` it is an independent computation of the exact Fisher.
    """

    def __init__(self, model: nn.Module, batch: Batch, names: Sequence[str] | None = None,
                 loss: Loss = lm_loss, chunk_size: int | None = None):
        super().__init__(model, batch, names, chunk_size, loss)
        y = batch[1]
        grad_out = grad(lambda z: loss(z, y))
        self._out_hvp = vmap(lambda u: jvp(grad_out, (self.logits,), (u,))[1])

    def _output_matmat(self, U: torch.Tensor) -> torch.Tensor:
        return self._out_hvp(U)


def sample_labels(probs: torch.Tensor, num_samples: int,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """``num_samples`` labels per position from ``probs [..., V]`` -> long ``[..., num_samples]`` (drawn on
    CPU from ``generator`` for reproducibility across devices). A row that is no distribution (non-finite,
    negative or all zero: a diverged model) is drawn uniformly instead of failing; the optimizers' finiteness
    guards then skip the step."""
    flat = probs.detach().reshape(-1, probs.shape[-1]).to("cpu", torch.float64)
    bad = ~(torch.isfinite(flat) & (flat >= 0)).all(-1, keepdim=True) | (flat.sum(-1, keepdim=True) <= 0)
    flat = flat.masked_fill(bad, 1.0)
    labels = torch.multinomial(flat, int(num_samples), replacement=True, generator=generator)
    return labels.reshape(*probs.shape[:-1], int(num_samples)).to(probs.device)


