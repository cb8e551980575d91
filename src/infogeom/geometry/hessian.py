"""Hessian of the training loss as a matrix-free operator (double backward).

H = ∇²_θ L(θ), L the mean token cross-entropy of ``batch`` (the loss the trainer minimizes).
Construction runs one forward/backward with ``create_graph=True`` (math attention path, eval mode) and keeps the
gradient graph; a product H V [P, k] is k backward passes through that graph (≈ 2.5 gradients each), one per
column on CPU — there a vmapped backward over all k columns (``is_grads_batched``) costs 1.5× more per column
(default 0.8M GPT, batch 8×128, 1 thread, machine loaded: 0.53 s vs 0.79 s per column; 210k GPT, 2 quiet threads:
0.096 s vs 0.111 s) — and vmapped on accelerators.
:class:`FiniteDifferenceHessian` needs no double backward: central differences of two gradients per column.

Quadratic forms vᵀHv (all a Hutchinson trace needs) need no product at all: :class:`SecondDifferences` takes
them from three loss values in float64, (L(θ+δv̂) + L(θ−δv̂) − 2L(θ))·‖v‖²/δ², i.e. two forward passes per
probe instead of a double backward (≈ 2 gradients ≈ 6 forwards), or one forward for sign-symmetric probes
(one-sided, exact in the mean over ±v). Both operators use it on the CPU by default
(``forms="auto"``) once a first probe has confirmed it against the operator's own product.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
import types
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn as nn
from torch.func import functional_call

from ..errors import InfogeomError
from ..models.gpt import lm_loss
from ..operators import CurvatureOperator, flatten, suspend_captures, unflatten
from .functional import Batch, curvature_mode, loss_function, select_parameters

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _rms_norm_in_input_dtype(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """w ⊙ x / √(mean(x²) + ε), as transformers' Llama-style RMSNorm, but in x's dtype (theirs rounds to float32)."""
    return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))


@contextlib.contextmanager
def _value_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode, captures suspended, no autograd, the fused attention path where the model has one (a loss
    value needs no double backward, and eager attention of some transformers families rounds the softmax to
    float32), and Llama-style RMSNorms (``*RMSNorm`` with ``variance_epsilon``: Llama, Mistral, Qwen2) computed in
    the input's dtype: float64 second differences cannot tolerate float32 round-off of activations."""
    was_training, old = model.training, getattr(model, "attention", None)
    norms = [m for m in model.modules() if type(m).__name__.endswith("RMSNorm") and hasattr(m, "variance_epsilon")
             and isinstance(getattr(m, "weight", None), torch.Tensor)]
    model.eval()
    try:
        if old is not None:
            model.set_attention("sdpa")
        for m in norms:
            m.forward = types.MethodType(_rms_norm_in_input_dtype, m)
        with suspend_captures(), torch.no_grad():
            yield
    finally:
        for m in norms:
            del m.forward
        if old is not None:
            model.set_attention(old)
        model.train(was_training)


