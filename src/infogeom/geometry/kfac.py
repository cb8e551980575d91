"""Kronecker-factor capture for K-FAC and EK-FAC on any model built from ``nn.Linear`` / ``nn.Embedding``.

Math (one layer s = W a, W [d_out, d_in], a batch of N = B·T tokens, losses ℓ_n, mean-token normalization):
the Fisher block of vec(W) (row-major, ``W.reshape(-1)``) is approximated by ``G ⊗ A``, i.e.
``F_W V = G V A``, with

- *expand* (Eschenhagen et al. 2023; every token position an example):
  A = (1/BT) Σ_{b,t} a_bt a_btᵀ,        G = (1/BT) Σ_k Σ_{b,t} ĝ_btk ĝ_btkᵀ;
- *reduce* (sum over the sequence before the outer product):
  A = (1/B) Σ_b ā_b ā_bᵀ (ā_b = mean_t a_bt),   G = (1/BT) Σ_k Σ_b (Σ_t ĝ_btk)(Σ_t ĝ_btk)ᵀ,

where ĝ_btk = ∂(Σ_n U_nkᵀ z_n)/∂s_bt is the gradient at the layer output of the logits z contracted with
an *output-gradient source* U_k [B, T, V] whose per-token second moment Σ_k U_nk U_nkᵀ approximates the
output curvature M_n = diag(p_n) − p_n p_nᵀ:

- ``fisher="mc"``: U_k = (p − e_{y_k})/√S, S = ``mc_samples`` labels y_k ~ p_θ (``generator``): unbiased;
- ``fisher="exact"``: the per-class square root M_n = Σ_c u_nc u_ncᵀ, u_nc = √p_nc (e_c − p_n),
  back-propagated from one position t and class c at a time (all sequences at once): T·V backward passes,
  exactly the expectation of ``"mc"`` (its limit S → ∞);
- ``fisher="type-2"``: curvlinops' ``type-2``: column c back-propagated from all positions at once (V
  backward passes). For models that mix positions (attention) this adds cross-position terms
  Σ_c u_t'c u_t''cᵀ that do not vanish (at initialization they add up coherently and inflate reduce and
  EK-FAC by up to T×); identical to ``"exact"`` when T = 1;
- ``fisher="empirical"``: the gradient of the caller's own backward (observed labels): U = p − e_y.

Biases are folded into A by appending a constant 1 to the input (A is (d_in+1)², the bias is the last
column of the joint [W | b] block). transformers' ``Conv1D`` (GPT-2; y = x W + b with W stored ``[d_in, d_out]``)
is the same linear map: the same A and G, kind ``"conv1d"``, with its gradient matrix oriented as stored,
X = [∇W; ∇b] ``[d_in(+1), d_out]`` (bias the last row) so that F X ≈ A X G (moments in that layout too).
These are exactly curvlinops' ``KFACLinearOperator`` factors with
``separate_weight_and_bias=False`` and a mean-reduced ``CrossEntropyLoss``.

``nn.Embedding`` (weight E [num, dim]; a lookup is a linear layer on one-hot inputs): A is *diagonal*, the
index frequencies A_vv = (1/#lookups) Σ 1[x = v]; G = (1/BT) Σ ĝ ĝᵀ over the lookup outputs (always
expand-style); ``F_E V = diag(A) V G``. A lookup shared by the whole batch (GPT's position embedding
``wpe(arange(T))``, output [T, C] or [1, T, C] broadcast-added to [B, T, C]) would only see the
batch-summed gradient: while capturing, its output is replaced by the equal broadcast view
``expand(B, T, C)``, so that its G and EK-FAC moments use per-sequence gradients like every other layer
(assumes, as in GPT and HF GPT-2, that this output is only broadcast-added).

Tied weights: a parameter shared by a Linear and an Embedding (GPT's ``lm_head.weight`` = ``wte.weight``)
is represented by the *Linear* factors only (the LM head's A = E[h hᵀ], G = E[ĝ ĝᵀ] over the vocabulary);
the embedding-lookup contribution to that block is ignored. It keeps its ``named_parameters`` name
(``wte.weight``).

EK-FAC (George et al. 2018): with eigenbases A = Q_A Λ_A Q_Aᵀ, G = Q_G Λ_G Q_Gᵀ set by
:meth:`KFACCapture.set_eigenbasis`, the capture also accumulates the second moments of the *per-sequence*
gradients in that basis,
    S = (1/BT) Σ_k Σ_b (Q_Gᵀ (Σ_t ĝ_btk a_btᵀ) Q_A)^{∘2}      [d_out, d_in(+1)]
(embedding: (1/BT) Σ_k Σ_b (Σ_{t: x_bt = v} Q_Gᵀ ĝ_btk)^{∘2}, shape [num, dim]), curvlinops' EK-FAC
corrected eigenvalues. Cost per layer: batched matmuls [B, d_out, T] @ [B, T, d_in].

API
---
``KFACCapture(model, approx="expand", fisher="empirical", mc_samples=1, generator=None,
loss_reduction="mean", modules=None, live=False)``: a persistent capture; ``attach()`` / ``detach()`` (or
``with capture:``) install and remove the hooks; ``live=True`` (an optimizer's capture) keeps it silent inside
curvature computations (:mod:`infogeom.operators.hooks`). While attached and ``capture.enabled``, every forward run
with gradients enabled accumulates A; G is accumulated

- from the caller's backward (``fisher="empirical"``; ``loss_reduction="mean"``: the back-propagated loss
  is a mean over the forward's tokens, so gradients are rescaled by the token count; ``"sum"``: a summed
  loss), or
- at the end of the forward itself (``"mc"``, ``"exact"``, ``"type-2"`` or a callable
  ``source(logits [B, T, V]) -> iterable of cotangents U_k``): ``torch.autograd.grad`` from the model
  output to the captured layer outputs with ``retain_graph=True`` (no parameter ``.grad`` is touched; the
  caller's own backward is then ignored for G). ``capture.cotangent_chunk`` cotangents share one vmapped
  backward.

Sums and counts accumulate across forwards (gradient accumulation, several batches) until ``reset()``.
``factors()`` returns ``{module_name: LayerFactors}`` (normalized), ``pop()`` is ``factors()`` then
``reset()`` (for a caller's running average, e.g. ``A_ema.lerp_(new.A, 1 - decay)``).
``set_eigenbasis(name, QA, QG)`` / ``clear_eigenbases()`` switch the EK-FAC moment accumulation on/off per
layer. ``capture.layers`` lists ``LayerInfo(name, kind, module, weight, bias)`` (canonical parameter names).

``kfac_factors(model, batch, approx, fisher, mc_samples, generator, modules)`` and ``ekfac_factors(...)``
(two passes: K-FAC factors, eigendecompositions, then the moments with the same MC labels) compute
everything for one batch in :func:`curvature_mode` (eval: no dropout).
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..errors import InfogeomError
from ..models.gpt import lm_loss
from ..models.linear import LINEAR, linear_dims, linear_kind
from ..operators import capture_active
from .dataset import as_batches
from .fisher import sample_labels
from .functional import Batch, curvature_mode

APPROXIMATIONS = ("expand", "reduce")
KFAC_FISHERS = ("mc", "exact", "type-2", "empirical")
OutputSource = Callable[[torch.Tensor], Iterable[torch.Tensor]]


@dataclass
class LayerInfo:
    """A captured layer: ``kind`` is ``"linear"``, ``"conv1d"`` (transposed weight) or ``"embedding"``;
    parameter names as in ``named_parameters``."""

    name: str
    kind: str
    module: nn.Module
    weight: str
    bias: str | None = None


@dataclass
class LayerFactors:
    """Normalized factors of one layer (module docstring): linear ``A [d_in(+1), d_in(+1)]``, embedding
    ``A [num]``
    (diagonal); ``G [d_out, d_out]``; ``moments`` (EK-FAC, weight-shaped incl. bias column) or None."""

    info: LayerInfo
    A: torch.Tensor
    G: torch.Tensor
    moments: torch.Tensor | None = None
    eigenbasis: tuple[torch.Tensor, torch.Tensor] | None = None  # (QA, QG) the moments refer to

    def oriented(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(L, R)`` with F X ≈ L X R on the layer's gradient matrix X: ``(G, A)`` for a linear layer
        (X = [∇W | ∇b]), ``(diag A, G)`` for an embedding (X = ∇E; L a vector)."""
        return (self.G, self.A) if self.info.kind == LINEAR else (self.A, self.G)


