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

Vocabulary-scale memory (``token_chunk``): the logits side is [N, V] per column. Chunked, the model is split at its
output layer z = head(h), h = body(x): J v = ∂head·(J_body v, v_head), so one body jvp gives ∂h [k, N, d], and
per chunk c of tokens the head's jvp, M_c and the head's vjp give ∂h-cotangents and the head's gradient; one
body vjp finishes Jᵀ M J v. Nothing [N, V] is held, only chunk × V blocks (benchmarks/hf_memory.py).
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

import torch
import torch.nn as nn
from torch.func import functional_call, grad, grad_and_value, jvp, vjp, vmap

from ..errors import InfogeomError
from ..models.gpt import lm_loss
from ..operators import CurvatureOperator
from .functional import Batch, curvature_mode, logits_function, select_parameters

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
FISHER_KINDS = ("exact", "mc", "empirical")
#: ``token_chunk="auto"`` chunks over tokens when one [N, V] block of logits would exceed this many bytes.
TOKEN_BLOCK_BYTES = 2 ** 26


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


class TokenPart(NamedTuple):
    """The output-side data of a set of tokens: ``logits``/``probs`` [*s, V], targets ``y`` [*s] and sampled or
    observed ``labels`` [*s, S] (None for the exact Fisher / GGN); ``s`` is [B, T] or a chunk [1, n]."""

    logits: torch.Tensor
    probs: torch.Tensor
    y: torch.Tensor
    labels: torch.Tensor | None


def output_head(model: nn.Module) -> str | None:
    """Qualified name of the module whose output is the logits: ``lm_head`` or transformers'
    ``get_output_embeddings()`` (of the model or of a wrapper's ``.model``); None if there is none."""
    modules = {id(m): n for n, m in model.named_modules() if n}
    for owner in (model, getattr(model, "model", None)):
        get = getattr(owner, "get_output_embeddings", None)
        head = get() if callable(get) else getattr(owner, "lm_head", None)
        if isinstance(head, nn.Module) and id(head) in modules:
            return modules[id(head)]
    return None


def _accumulate(total: dict[str, torch.Tensor], part: dict[str, torch.Tensor]) -> None:
    """``total += part`` per key, in place (the first part is taken as it is)."""
    for n, g in part.items():
        total[n] = total[n].add_(g) if n in total else g


@contextlib.contextmanager
def _head_removed(model: nn.Module, path: str) -> Iterator[None]:
    """The module at ``path`` replaced by the identity (the model then returns the hidden states)."""
    parent_path, _, attr = path.rpartition(".")
    parent = model.get_submodule(parent_path)
    head = getattr(parent, attr)
    setattr(parent, attr, nn.Identity())
    try:
        yield
    finally:
        setattr(parent, attr, head)


