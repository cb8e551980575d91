"""Geometry of a Born-rule LM head (:class:`~infogeom.models.born_head.BornHead`): ψ = W_re h + i W_im h ∈ ℂ^V,
p(v) = |ψ_v|² / ‖ψ‖². Its metrics on the head parameters θ = (W_re, W_im), averaged over the N token positions of
a batch, are matrix-free :class:`~infogeom.operators.CurvatureOperator` s (:class:`BornMetricOperator`):

    "fubini-study"  g = Re Q,  Q = ⟨∂ψ̂|∂ψ̂⟩ − ⟨∂ψ̂|ψ̂⟩⟨ψ̂|∂ψ̂⟩ of the normalised state ψ̂ = ψ/‖ψ‖
    "qfi"           4g
    "classical"     F^cl = E_p[∂log p ∂log p]   (the usual Fisher of the predictive distribution)
    "phase"         4 Cov_p(∂φ), ψ = |ψ| e^{iφ}

with QFI = F^cl + 4 Cov_p(∂φ) wherever p > 0; with W_im = 0 the amplitudes are real, the phase term vanishes
on the W_re block, and there QFI = F^cl. A tangent (ΔW_re, ΔW_im) moves ψ by δψ = (ΔW_re + iΔW_im) h, so every
matvec costs O(N·V·C) and nothing of size P² = (2VC)² is formed unless asked (``to_dense``).
"""

from __future__ import annotations

import torch

from ..errors import InfogeomError
from ..models.born_head import BornHead
from ..models.gpt import GPT
from ..operators import CurvatureOperator, suspend_captures

BORN_KINDS = ("fubini-study", "qfi", "classical", "phase")


def head_inputs(model: GPT, idx: torch.Tensor) -> torch.Tensor:
    """The hidden states h ``[B·T, C]`` that reach ``model.lm_head`` for inputs ``idx [B, T]`` (eval mode)."""
    captured = []
    handle = model.lm_head.register_forward_hook(lambda m, args, out: captured.append(args[0].detach()))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), suspend_captures():
            model(idx)
    finally:
        handle.remove()
        model.train(was_training)
    return captured[0].reshape(-1, captured[0].shape[-1])