class SecondDifferences:
    """``V [P, k] -> [k]``: vᵀHv ≈ ‖v‖² (L(θ + δv̂) + L(θ − δv̂) − 2L(θ)) / δ², v̂ = v/‖v‖, every loss evaluated
    in float64 (a float64 copy of the parameters and floating buffers, passed to ``functional_call``).

    Error in v̂ᵀHv̂: the truncation δ²/12 · ∂⁴L[v̂⁴], O(δ²), against the round-off ≈ 4ε|L|/δ² of the values. A
    random direction has little curvature (v̂ᵀHv̂ ≈ tr H / P), so relative to it the two balance near
    δ ≈ (P·ε₆₄)^{1/4} (× rms(θ) when it exceeds 1): ``step``, used by the one-sided forms of random probes. Sharp
    directions (Hutch++'s low-rank basis, 10³–10⁴× the curvature) have a larger fourth derivative and need a
    smaller step, so the two-sided forms use ``step``·:attr:`two_sided_scale`: relative error ≈ 1e-8 (random) to 2e-5
    (top eigenvectors) of ‖v‖‖Hv‖ on GPTs of 0.2–0.8M parameters (1.6e-4 along the top ones at the full step).
    Cost: two forward passes per column (one more, at θ, once), no graph kept: memory of one forward in float64.
    Valid where the forward is smooth and computed in float64 throughout (Llama-style RMSNorms, which round to
    float32, are evaluated in float64 here); any other module that rounds a parameter-dependent activation makes
    the values useless, which the operators' ``forms="auto"`` check detects.

    ``one_sided=True`` (for sign-symmetric probes, where only the mean over the columns matters): one forward
    per column, q₁(v) = 2‖v‖² (L(θ + δv̂) − L(θ) − δ gᵀv̂) / δ² with g the float64 gradient at θ (one backward,
    once). q₁(v) = vᵀHv + ‖v‖² δ/3 ∂³L[v̂³] + O(δ²): the cubic term is odd in v, so it averages out over ±v
    (q₁(v) + q₁(−v) = 2 × the two-sided value, exactly) and only adds variance, which the samples' standard
    error includes: on the benchmark's 210k GPT it is ≈ 1e-3 of the Rademacher probes' own spread (a 1e-6 share
    of the variance) at half the cost (0.66 vs 1.32 gradients per column, an HVP 2.29; benchmarks/curvature.py)."""

    two_sided_scale = 0.25

    def __init__(self, model: nn.Module, batch: Batch, names: Sequence[str], loss: Loss = lm_loss,
                 step: float | None = None):
        self._model, (self._x, self._y), self._loss, self.names = model, batch, loss, list(names)
        own = dict(model.named_parameters())
        chosen = [own[n].detach() for n in self.names]
        self.shapes = [p.shape for p in chosen]
        self.dtype = chosen[0].dtype
        chosen_names = set(self.names)
        self._fixed = {n: t.detach().to(torch.float64) for n, t in itertools.chain(own.items(), model.named_buffers())
                       if t.is_floating_point() and n not in chosen_names}
        self._theta = flatten(chosen).to(torch.float64)
        rms = float(self._theta.square().mean().sqrt())
        self.step = float(step) if step is not None else \
            (self._theta.numel() * torch.finfo(torch.float64).eps) ** 0.25 * max(1.0, rms)
        self._gradient: torch.Tensor | None = None  # float64 g at θ, for one-sided differences
        with _value_mode(model):
            self._at_theta = float(self._loss_at(self._theta))

    def _loss_at(self, theta: torch.Tensor) -> torch.Tensor:
        """L(θ) in float64; call inside ``_value_mode``."""
        params = dict(zip(self.names, unflatten(theta, self.shapes)))
        return self._loss(functional_call(self._model, {**self._fixed, **params}, (self._x,), strict=False), self._y)

    def _gradient_at_theta(self) -> torch.Tensor:
        if self._gradient is None:
            theta = self._theta.clone().requires_grad_(True)
            with _value_mode(self._model), torch.enable_grad():
                self._gradient = torch.autograd.grad(self._loss_at(theta), theta)[0]
        return self._gradient

    def __call__(self, V: torch.Tensor, one_sided: bool = False) -> torch.Tensor:
        g = self._gradient_at_theta() if one_sided else None
        out = []
        with _value_mode(self._model):
            for v in V.T.to(torch.float64):
                norm = float(torch.linalg.vector_norm(v))
                if norm == 0:
                    out.append(0.0)
                    continue
                step = self.step if g is not None else self.step * self.two_sided_scale
                d = v * (step / norm)
                plus = float(self._loss_at(self._theta + d)) - self._at_theta
                other = float(self._loss_at(self._theta - d)) - self._at_theta if g is None else plus - 2 * float(g @ d)
                out.append((plus + other) * (norm / step) ** 2)
        return torch.tensor(out, dtype=V.dtype, device=V.device)