@dataclass
class _State:
    info: LayerInfo
    A: torch.Tensor | None = None
    G: torch.Tensor | None = None
    M: torch.Tensor | None = None
    nA: float = 0.0
    nG: float = 0.0
    nM: float = 0.0
    basis: tuple[torch.Tensor, torch.Tensor] | None = None
    cache: torch.Tensor | None = None  # rotated inputs [B', T', d_in'] / lookup indices [B', T']
    output: torch.Tensor | None = None
    lead: int = 1  # sequences in the layer's output: B, or 1 for a batch-less lookup (wpe)
    seq: int = 1  # positions per sequence (1 for 2-D inputs)


def find_layers(model: nn.Module, modules: Sequence[str] | None = None) -> list[LayerInfo]:
    """Linear (``nn.Linear``, ``Conv1D``) and Embedding modules with trainable weights; tied weights go to the
    linear map (module doc)."""
    names = {id(p): n for n, p in model.named_parameters() if p.requires_grad}
    found = {n: m for n, m in model.named_modules() if linear_kind(m) or isinstance(m, nn.Embedding)}
    if modules is not None:
        missing = [m for m in modules if m not in found]
        if missing:
            raise InfogeomError(f"not a Linear/Embedding module (nn.Linear, Conv1D, nn.Embedding): "
                                f"{', '.join(missing)}")
        found = {n: found[n] for n in modules}
    linear_weights = {id(m.weight) for m in found.values() if linear_kind(m)}
    layers = []
    for name, m in found.items():
        if id(m.weight) not in names:
            continue
        if linear_kind(m):
            bias = names.get(id(m.bias)) if m.bias is not None else None
            layers.append(LayerInfo(name, linear_kind(m), m, names[id(m.weight)], bias))
        elif id(m.weight) not in linear_weights:
            layers.append(LayerInfo(name, "embedding", m, names[id(m.weight)]))
    if not layers:
        raise InfogeomError("the model has no trainable nn.Linear or nn.Embedding layer for K-FAC")
    return layers