class OutputCurvatureOperator(CurvatureOperator):
    """``A = Σ_n J_nᵀ M_n J_n`` (Jacobian of the logits w.r.t. the selected parameters) for a subclass-defined
    output-space product :meth:`_output_matmat` ``U [k, *s, V] -> M U`` on a :class:`TokenPart`, which carries
    the normalization.

    ``token_chunk`` bounds the [tokens, V] blocks (module doc): None computes every product on all N tokens at
    once (construction keeps ``logits`` and ``probs`` [B, T, V]); an integer n splits the model at its output
    layer (:func:`output_head`: body x -> hidden states h [B, T, d], head h -> logits), runs the body's jvp and
    vjp once per product and the head, softmax curvature and head vjp over chunks of at most n // k tokens for k
    columns, so no tensor holds more than n·V logits (``logits``/``probs`` are then None); ``"auto"`` (default)
    chunks only when one [N, V] block would exceed ``TOKEN_BLOCK_BYTES``, into blocks of that size. Chunking
    needs a loss that is a token mean (as ``lm_loss``): the chunk loss is weighted by its share of tokens.

    Attributes after construction: ``loss`` (``loss_fn(logits, y)``), ``gradient`` (flat [P], its gradient),
    ``token_chunk`` (the tokens per chunk, None when unchunked), ``logits`` and ``probs``, all detached.
    """

    def __init__(self, model: nn.Module, batch: Batch, names: Sequence[str] | None = None,
                 chunk_size: int | None = None, loss_fn: Loss = lm_loss, token_chunk: int | str | None = "auto"):
        params = select_parameters(model, names)
        self._set_layout(params)
        self.model, self.batch, self.chunk_size, self._loss_fn = model, batch, chunk_size, loss_fn
        # a copy: the operator stays the metric at construction when an optimizer later updates the model in
        # place (parameters outside ``names`` are read from the model as they are)
        self._params = {n: p.detach().clone() for n, p in params.items()}
        y = batch[1]
        self.num_tokens = y.numel()
        self.token_chunk = self._resolve_chunk(token_chunk)
        if self.token_chunk is not None and not self._split(model, batch[0]):
            if token_chunk != "auto":
                raise InfogeomError(f"token_chunk: the logits of {type(model).__name__} are not its output layer "
                                    f"{self._head_path!r} applied to the hidden states (post-processing?); use "
                                    "token_chunk=None")
            self.token_chunk = None
        self.logits = self.probs = None
        if self.token_chunk is None:
            self._f = logits_function(model, batch[0])
            with curvature_mode(model):
                logits, self._vjp = vjp(self._f, self._params)
            self.logits = logits.detach()
            self.probs = self.logits.softmax(dim=-1)
            self._whole = TokenPart(self.logits, self.probs, y, self._draw_labels(self.probs, y))
            self.labels = self._whole.labels
            self.loss = loss_fn(self.logits, y)
            with torch.no_grad():
                self.gradient = self._pullback(grad(lambda z: loss_fn(z, y))(self.logits)[None])[:, 0]
            return
        labels, gh, ghead, loss = [], torch.zeros_like(self._h), {}, 0
        with torch.no_grad():
            for part, sl in self._token_parts(1):
                weight = part.y.numel() / self.num_tokens
                z, head_vjp = vjp(self._head_fn, self._h[:, sl], self._head_primals)
                part = part._replace(logits=z, probs=z.softmax(-1))
                labels.append(self._draw_labels(part.probs, part.y))
                g_z, value = grad_and_value(lambda z, y=part.y, w=weight: loss_fn(z, y) * w)(z)
                loss = loss + value
                g_h, g_head = head_vjp(g_z)
                gh[:, sl] = g_h
                _accumulate(ghead, g_head)
            self.labels = None if labels[0] is None else torch.cat(labels, dim=1).reshape(*y.shape, -1)
            self.loss = loss
            self.gradient = self._assemble(self._body_pullback(gh[None]), {n: g[None] for n, g in ghead.items()},
                                           1)[:, 0]

    # ---- path selection and the body/head split ----------------------------------------------------------------
    def _resolve_chunk(self, token_chunk: int | str | None) -> int | None:
        head = output_head(self.model)
        if token_chunk == "auto":
            vocab = getattr(self.model.get_submodule(head), "out_features", None) if head else None
            itemsize = torch.empty((), dtype=self.dtype).element_size()
            if vocab is None or self.num_tokens * vocab * itemsize <= TOKEN_BLOCK_BYTES:
                return None
            token_chunk = max(1, TOKEN_BLOCK_BYTES // (vocab * itemsize))
        if token_chunk is None:
            return None
        if isinstance(token_chunk, bool) or not isinstance(token_chunk, int) or token_chunk < 1:
            raise InfogeomError(f"token_chunk must be a positive integer, 'auto' or None, got {token_chunk!r}")
        if head is None:
            raise InfogeomError(f"token_chunk needs a model with an output layer (lm_head or "
                                f"get_output_embeddings()); {type(self.model).__name__} has none")
        self._head_path = head
        return token_chunk

    def _split(self, model: nn.Module, x: torch.Tensor) -> bool:
        """Body (x -> h, vjp graph kept) and head (h, head parameters -> logits) functions; False (nothing
        kept) unless the logits are the head applied to the hidden states (no post-processing) on a few tokens."""
        path, head = self._head_path, model.get_submodule(self._head_path)
        under = lambda n: n.startswith(path + ".")  # noqa: E731
        aliases: dict[int, list[str]] = {}
        for n, p in model.named_parameters(remove_duplicate=False):
            aliases.setdefault(id(p), []).append(n)
        model_params = dict(model.named_parameters())
        body_names = {}  # selected name -> a path of the same tensor outside the head
        for n in self.names:
            outside = [a for a in aliases[id(model_params[n])] if not under(a)]
            if outside:
                body_names[n] = outside[0]
        by_id = {id(p): n for n, p in model_params.items()}
        self._head_sel = {local: by_id[id(p)] for local, p in head.named_parameters() if by_id[id(p)] in self._params}
        head_const = {local: p.detach() for local, p in head.named_parameters() if local not in self._head_sel}
        self._head_primals = {local: self._params[n] for local, n in self._head_sel.items()}
        self._head_fn = lambda h, hp: functional_call(head, {**head_const, **hp}, (h,))  # noqa: E731
        self._body_names = body_names

        def body(p: dict[str, torch.Tensor], inputs: torch.Tensor = x) -> torch.Tensor:
            with _head_removed(model, path):
                return functional_call(model, {body_names[n]: t for n, t in p.items()}, (inputs,), strict=False)

        self._body, self._body_primals = body, {n: self._params[n] for n in body_names}
        with curvature_mode(model):
            few = x[:1, :4]
            with torch.no_grad():
                want, got = model(few), self._head_fn(body(self._body_primals, few), self._head_primals)
            if want.shape != got.shape or not torch.allclose(got, want, rtol=1e-4, atol=1e-5 * float(
                    want.abs().max())):
                return False
            if self._body_primals:
                h, self._body_vjp = vjp(body, self._body_primals)
            else:
                with torch.no_grad():
                    h, self._body_vjp = body({}), None
        self._h = h.detach().reshape(1, self.num_tokens, h.shape[-1])
        return True

    def _token_parts(self, k: int) -> Iterator[tuple[TokenPart, slice]]:
        """Chunks of at most ``token_chunk // k`` tokens (flat order): the part without logits, and its slice."""
        y, labels, step = self.batch[1].reshape(1, -1), getattr(self, "labels", None), max(1, self.token_chunk // k)
        labels = None if labels is None else labels.reshape(1, self.num_tokens, -1)
        for start in range(0, self.num_tokens, step):
            sl = slice(start, min(start + step, self.num_tokens))
            yield TokenPart(None, None, y[:, sl], None if labels is None else labels[:, sl]), sl

    def _draw_labels(self, probs: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
        """Labels [*s, S] of the tokens of a part for a sampled output curvature (None: none needed)."""
        return None

    def _body_pullback(self, G: torch.Tensor) -> dict[str, torch.Tensor]:
        """Body vjp of hidden-state cotangents ``[k, 1, N, d]`` -> selected body parameters' ``[k, *shape]``."""
        if self._body_vjp is None:
            return {}
        G = G.reshape(G.shape[0], *self.batch[1].shape, self._h.shape[-1])
        if G.shape[0] == 1:
            return {n: t[None] for n, t in self._body_vjp(G[0])[0].items()}
        return vmap(self._body_vjp, chunk_size=self.chunk_size)(G)[0]

    def _assemble(self, body: dict[str, torch.Tensor], head: dict[str, torch.Tensor], k: int) -> torch.Tensor:
        """Flat ``[P, k]`` from body and head parameter gradients ``[k, *shape]`` (a tied parameter gets both);
        consumes the dicts, so each part is freed once written."""
        out = self._h.new_zeros(k, self.dim)
        offsets = dict(zip(self.names, itertools.accumulate([s.numel() for s in self.shapes], initial=0)))
        for grads, name_of in ((body, lambda n: n), (head, self._head_sel.get)):
            while grads:
                name, g = grads.popitem()
                start = offsets[name_of(name)]
                out[:, start:start + g[0].numel()] += g.reshape(k, -1)
        return out.T

    def _chunked_matmat(self, V: torch.Tensor) -> torch.Tensor:
        """``Σ_chunks J_cᵀ M_c J_c V``: body jvp once, then per chunk head jvp -> M -> head vjp, then body vjp."""
        k = V.shape[1]
        tangents = self._tangents(V)
        body_t = {n: tangents[n] for n in self._body_names}
        head_t = {local: tangents[n] for local, n in self._head_sel.items()}
        if body_t:
            push = lambda t: jvp(self._body, (self._body_primals,), (t,))[1]  # noqa: E731
            with curvature_mode(self.model):
                dh = vmap(push, chunk_size=self.chunk_size)(body_t).reshape(k, 1, self.num_tokens, -1)
        else:
            dh = self._h.new_zeros(k, *self._h.shape)
        gh, ghead = torch.zeros_like(dh), {}
        for part, sl in self._token_parts(k):
            h = self._h[:, sl]
            head_push = lambda d, t, h=h: jvp(self._head_fn, (h, self._head_primals), (d, t))  # noqa: E731
            z, dz = vmap(head_push, out_dims=(None, 0))(dh[:, :, sl], head_t)
            part = part._replace(logits=z, probs=z.softmax(-1))
            _, head_vjp = vjp(self._head_fn, h, self._head_primals)
            g_h, g_head = vmap(head_vjp)(self._output_matmat(dz, part))
            gh[:, :, sl] = g_h
            _accumulate(ghead, g_head)
        return self._assemble(self._body_pullback(gh), ghead, k)

    def _tangents(self, V: torch.Tensor) -> dict[str, torch.Tensor]:
        """Flat ``[P, k]`` -> per-parameter ``[k, *shape]``."""
        return dict(zip(self.names, [t.T.reshape(-1, *s) for t, s in zip(V.split(
            [s.numel() for s in self.shapes]), self.shapes)]))

    # ---- the unchunked path ------------------------------------------------------------------------------------
    def _output_matmat(self, U: torch.Tensor, part: TokenPart) -> torch.Tensor:  # pragma: no cover - abstract
        """``M U`` for the tokens of ``part``: ``U [k, *s, V]`` -> ``[k, *s, V]``."""
        raise NotImplementedError

    def _pushforward(self, V: torch.Tensor) -> torch.Tensor:
        """``J V``: flat ``[P, k]`` -> ``[k, B, T, V]`` (jvp, vmapped over the k columns when k > 1)."""
        tangents = self._tangents(V)
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
            if self.token_chunk is not None:
                return self._chunked_matmat(V)
            return self._pullback(self._output_matmat(self._pushforward(V), self._whole))

    def __repr__(self) -> str:
        path = ("unchunked" if self.token_chunk is None
                else f"token chunks of {self.token_chunk} (head {self._head_path!r})")
        return (f"{type(self).__name__}(dim={self.dim}, tokens={self.num_tokens}, {path}, {self.dtype}, "
                f"{self.device})")


class FisherOperator(OutputCurvatureOperator):
    """Fisher information of the next-token distribution, normalized like the mean token loss (module doc).

    ``kind``: ``"exact"`` (true Fisher = GGN of lm_loss), ``"mc"`` (``mc_samples`` labels per token sampled
    from p_θ with ``generator``; drawn once at construction, so the operator is a fixed PSD matrix) or
    ``"empirical"`` (observed labels, per-token gradients); ``labels`` [B, T, S] keeps them. ``token_chunk``: see
    :class:`OutputCurvatureOperator`.
    """

    def __init__(self, model: nn.Module, batch: Batch, kind: str = "exact", mc_samples: int = 1,
                 generator: torch.Generator | None = None, names: Sequence[str] | None = None,
                 chunk_size: int | None = None, token_chunk: int | str | None = "auto"):
        if kind not in FISHER_KINDS:
            raise InfogeomError(f"unknown Fisher kind {kind!r}; choose one of {', '.join(FISHER_KINDS)}")
        if kind == "mc" and int(mc_samples) < 1:
            raise InfogeomError(f"mc_samples must be a positive integer, got {mc_samples}")
        self.kind, self._mc = kind, (int(mc_samples), generator)
        super().__init__(model, batch, names, chunk_size, token_chunk=token_chunk)

    def _draw_labels(self, probs: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
        if self.kind == "exact":
            return None
        return y[..., None] if self.kind == "empirical" else sample_labels(probs, *self._mc)

    def _output_factor(self) -> torch.Tensor | None:
        if self.probs is None:  # chunked: the base class's P products
            return None
        if self.labels is None:  # per-class square root: column c = √p_c (e_c − p)
            sqrt_p = self.probs.sqrt()
            R = torch.diag_embed(sqrt_p) - self.probs[..., :, None] * sqrt_p[..., None, :]
            return R / self.num_tokens ** 0.5
        residuals = self.probs[..., None] - nn.functional.one_hot(self.labels, self.probs.shape[-1]).to(
            self.dtype).transpose(-1, -2)  # [B, T, V, S]: r = p − e_y, so M_n = R_n R_nᵀ / S
        return residuals / (residuals.shape[-1] * self.num_tokens) ** 0.5

    def _output_matmat(self, U: torch.Tensor, part: TokenPart) -> torch.Tensor:
        p = part.probs
        pu = (p * U).sum(-1, keepdim=True)
        if part.labels is None:
            return (p * U - p * pu) / self.num_tokens
        labels = part.labels.expand(U.shape[0], *part.labels.shape)
        coeff = pu - U.gather(-1, labels)  # r_sᵀ u with r_s = p − e_{y_s}: [k, *s, S]
        out = p * coeff.sum(-1, keepdim=True) - torch.zeros_like(U).scatter_add_(-1, labels, coeff)
        return out / (labels.shape[-1] * self.num_tokens)


class GGNOperator(OutputCurvatureOperator):
    """Generalized Gauss–Newton ``G = Jᵀ (∂²ℓ/∂z²) J`` of ``loss(logits, y)`` (default ``lm_loss``).

    The output Hessian is applied by forward-over-reverse autodiff on the logits (no closed form), so for
    ``lm_loss`` it is an independent computation of the exact Fisher. With ``token_chunk`` (see
    :class:`OutputCurvatureOperator`) the loss must be a mean over tokens: a chunk's Hessian is that of
    (n_chunk/N)·loss(chunk).
    """

    def __init__(self, model: nn.Module, batch: Batch, names: Sequence[str] | None = None,
                 loss: Loss = lm_loss, chunk_size: int | None = None, token_chunk: int | str | None = "auto"):
        super().__init__(model, batch, names, chunk_size, loss, token_chunk)

    def _output_matmat(self, U: torch.Tensor, part: TokenPart) -> torch.Tensor:
        weight = part.y.numel() / self.num_tokens
        grad_out = grad(lambda z: self._loss_fn(z, part.y) * weight)
        return vmap(lambda u: jvp(grad_out, (part.logits,), (u,))[1])(U)


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