class BornMetricOperator(CurvatureOperator):
    """Metric of ``kind`` (see module doc) on (weight_re, weight_im) of ``head``, averaged over hidden states
    ``hidden [N, C]``. Flat order: weight_re then weight_im, row-major."""

    def __init__(self, head: BornHead, hidden: torch.Tensor, kind: str = "fubini-study",
                 names: tuple[str, str] = ("weight_re", "weight_im")):
        if kind not in BORN_KINDS:
            raise InfogeomError(f"kind must be one of {', '.join(BORN_KINDS)}, got {kind!r}")
        if hidden.ndim != 2 or hidden.shape[1] != head.weight_re.shape[1]:
            raise InfogeomError(f"hidden states must be [N, {head.weight_re.shape[1]}], "
                                f"got {tuple(hidden.shape)}")
        self.kind = kind
        self.h = hidden.detach().to(head.weight_re.dtype)
        with torch.no_grad():
            self.psi = head.amplitudes(self.h)  # [N, V]
        self.abs2 = self.psi.real**2 + self.psi.imag**2
        self.norm = self.abs2.sum(-1, keepdim=True)  # n = ‖ψ‖²  [N, 1]
        tol = torch.finfo(self.abs2.dtype).eps ** 2 * self.norm
        tiny = torch.finfo(self.abs2.dtype).tiny
        self.inv_abs2 = torch.where(self.abs2 > tol, 1.0 / self.abs2.clamp_min(tiny), 0.0)
        self.names = list(names)
        self.shapes = [head.weight_re.shape, head.weight_im.shape]
        self.dtype, self.device = head.weight_re.dtype, head.weight_re.device

    def _w(self, dpsi: torch.Tensor) -> torch.Tensor:
        """w with G(v, v') = Re Σ conj(δψ') w for δψ = J v (``dpsi [k, N, V]``)."""
        psi, n = self.psi, self.norm
        if self.kind in ("fubini-study", "qfi"):
            overlap = (psi.conj() * dpsi).sum(-1, keepdim=True)  # ⟨ψ|δψ⟩
            w = (dpsi - psi * overlap / n) / n
            return 4 * w if self.kind == "qfi" else w
        z = psi.conj() * dpsi * self.inv_abs2  # δψ/ψ where p > 0
        if self.kind == "classical":  # κ = ½ ∂log p
            kappa = z.real - ((psi.conj() * dpsi).sum(-1, keepdim=True)).real / n
            return 4 * kappa * psi / n
        beta = z.imag  # ∂φ
        centred = beta - (self.abs2 / n * beta).sum(-1, keepdim=True)
        return 4j * centred * psi / n

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        k = V.shape[1]
        Vv, C = self.shapes[0]
        dA = V[: Vv * C].T.reshape(k, Vv, C)
        dB = V[Vv * C:].T.reshape(k, Vv, C)
        hc = self.h.to(self.psi.dtype)
        dpsi = torch.einsum("kvc,nc->knv", torch.complex(dA, dB), hc)
        w = self._w(dpsi)
        N = self.h.shape[0]
        out_A = torch.einsum("knv,nc->kvc", w.real, self.h) / N
        out_B = torch.einsum("knv,nc->kvc", w.imag, self.h) / N
        return torch.cat([out_A.reshape(k, -1), out_B.reshape(k, -1)], dim=1).T

    def diagonal(self, num_probes: int | None = None, generator: torch.Generator | None = None
                 ) -> torch.Tensor:
        """Exact diagonal in O(N·V·C) from closed forms (per token, q_v = 1/(n|ψ_v|²) − 1/n²):
        FS: h_c²(1/n − |ψ_v|²/n²) for both blocks; classical: 4h_c² (Re ψ_v)² q_v (W_re), 4h_c² (Im ψ_v)² q_v
        (W_im); phase: the same with Re and Im swapped."""
        if num_probes is not None:
            return super().diagonal(num_probes, generator)
        n = self.norm
        if self.kind in ("fubini-study", "qfi"):
            a = 1 / n - self.abs2 / n**2
            a_re = a_im = a * (4 if self.kind == "qfi" else 1)
        else:
            q = self.inv_abs2 / n - (self.inv_abs2 > 0) / n**2
            re2, im2 = self.psi.real**2, self.psi.imag**2
            a_re, a_im = 4 * re2 * q, 4 * im2 * q
            if self.kind == "phase":
                a_re, a_im = a_im, a_re
        h2 = self.h**2 / self.h.shape[0]
        return torch.cat([(a_re.T @ h2).reshape(-1), (a_im.T @ h2).reshape(-1)])


def born_head_geometry(head: BornHead, hidden: torch.Tensor) -> dict[str, BornMetricOperator]:
    """All four metrics of the head for one batch of hidden states (see :class:`BornMetricOperator`)."""
    return {kind: BornMetricOperator(head, hidden, kind) for kind in BORN_KINDS}


def compare_born_geometry(model: GPT, idx: torch.Tensor, probes: int = 16,
                          generator: torch.Generator | None = None) -> dict[str, float]:
    """Summary of the head's geometry on a batch of text ``idx [B, T]`` (model with a :class:`BornHead`):
    exact traces of FS, QFI, classical Fisher and phase term, ``qfi_over_classical`` = tr F^Q / tr F^cl, and
    the
    identity residual max_v |vᵀ(F^Q − F^cl − 4Cov)v| / vᵀF^Q v over ``probes`` Rademacher directions."""
    if not isinstance(model.lm_head, BornHead):
        raise InfogeomError("the model has no Born head (use infogeom.models.born_head.use_born_head)")
    ops = born_head_geometry(model.lm_head, head_inputs(model, idx))
    out = {f"trace_{k.replace('-', '_')}": float(op.diagonal().sum()) for k, op in ops.items()}
    out["qfi_over_classical"] = out["trace_qfi"] / out["trace_classical"]
    V = (torch.randint(0, 2, (ops["qfi"].dim, probes), generator=generator) * 2 - 1).to(ops["qfi"].dtype)
    quad = {k: (V * op.matmat(V)).sum(0) for k, op in ops.items()}
    resid = (quad["qfi"] - quad["classical"] - quad["phase"]).abs() / quad["qfi"].abs().clamp_min(1e-300)
    out["identity_residual"] = float(resid.max())
    out["tokens"] = int(idx.numel())
    return out