def output_cotangents(logits: torch.Tensor, fisher: str, mc_samples: int = 1,
                      generator: torch.Generator | None = None) -> Iterable[torch.Tensor]:
    """Cotangents U_k (shape of ``logits`` [B, ..., V]) with Σ_k U_k U_kᵀ ≈ diag(p) − p pᵀ per token (module
    doc)."""
    p = logits.detach().softmax(dim=-1)
    if fisher == "mc":
        labels = sample_labels(p, mc_samples, generator)
        scale = 1.0 / math.sqrt(mc_samples)
        for k in range(mc_samples):
            U = -p
            U.scatter_add_(-1, labels[..., k:k + 1], torch.ones_like(p[..., :1]))
            yield U * scale
        return
    if fisher not in ("exact", "type-2"):
        raise InfogeomError(f"unknown output-gradient source {fisher!r}; choose one of "
                            f"{', '.join(KFAC_FISHERS)}")
    sqrt_p = p.sqrt()
    flat, sqrt_flat = p.reshape(p.shape[0], -1, p.shape[-1]), sqrt_p.reshape(p.shape[0], -1, p.shape[-1])
    positions = [slice(None)] if fisher == "type-2" else [slice(t, t + 1) for t in range(flat.shape[1])]
    for pos in positions:
        for c in range(p.shape[-1]):
            U = torch.zeros_like(flat)
            U[:, pos] = -flat[:, pos] * sqrt_flat[:, pos, c:c + 1]
            U[:, pos, c] += sqrt_flat[:, pos, c]
            yield U.reshape(p.shape)