class _QuadraticForms:
    """``_quadratic_forms`` for the Hessian operators: ``forms`` = "backward" (vᵀ(Hv), one product each),
    "difference" (:class:`SecondDifferences`, one-sided for ``symmetric`` probes), or "auto" (default:
    "difference" on the CPU for parameters below float64 precision, if on the first probe it agrees with the
    operator's product to ``form_tolerance``·‖v‖‖Hv‖; else "backward"). "auto" decides twice, apart: for general
    forms (``forms``, e.g. Hutch++'s basis, whose first column is the sketch's sharpest direction) and for
    sign-symmetric probes (``symmetric_forms``, random directions), since a loss far from quadratic along a sharp
    direction (the 3.2M GPT of ``benchmarks/curvature_scaling.py``: second differences ≈ +44 instead of −695 along
    its top eigenvector) says nothing about random ones. ``form_errors`` keeps each check's discrepancy
    (``form_error``: the last one).

    And ``_sketch`` (the range finder's A S): on the CPU one-sided gradient differences,
    H v ≈ ‖v‖ (∇L(θ + h v̂) − ∇L(θ)) / h with the stored gradient at θ and h = √ε·max(1, rms θ) — one gradient per
    column instead of an HVP's 2.3 (error O(h ∂³L) + O(ε/h): 0.1–1% relative in float32 on GPTs of 0.2M
    parameters, but 70% along the sharpest direction of the 3.2M one; a sketch only needs a span, so this costs
    variance, never bias); elsewhere the exact product."""

    #: cost of one sketch column (one gradient) relative to one product, measured on CPU GPTs of 0.2M
    #: parameters (gradient 0.016 s, HVP 0.037 s; benchmarks/curvature.py)
    gradient_cost = 0.45

    def sketch_cost(self) -> float:
        return self.gradient_cost if self.device.type == "cpu" else 1.0

    @functools.cached_property
    def _sketch_step(self) -> float:
        """h = √ε·max(1, rms θ) of the one-sided gradient differences."""
        return math.sqrt(torch.finfo(self.dtype).eps) * max(1.0, float(self._theta.square().mean().sqrt()))

    def _sketch(self, V: torch.Tensor) -> torch.Tensor:
        if self.device.type != "cpu":
            return self._matmat(V)
        h = self._sketch_step
        out = torch.empty_like(V)
        for i, v in enumerate(V.T):
            norm = float(torch.linalg.vector_norm(v))
            out[:, i] = 0.0 if norm == 0 else (self._gradient(self._theta + v * (h / norm))[0] - self.gradient) * (
                norm / h)
        return out

    def _gradient(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(∇L(θ'), L(θ')) at the flat parameters ``theta``, under :meth:`_gradient_mode`."""
        params = {n: t.requires_grad_(True) for n, t in zip(self.names, unflatten(theta.clone(), self.shapes))}
        with self._gradient_mode(self._model), torch.enable_grad():
            value = self._f(params)
            grads = torch.autograd.grad(value, list(params.values()), allow_unused=True)
        return flatten([torch.zeros_like(p) if g is None else g for g, p in zip(grads, params.values())]), \
            value.detach()

    #: measured on tiny GPT / GPT-2 / GPT-NeoX / Llama checkpoints: 2e-9–1e-6 of ‖v‖‖Hv‖ where the forward is
    #: float64 throughout (against both operators' products; Llama's RMSNorm in float64 too), 1.3–2.7e-3 without that
    form_tolerance = 1e-4
    #: a product-free form's cost relative to one Hessian-vector product (measured on CPU GPTs of 0.2–3.2M
    #: parameters: one-sided 0.32–0.39, two-sided 0.58–0.69)
    difference_costs = {True: 1 / 3, False: 2 / 3}

    def form_cost(self, symmetric: bool = False) -> float:
        return 1.0 if self._modes[symmetric] == "backward" else self.difference_costs[symmetric]

    @property
    def forms(self) -> str:
        """The mode of general quadratic forms ("auto" until its first check)."""
        return self._modes[False]

    @property
    def symmetric_forms(self) -> str:
        """The mode of quadratic forms of sign-symmetric probes ("auto" until its first check)."""
        return self._modes[True]

    @property
    def form_error(self) -> float:
        """The last check's discrepancy (nan before any)."""
        return self.form_errors.get(self._last_check, math.nan)

    def _init_forms(self, model: nn.Module, batch: Batch, loss: Loss, forms: str) -> None:
        if forms not in ("auto", "backward", "difference"):
            raise InfogeomError(f"forms must be 'auto', 'backward' or 'difference', got {forms!r}")
        if forms == "auto" and (self.device.type != "cpu" or self.dtype == torch.float64):
            forms = "backward"
        self._modes, self.form_errors, self._last_check = {False: forms, True: forms}, {}, None
        self._form_args, self._differences = (model, batch, loss), None

    def _quadratic_forms(self, V: torch.Tensor, symmetric: bool = False) -> torch.Tensor:
        mode = self._modes[symmetric]
        if mode == "backward":
            return super()._quadratic_forms(V, symmetric)
        if self._differences is None:
            self._differences = SecondDifferences(self._form_args[0], self._form_args[1], self.names,
                                                  self._form_args[2])
        if mode == "difference":
            return self._differences(V, one_sided=symmetric)
        v = V[:, :1]  # "auto": confirm on the first probe of this kind (two-sided), whose exact value is kept
        hv = self._matmat(v)
        exact, diff = (v * hv).sum(), self._differences(v)[0]
        error = float((diff - exact).abs() / (v.norm() * hv.norm()).clamp_min(1e-30))
        self.form_errors[symmetric], self._last_check = error, symmetric
        self._modes[symmetric] = "difference" if math.isfinite(error) and error <= self.form_tolerance else "backward"
        if all(m == "backward" for m in self._modes.values()):
            self._differences = None  # its float64 copy of the parameters is no longer needed
        if V.shape[1] == 1:
            return exact[None]
        return torch.cat([exact[None], self._quadratic_forms(V[:, 1:], symmetric)])

    def _forms_repr(self) -> str:
        return f"quadratic forms: {self.forms}" + (
            "" if self.symmetric_forms == self.forms else f", sign-symmetric probes: {self.symmetric_forms}")


class HessianOperator(_QuadraticForms, CurvatureOperator):
    """``H = ∂²L/∂θ²`` of ``loss(model(x), y)`` w.r.t. the selected parameters (default: all trainable)."""

    def __init__(self, model: nn.Module, batch: Batch, names: Sequence[str] | None = None,
                 loss: Loss = lm_loss, batched: bool | None = None, forms: str = "auto"):
        """``batched``: one vmapped backward for all columns of a product (default: only off the CPU);
        ``forms``: how quadratic forms vᵀHv are computed (:class:`_QuadraticForms`)."""
        params = select_parameters(model, names)
        self._set_layout(params)
        self._init_forms(model, batch, loss, forms)
        self.batched = self.device.type != "cpu" if batched is None else batched
        self._params = {n: p.detach().clone().requires_grad_(True) for n, p in params.items()}
        self._model, self._f = model, loss_function(model, batch, loss)
        self._theta = flatten([p.detach() for p in self._params.values()])
        with curvature_mode(model):
            self.loss = self._f(self._params)
            self._grad = torch.autograd.grad(self.loss, list(self._params.values()), create_graph=True)
        self.gradient = flatten([g.detach() for g in self._grad])

    _gradient_mode = staticmethod(curvature_mode)  # shifted gradients (sketches) on the same path as H

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        """H V: one backward of the stored gradient graph per column, or all k vmapped (``batched``)."""
        inputs = list(self._params.values())
        if self.batched and V.shape[1] > 1:
            vs = [t.movedim(-1, 0) for t in unflatten(V, self.shapes)]  # [k, *shape] each
            hv = torch.autograd.grad(self._grad, inputs, grad_outputs=vs, retain_graph=True, allow_unused=True,
                                     is_grads_batched=True)
            return torch.cat([(torch.zeros(V.shape[1], p.numel(), dtype=V.dtype, device=V.device) if h is None
                               else h.reshape(V.shape[1], -1)) for h, p in zip(hv, inputs)], dim=1).T
        out = torch.empty_like(V)  # written column by column: memory P·k for the result, not 3·P·k
        for i in range(V.shape[1]):
            self._column(V[:, i].contiguous(), out[:, i])  # contiguous grad_outputs
        return out

    def _column(self, v: torch.Tensor, out: torch.Tensor) -> None:
        """``out [P]`` (a strided column is fine) ← H v."""
        hv = torch.autograd.grad(self._grad, list(self._params.values()), grad_outputs=unflatten(v, self.shapes),
                                 retain_graph=True, allow_unused=True)
        for block, h in zip(out.split([p.numel() for p in self._params.values()]), hv):  # views of ``out``
            if h is None:
                block.zero_()
            else:
                block.copy_(h.reshape(-1))

    def __repr__(self) -> str:
        return (f"HessianOperator(dim={self.dim}, {'vmapped' if self.batched else 'one backward per column'}, "
                f"{self._forms_repr()}, {self.dtype}, {self.device})")


#: Central-difference step per dtype, relative to the parameters' scale: ≈ ε^{1/3} (ε the dtype's machine
#: epsilon) balances the O(h²) truncation against the O(ε/h) round-off of the two gradients.
FD_STEPS = {torch.float64: 1e-5, torch.float32: 5e-3, torch.bfloat16: 1e-1, torch.float16: 5e-2}


class FiniteDifferenceHessian(_QuadraticForms, CurvatureOperator):
    """``H v ≈ ‖v‖ (∇L(θ + h v̂) − ∇L(θ − h v̂)) / 2h`` with v̂ = v/‖v‖: two plain gradients per column, no double
    backward, so it works with any attention kernel (SDPA/flash: the model's own path is kept) and with code
    that cannot be differentiated twice. Error O(h² ‖∇³L‖) + O(ε/h); ``step`` h defaults to
    ``FD_STEPS[dtype] · max(1, rms(θ))`` (measured relative error on a tiny GPT: float64 7e-10, float32 9e-4;
    bf16 only a rough estimate). Eval mode (no dropout); ``gradient``/``loss`` at θ and ``forms`` (quadratic forms
    by loss values alone) as in :class:`HessianOperator`.
    """

    def __init__(self, model: nn.Module, batch: Batch, names: Sequence[str] | None = None,
                 loss: Loss = lm_loss, step: float | None = None, forms: str = "auto"):
        params = select_parameters(model, names)
        self._set_layout(params)
        self._init_forms(model, batch, loss, forms)
        self._model, self._f = model, loss_function(model, batch, loss)
        self._theta = flatten([p.detach() for p in params.values()]).clone()
        rms = float(self._theta.square().mean().sqrt())
        self.step = float(step) if step is not None else FD_STEPS.get(self.dtype, 5e-3) * max(1.0, rms)
        self.gradient, self.loss = self._gradient(self._theta)

    @staticmethod
    @contextlib.contextmanager
    def _gradient_mode(model: nn.Module) -> Iterator[None]:
        """Eval mode and captures suspended; the model's own attention path."""
        was_training = model.training
        model.eval()
        try:
            with suspend_captures():
                yield
        finally:
            model.train(was_training)

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        cols = []
        for v in V.T:
            norm = torch.linalg.vector_norm(v)
            if norm == 0:
                cols.append(torch.zeros_like(v))
                continue
            d = v * (self.step / norm)
            plus, minus = self._gradient(self._theta + d)[0], self._gradient(self._theta - d)[0]
            cols.append((plus - minus) * (norm / (2 * self.step)))
        return torch.stack(cols, dim=1)

    def __repr__(self) -> str:
        return (f"FiniteDifferenceHessian(dim={self.dim}, step={self.step:.1e}, {self._forms_repr()}, "
                f"{self.dtype}, {self.device})")
