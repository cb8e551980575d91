"""Shared machinery of the Kronecker-factored optimizers (:class:`~.kfac.KFAC`, :class:`~.ekfac.EKFAC`).

Curvature comes from :class:`infogeom.geometry.kfac.KFACCapture` (hooks on the model; no second capture
here). Per preconditioned layer the gradient is a matrix X with Fisher block F X ≈ L X R:

- ``nn.Linear``: X = [∇W | ∇b] ``[d_out, d_in(+1)]``, L = G (output-gradient factor), R = A (input factor);
- transformers' ``Conv1D`` (weight stored ``[d_in, d_out]``): X = [∇W; ∇b] ``[d_in(+1), d_out]``, L = A, R = G;
- ``nn.Embedding``: X = ∇E ``[num, dim]``, L = diag(A) (index frequencies, a vector), R = G.

Schedule (k = number of completed steps): the capture is enabled only for the forward(s) before a step with
k ≡ 0 (mod ``cov_every``) or k a power of two below ``cov_every`` (:func:`due`); that step pops the fresh
factors, all-reduces them over DDP ranks and folds them into running averages L ← d·L + (1−d)·L_new (d =
``factor_decay``; the first factors are taken as they are). Steps due for ``inv_every`` eigendecompose L =
Q_L diag(e_L) Q_Lᵀ and R likewise (``eigh`` in the factors' dtype, retried in float64 on failure;
eigenvalues clamped at 0; vector factors are their own eigenvalues). A matrix side wider than
``max_basis_dim`` is kept as its diagonal (a vector factor: identity basis, no ``eigh``, no rotation), the
cheap one-sided treatment of wide layers: on the default GPT (sides 128–513) ``max_basis_dim=256`` removes
the d³ decompositions and d²-per-column rotations of the 384/512-wide sides, which are most of the cost.
Under DDP the decompositions are spread over the ranks (greedy by d³ cost) and broadcast, so every rank
holds identical bases. With ``fisher="mc"`` the capture samples labels y ~ p_θ from a seeded generator and
back-propagates them from the logits to the layer outputs at the end of the forward (``autograd.grad`` with
``retain_graph``, no parameter gradients): about half a backward, on cov steps only. ``fisher="empirical"``
reuses the training backward (free, but not the Fisher).

Safety: a non-finite gradient, non-finite factors or a failed/non-finite decomposition skip the whole step
(the parameters are untouched), multiply the damping by ``damping_boost`` and warn; the damping then relaxes
back towards its configured value by ×0.9 per successful step. Parameters not preconditioned (norms, biases
of skipped layers, embeddings, the LM head when skipped) are updated by an AdamW inside the same optimizer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.optim import Optimizer

from ..errors import InfogeomError
from ..geometry.kfac import KFACCapture, LayerInfo
from ..models.linear import CONV1D, linear_dims, linear_kind
from ..operators import KroneckerBlock, KroneckerOperator, pack_bias, symmetric_eigh, unpack_bias
from .distributed import all_reduce_mean_, broadcast_, rank, world_size
from .hybrid import HybridOptimizer
from .params import HEAD_NAMES, adamw_groups, linear_layers
from .preconditioner import Preconditioned, PreconditionerPart, group_lr
from .safety import all_finite, warn_skip
from .step import closure_loss


@dataclass
class Layer:
    """A preconditioned layer: its parameters and the orientation of its gradient matrix (module doc)."""

    info: LayerInfo
    weight: nn.Parameter
    bias: nn.Parameter | None

    @property
    def params(self) -> list[nn.Parameter]:
        return [self.weight] if self.bias is None else [self.weight, self.bias]

    def grad_matrix(self) -> torch.Tensor:
        """X = [∇W | ∇b] (zeros for a missing gradient)."""
        def grad(p: nn.Parameter) -> torch.Tensor:
            return p.grad if p.grad is not None else torch.zeros_like(p)

        return pack_bias(grad(self.weight), None if self.bias is None else grad(self.bias), self.bias_row)

    @property
    def bias_row(self) -> bool:
        return self.info.kind == CONV1D

    def split(self, X: torch.Tensor) -> list[torch.Tensor]:
        """Inverse of :meth:`grad_matrix`: ``[W-shaped, b-shaped]``."""
        return unpack_bias(X, self.bias is not None, self.bias_row)


def due(step: int, every: int) -> bool:
    """Refresh schedule: every ``every`` steps, and at the powers of two before that (steps 0, 1, 2, 4, 8,
    …), so the curvature tracks the fast early changes of a fresh network."""
    return step % every == 0 or (step < every and step & (step - 1) == 0)


def select_layers(model: nn.Module, head: bool | str = "auto", embeddings: bool = False,
                  max_factor_dim: int = 2048, head_names=HEAD_NAMES) -> list[str]:
    """Module names to precondition: every ``nn.Linear`` whose factor sides are ≤ ``max_factor_dim`` (+1 for
    a bias); the head (``head_names``) when ``head`` is True, or with ``"auto"`` when it is not tied to an
    embedding; with ``embeddings``, untied ``nn.Embedding`` modules whose width is ≤ ``max_factor_dim``."""
    embedded = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    chosen = {}
    for name, m in linear_layers(model, include_head=head is not False, head_names=head_names).items():
        is_head = name.rsplit(".", 1)[-1] in head_names
        if is_head and head == "auto" and id(m.weight) in embedded:
            continue
        if max(linear_dims(m)) <= max_factor_dim:
            chosen[name] = m
    taken = {id(m.weight) for m in chosen.values()}
    head_weights = {id(m.weight) for n, m in model.named_modules()
                    if linear_kind(m) and n.rsplit(".", 1)[-1] in head_names}
    names = list(chosen)
    if embeddings:
        names += [n for n, m in model.named_modules()
                  if isinstance(m, nn.Embedding) and m.weight.requires_grad
                  and id(m.weight) not in taken | head_weights and m.embedding_dim <= max_factor_dim]
    if not names:
        raise InfogeomError("no nn.Linear/nn.Embedding layer to precondition (check head/max_factor_dim)")
    return names


def coverage(model: nn.Module, layers: list[Layer], label: str, head: bool | str, embeddings: bool,
             max_factor_dim: int, head_names=HEAD_NAMES) -> str:
    """One line: preconditioned modules and parameters out of all trainable ones, and why the others fall back
    to AdamW (grouped by reason, a few names each)."""
    covered = {id(p) for la in layers for p in la.params}
    total = {id(p): p.numel() for p in model.parameters() if p.requires_grad}
    names = {la.info.name for la in layers}
    fallback: dict[str, list[str]] = {}
    for name, m in model.named_modules():
        own = [p for p in m.parameters(recurse=False) if p.requires_grad and id(p) not in covered]
        if name in names or not own:
            continue
        short = name.rsplit(".", 1)[-1]
        if linear_kind(m):
            if short in head_names and head is False:
                why = "head=False"
            elif short in head_names and head == "auto" and any(m.weight is e.weight for e in model.modules()
                                                                 if isinstance(e, nn.Embedding)):
                why = "head tied to the embedding (head='auto')"
            elif max(linear_dims(m)) > max_factor_dim:
                why = f"wider than max_factor_dim={max_factor_dim}"
            else:
                why = "weight shared with an embedding"
        elif isinstance(m, nn.Embedding):
            why = f"embedding wider than max_factor_dim={max_factor_dim}" if embeddings else "embeddings=False"
        else:
            why = f"{type(m).__name__}: not a linear map"
        fallback.setdefault(why, []).append(name)
    n_cov, n_all = sum(total[i] for i in covered if i in total), sum(total.values())
    parts = [f"{why}: {len(ns)} ({', '.join(ns[:2])}{', ...' if len(ns) > 2 else ''})"
             for why, ns in fallback.items()]
    return (f"{label} coverage: {len(layers)} layers, {n_cov:,} of {n_all:,} parameters preconditioned "
            f"({100 * n_cov / max(n_all, 1):.1f}%); AdamW on " + ("; ".join(parts) if parts else "nothing"))


class KroneckerCore(Preconditioned, Optimizer):
    """Factor schedule, eigendecompositions, DDP and safety for the preconditioned layers; subclasses
    implement :meth:`_apply` (the update of every layer from the eigenbases in ``self.state[layer.weight]``),
    :meth:`_grid` (the eigenvalues of their metric P in those bases, :mod:`.preconditioner`) and
    :meth:`_stability` (momentum form).

    Optimizer-wide state (``steps``, current ``damping``, the damping the last step used, generator state) is
    exposed by :meth:`extra_state`. ``step`` follows the torch contract (returns the closure's loss);
    ``skipped`` tells whether the last step was skipped.
    """

    label = "kronecker"  # the registered name, for warnings

    def __init__(self, model: nn.Module, modules: list[str], lr: float, weight_decay: float, damping: float,
                 approx: str, fisher: str, mc_samples: int, cov_every: int, inv_every: int,
                 factor_decay: float, damping_boost: float, seed: int, max_basis_dim: int | None = None,
                 **defaults):
        if int(cov_every) < 1 or int(inv_every) < 1:
            raise InfogeomError(f"cov_every and inv_every must be positive, got {cov_every} and {inv_every}")
        if not 0.0 <= factor_decay < 1.0:
            raise InfogeomError(f"factor_decay must be in [0, 1), got {factor_decay}")
        if not damping > 0:
            raise InfogeomError(f"damping must be positive, got {damping}")
        self.generator = torch.Generator().manual_seed(int(seed) + rank())
        self.capture = KFACCapture(model, approx=approx, fisher=fisher, mc_samples=mc_samples,
                                   generator=self.generator, modules=modules, live=True)
        named = dict(model.named_parameters())
        self.layers = [Layer(info, named[info.weight], named[info.bias] if info.bias else None)
                       for info in self.capture.layers]
        groups = [{"params": [la.weight for la in self.layers], "weight_decay": weight_decay},
                  {"params": [la.bias for la in self.layers if la.bias is not None], "weight_decay": 0.0}]
        super().__init__([g for g in groups if g["params"]],
                         dict(lr=lr, damping=damping, cov_every=int(cov_every), inv_every=int(inv_every),
                              factor_decay=factor_decay, damping_boost=damping_boost,
                              max_basis_dim=max_basis_dim, **defaults))
        self.steps, self.damping = 0, float(damping)
        self.step_damping, self.skipped = self.damping, False
        self.capture.attach()

    # ---- optimizer-wide state ------------------------------------------------------------------------------
    def extra_state(self) -> dict:
        return {"steps": self.steps, "damping": self.damping, "step_damping": self.step_damping,
                "rng": self.generator.get_state()}

    def load_extra_state(self, extra: dict) -> None:
        self.steps, self.damping = int(extra["steps"]), float(extra["damping"])
        self.step_damping = float(extra.get("step_damping", self.damping))
        self.generator.set_state(extra["rng"])
        self.capture.reset()
        self.capture.enabled = due(self.steps, self.defaults["cov_every"])

    def lr_of(self, key: str = "lr") -> dict[int, float]:
        """Learning rate of every layer (its weight's group; read each step, schedulers edit it). With
        ``key="initial_lr"``: the base rate a scheduler started from (the current one without a
        scheduler)."""
        lrs = {id(p): g.get(key, g["lr"]) for g in self.param_groups for p in g["params"]}
        return {id(la.weight): lrs[id(la.weight)] for la in self.layers}

    def fail(self, reason: str) -> None:
        """Skip this step: raise the damping, warn, drop factors captured for it."""
        self.damping *= self.defaults["damping_boost"]
        self.capture.reset()
        warn_skip(self.label, reason, self.damping)

    # ---- curvature -----------------------------------------------------------------------------------------
    def _update_factors(self) -> bool:
        fresh = self.capture.pop()
        layers = [la for la in self.layers if la.info.name in fresh]
        limit = self.defaults["max_basis_dim"] or math.inf
        new = [t if t.ndim == 1 or t.shape[0] <= limit else t.diagonal().clone()
               for la in layers for t in fresh[la.info.name].oriented()]
        if any(la.info.name not in fresh and "L" not in self.state[la.weight] for la in self.layers):
            raise InfogeomError("K-FAC: no curvature captured; run the model's forward with gradients "
                                "enabled before optimizer.step()")
        all_reduce_mean_(new)
        if not all_finite(new):
            return False
        decay = self.defaults["factor_decay"]
        for la, (L, R) in zip(layers, zip(new[::2], new[1::2])):
            st = self.state[la.weight]
            if "L" in st:
                st["L"].lerp_(L, 1 - decay)
                st["R"].lerp_(R, 1 - decay)
            else:
                st["L"], st["R"] = L.clone(), R.clone()
        return True

    def _decompose(self) -> bool:
        """Eigendecompose every matrix factor (split over ranks, then broadcast); commit only if all
        finite."""
        tasks = [(la, side) for la in self.layers for side in ("L", "R")
                 if self.state[la.weight][side].ndim == 2]
        n_ranks, me = world_size(), rank()
        load, owner = [0.0] * n_ranks, []
        for la, side in tasks:  # greedy balance by eigh cost d³, identical on every rank
            r = min(range(n_ranks), key=load.__getitem__)
            load[r] += self.state[la.weight][side].shape[0] ** 3
            owner.append(r)
        results = []
        for (la, side), r in zip(tasks, owner):
            M = self.state[la.weight][side]
            e, Q = M.new_zeros(M.shape[0]), torch.zeros_like(M)
            if r == me:
                try:
                    eM, QM = symmetric_eigh(M)
                    e.copy_(eM.clamp_min(0))
                    Q.copy_(QM)
                except RuntimeError:  # includes torch.linalg.LinAlgError (no convergence)
                    e.fill_(float("nan"))
            results.append((e, Q))
        for r in range(n_ranks):
            broadcast_([t for res, o in zip(results, owner) if o == r for t in res], src=r)
        if not all_finite([t for res in results for t in res]):
            return False
        fresh = {(id(la.weight), side): res for (la, side), res in zip(tasks, results)}
        for la in self.layers:
            st = self.state[la.weight]
            new = {}
            for side in ("L", "R"):  # vector (diagonal) factors are their own eigenvalues
                new[side] = fresh.get((id(la.weight), side), (st[side].clamp_min(0), None))
            if "QL" in st:
                self._basis_changed(la, (st["QL"], st["QR"]), (new["L"][1], new["R"][1]))
            for side, (e, Q) in new.items():
                st["e" + side], st["Q" + side] = e, Q
        return True

    def eigenbasis(self, layer: Layer) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None,
                                                 torch.Tensor | None]:
        """``(e_L, e_R, Q_L, Q_R)`` of a layer (Q None for a diagonal factor)."""
        st = self.state[layer.weight]
        return st["eL"], st["eR"], st["QL"], st["QR"]

    # ---- preconditioner ------------------------------------------------------------------------------------
    def _grid(self, layer: Layer) -> torch.Tensor:  # pragma: no cover - abstract
        """Eigenvalues ``[d_L, d_R]`` of the layer's block of P in its eigenbasis (as of the last step)."""
        raise NotImplementedError

    def _stability(self) -> tuple[float, str]:  # pragma: no cover - abstract
        """(edge-of-stability factor c, momentum form) of the update (:mod:`.preconditioner`)."""
        raise NotImplementedError

    def _block(self, layer: Layer, names: dict[int, str]) -> KroneckerBlock:
        """The layer's block of P: its eigenbases and :meth:`_grid`."""
        _, _, QL, QR = self.eigenbasis(layer)
        return KroneckerBlock(names[id(layer.weight)], None if layer.bias is None else names[id(layer.bias)],
                              QL, QR, self._grid(layer), bias_row=layer.bias_row)

    def _preconditioner_parts(self, names: dict[int, str], batch=None) -> list[PreconditionerPart]:
        if self.steps == 0:
            raise InfogeomError(f"{self.label}: no preconditioner before the first step")
        blocks = [self._block(la, names) for la in self.layers]
        params = [p for la in self.layers for p in la.params]
        op = KroneckerOperator(blocks, [names[id(p)] for p in params], [p.shape for p in params])
        factor, kind = self._stability()
        return [PreconditionerPart(op, group_lr(self.param_groups[0]), factor, kind)]

    # ---- step ----------------------------------------------------------------------------------------------
    def _basis_changed(self, layer: Layer, old: tuple, new: tuple) -> None:
        """Called with the old and new ``(Q_L, Q_R)`` of a layer before new eigenbases are stored."""

    def _apply(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    @torch.no_grad()
    def step(self, closure=None):
        """One update of the preconditioned layers (``skipped`` is set, nothing changed, when it had to be
        skipped); returns the closure's loss."""
        loss = closure_loss(closure)
        d, k = self.defaults, self.steps
        self.skipped = True
        if due(k, d["cov_every"]) and not self._update_factors():
            self.fail("non-finite curvature factors")
            return loss
        fresh_basis = due(k, d["inv_every"]) or "eL" not in self.state[self.layers[0].weight]
        if fresh_basis and not self._decompose():
            self.fail("eigendecomposition failed")
            return loss
        self.step_damping = self.damping
        self._apply()
        self.skipped = False
        self.steps += 1
        self.damping = max(d["damping"], self.damping * 0.9)
        self.capture.enabled = due(self.steps, d["cov_every"])
        return loss


class KroneckerOptimizer(HybridOptimizer):
    """A :class:`KroneckerCore` on the chosen layers plus AdamW (``adamw_lr``) on every other parameter."""

    def __init__(self, model: nn.Module, core: KroneckerCore, adamw_lr: float, weight_decay: float,
                 betas=(0.9, 0.95), eps: float = 1e-8, selection: tuple = ("auto", False, 2048)):
        taken = [p for la in core.layers for p in la.params]
        self.coverage = coverage(model, core.layers, core.label, *selection)  # the trainer prints it at start
        rest = adamw_groups(model, taken, weight_decay)
        parts = [core] + ([torch.optim.AdamW(rest, lr=adamw_lr, betas=tuple(betas), eps=eps)] if rest else [])
        super().__init__(parts)
        self.core = core

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure_loss(closure)
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        if not all_finite(grads):
            self.core.fail("non-finite gradient")
            return loss
        self.core.step()
        if not self.core.skipped:
            for part in self._parts[1:]:
                part.step()
        return loss

    def extra_state(self) -> dict:
        return self.core.extra_state()

    def load_extra_state(self, extra: dict) -> None:
        if extra:
            self.core.load_extra_state(extra)

    def remove_hooks(self) -> None:
        """Detach the curvature hooks from the model (the optimizer cannot step afterwards)."""
        self.core.capture.detach()