def _factor_precision(accumulate: Callable) -> Callable:
    """Accumulate in the weight's dtype (float32 master weights) even inside a ``torch.autocast`` forward (bf16
    training): the captured bf16 activations and gradients are cast up, and the products are not autocast back
    down."""
    @functools.wraps(accumulate)
    def run(self, state: _State, *args, **kwargs):
        with torch.autocast(state.info.module.weight.device.type, enabled=False):
            return accumulate(self, state, *args, **kwargs)
    return run


class KFACCapture:
    """Hooks that accumulate K-FAC factors (and EK-FAC moments) of a model's Linear/Embedding layers.

    See the module docstring for the math and the API. Factors live on the device and dtype of each weight.
    """

    def __init__(self, model: nn.Module, approx: str = "expand", fisher: str | OutputSource = "empirical",
                 mc_samples: int = 1, generator: torch.Generator | None = None, loss_reduction: str = "mean",
                 modules: Sequence[str] | None = None, live: bool = False):
        if approx not in APPROXIMATIONS:
            raise InfogeomError(f"unknown K-FAC approximation {approx!r}; choose one of "
                                f"{', '.join(APPROXIMATIONS)}")
        if isinstance(fisher, str) and fisher not in KFAC_FISHERS:
            raise InfogeomError(f"unknown K-FAC Fisher type {fisher!r}; choose one of "
                                f"{', '.join(KFAC_FISHERS)}")
        if int(mc_samples) < 1:
            raise InfogeomError(f"mc_samples must be a positive integer, got {mc_samples}")
        if loss_reduction not in ("mean", "sum"):
            raise InfogeomError(f"loss_reduction must be 'mean' or 'sum', got {loss_reduction!r}")
        self.model, self.approx, self.fisher = model, approx, fisher
        self.mc_samples, self.generator, self.loss_reduction = int(mc_samples), generator, loss_reduction
        self.layers = find_layers(model, modules)
        self._states = {info.name: _State(info) for info in self.layers}
        self.enabled, self.live = True, live
        self._handles: list = []
        self._active = False
        self._tokens = [0]
        self._batch = 1
        self.cotangent_chunk = 32  # cotangents back-propagated together (vmapped backward); 1 = one at a time

    # ---- lifecycle ------------------------------------------------------------------
    def attach(self) -> KFACCapture:
        if not self._handles:
            self._handles.append(self.model.register_forward_pre_hook(self._begin))
            for info in self.layers:  # before the model's own hook, which may run on the same module
                hook = self._layer_hook(self._states[info.name])
                self._handles.append(info.module.register_forward_hook(hook))
            self._handles.append(self.model.register_forward_hook(self._end))
        return self

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def __enter__(self) -> KFACCapture:
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.detach()

    def reset(self) -> None:
        """Zero the accumulated sums (eigenbases are kept)."""
        for s in self._states.values():
            s.A = s.G = s.M = None
            s.nA = s.nG = s.nM = 0.0

    def set_eigenbasis(self, name: str, QA: torch.Tensor | None, QG: torch.Tensor) -> None:
        """Accumulate EK-FAC moments of layer ``name`` in the basis ``QA`` (None for embeddings) ⊗ ``QG``."""
        state = self._states[name]
        state.basis = (QA, QG)
        state.M, state.nM = None, 0.0

    def clear_eigenbases(self) -> None:
        for s in self._states.values():
            s.basis, s.M, s.nM, s.cache = None, None, 0.0, None

    def factors(self) -> dict[str, LayerFactors]:
        """Normalized factors of every layer that has seen at least one forward and one backward."""
        out = {}
        for name, s in self._states.items():
            if s.A is None or s.G is None:
                continue
            moments = s.M / s.nM if s.M is not None and s.nM else None
            basis = s.basis if moments is not None else None
            out[name] = LayerFactors(s.info, s.A / s.nA, s.G / s.nG, moments, basis)
        return out

    def pop(self) -> dict[str, LayerFactors]:
        out = self.factors()
        self.reset()
        return out

    # ---- hooks ------------------------------------------------------------------
    def _begin(self, module: nn.Module, args: tuple) -> None:
        self._active = self.enabled and torch.is_grad_enabled() and capture_active(self.live)
        self._tokens = [0]  # filled at the end of this forward: number of output positions (tokens)
        x = args[0] if args else None
        self._batch = int(x.shape[0]) if isinstance(x, torch.Tensor) and x.ndim > 1 else 1

    def _layer_hook(self, state: _State):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor | None:
            if not self._active:
                return
            x = inputs[0].detach()
            replaced = None
            if state.info.kind != "embedding":
                self._accumulate_input(state, x)
            else:
                if self._batch > 1 and (x.ndim == 1 or x.shape[0] == 1):  # lookup shared by the batch (wpe)
                    x = x.reshape(1, -1).expand(self._batch, -1)
                    output = replaced = output.reshape(1, *output.shape[-2:]).expand(self._batch, -1, -1)
                self._accumulate_lookup(state, x)
            if self.fisher == "empirical":
                tokens = self._tokens
                scale = (lambda: 1.0) if self.loss_reduction == "sum" else (lambda: float(tokens[0]))
                output.register_hook(lambda g: self._accumulate_grad(state, g.detach(), tokens[0], scale()))
            else:
                state.output = output
            return replaced
        return hook

    def _end(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        if not self._active:
            return
        self._tokens[0] = output.shape[:-1].numel()
        if self.fisher == "empirical":
            return
        states = [s for s in self._states.values() if s.output is not None]
        outs = [s.output for s in states]
        source = iter(self.fisher(output.detach()) if callable(self.fisher)
                      else output_cotangents(output, self.fisher, self.mc_samples, self.generator))
        count = self._tokens[0]
        while chunk := list(itertools.islice(source, self.cotangent_chunk)):
            U = torch.stack(chunk).to(output.dtype)
            grads = torch.autograd.grad(output, outs, grad_outputs=U if len(chunk) > 1 else U[0],
                                        retain_graph=True, allow_unused=True, is_grads_batched=len(chunk) > 1)
            for s, g in zip(states, grads):
                if g is not None:
                    self._accumulate_grad(s, g, count)
            count = 0  # the cotangents' second moments sum to M: count the tokens once per forward
        for s in states:
            s.output = None

    # ---- accumulation ------------------------------------------------------------------
    @staticmethod
    def _add(state: _State, key: str, value: torch.Tensor) -> None:
        cur = getattr(state, key)
        setattr(state, key, value if cur is None else cur.add_(value))

    @_factor_precision
    def _accumulate_input(self, state: _State, x: torch.Tensor) -> None:
        weight = state.info.module.weight
        d_in = linear_dims(state.info.module)[0]
        a = x.reshape(x.shape[0], -1, d_in).to(weight.dtype)  # [B', T', d_in]; 2-D inputs get T' = 1
        state.lead, state.seq = a.shape[0], a.shape[1]
        rows = a.reshape(-1, d_in) if self.approx == "expand" else a.mean(dim=1)
        bias = state.info.bias is not None
        A = torch.empty(d_in + bias, d_in + bias, dtype=weight.dtype, device=weight.device)
        A[:d_in, :d_in] = rows.T @ rows
        if bias:
            s = rows.sum(dim=0)
            A[:d_in, d_in], A[d_in, :d_in], A[d_in, d_in] = s, s, rows.shape[0]
        self._add(state, "A", A)
        state.nA += rows.shape[0]
        if state.basis is not None:
            if bias:
                a = torch.cat([a, a.new_ones(*a.shape[:-1], 1)], dim=-1)
            state.cache = a @ state.basis[0]

    @_factor_precision
    def _accumulate_lookup(self, state: _State, idx: torch.Tensor) -> None:
        weight = state.info.module.weight
        counts = torch.bincount(idx.reshape(-1), minlength=weight.shape[0]).to(weight.dtype)
        self._add(state, "A", counts)
        state.nA += idx.numel()
        idx = idx.reshape(-1, idx.shape[-1])
        state.lead, state.seq = idx.shape
        if state.basis is not None:
            state.cache = idx

    @_factor_precision
    def _accumulate_grad(self, state: _State, g: torch.Tensor, count: float, scale: float = 1.0) -> None:
        """``g``: output gradient(s) of the layer, ``[K, *output.shape]`` for K batched cotangents, taken times
        ``scale`` (applied after the sequence reduction: cheaper than scaling ``g``)."""
        weight = state.info.module.weight
        linear = state.info.kind != "embedding"
        d_out = linear_dims(state.info.module)[1] if linear else weight.shape[1]
        g = g.reshape(-1, state.lead, state.seq, d_out).to(weight.dtype)  # [K, B', T', d_out]
        rows = (g.sum(dim=2) if self.approx == "reduce" and linear else g).reshape(-1, d_out)
        self._add(state, "G", (rows.T @ rows).mul_(scale * scale))
        state.nG += count
        if state.basis is None or state.cache is None:
            return
        if scale != 1.0:
            g = g * scale
        g_rot = g @ state.basis[1]
        if linear:  # in the layout of the layer's gradient matrix (Conv1D: [d_in(+1), d_out])
            layout = "kboi" if state.info.kind == LINEAR else "kbio"
            per_seq = torch.einsum(f"kbto,bti->{layout}", g_rot, state.cache)
        else:
            idx = state.cache.repeat(g.shape[0], 1)
            g_rot = g_rot.reshape(idx.shape[0], -1, d_out)
            per_seq = g_rot.new_zeros(idx.shape[0], weight.shape[0], d_out)
            per_seq.scatter_add_(1, idx[..., None].expand(-1, -1, d_out), g_rot)
        self._add(state, "M", per_seq.square().sum(dim=tuple(range(per_seq.ndim - 2))))
        state.nM += count


def _run(capture: KFACCapture, model: nn.Module, batch: Batch | Iterable[Batch]) -> None:
    """Accumulate the capture over one batch or every batch of an iterable (sums and token counts add up)."""
    with capture, curvature_mode(model), torch.enable_grad():
        for x, y in as_batches(batch):
            logits = model(x)
            if capture.fisher == "empirical":
                params = [p for p in model.parameters() if p.requires_grad]
                torch.autograd.grad(lm_loss(logits, y), params, allow_unused=True)


def kfac_factors(model: nn.Module, batch: Batch | Iterable[Batch], approx: str = "expand", fisher: str = "mc",
                 mc_samples: int = 1,
                 generator: torch.Generator | None = None,
                 modules: Sequence[str] | None = None) -> dict[str, LayerFactors]:
    """K-FAC factors of every Linear/Embedding layer for one batch, or accumulated over an iterable of batches
    (token means over all of them; module docstring for the conventions)."""
    capture = KFACCapture(model, approx, fisher, mc_samples, generator, "mean", modules)
    _run(capture, model, batch)
    return capture.factors()


def eigenbasis(f: LayerFactors) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(QA, QG, eigvals_A, eigvals_G)`` of a layer's factors (``QA`` None for a diagonal embedding A)."""
    eg, QG = torch.linalg.eigh(f.G)
    if f.info.kind == "embedding":
        return None, QG, f.A, eg
    ea, QA = torch.linalg.eigh(f.A)
    return QA, QG, ea, eg


def ekfac_factors(model: nn.Module, batch: Batch | Iterable[Batch], approx: str = "expand", fisher: str = "mc",
                  mc_samples: int = 1,
                  generator: torch.Generator | None = None,
                  modules: Sequence[str] | None = None) -> dict[str, LayerFactors]:
    """K-FAC factors plus EK-FAC moments in their eigenbasis (a second pass over ``batch`` with the same MC
    labels)."""
    batch = as_batches(batch)  # iterated twice
    state = generator.get_state() if generator is not None else None
    capture = KFACCapture(model, approx, fisher, mc_samples, generator, "mean", modules)
    _run(capture, model, batch)
    first = capture.pop()
    for name, f in first.items():
        QA, QG, _, _ = eigenbasis(f)
        capture.set_eigenbasis(name, QA, QG)
    if generator is not None:
        generator.set_state(state)
    _run(capture, model, batch)
    second = capture.factors()
    return {name: LayerFactors(f.info, f.A, f.G, second[name].moments, second[name].eigenbasis)
            for name, f in first.items()}
