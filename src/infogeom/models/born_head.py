"""A Born-rule language-model head: the next-token distribution is a quantum state over the vocabulary.

    ψ = W_re h + i W_im h ∈ ℂ^V,   p(v) = |ψ_v|² / ‖ψ‖²

``BornHead.forward`` returns log p as "logits" (log_softmax(log p) = log p, so :func:`lm_loss` is the usual
cross-entropy). Its metrics (Fubini–Study, QFI, classical Fisher, phase term) are operators in
:mod:`infogeom.geometry.born`.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .gpt import GPT


class BornHead(nn.Module):
    """``h [..., C] -> log p [..., V]`` with p = |W_re h + i W_im h|² / ‖·‖² (no bias)."""

    def __init__(self, n_embd: int, vocab_size: int, init_std: float = 0.02,
                 imag_init_std: float | None = None):
        super().__init__()
        self.weight_re = nn.Parameter(init_std * torch.randn(vocab_size, n_embd))
        std = init_std if imag_init_std is None else imag_init_std
        self.weight_im = nn.Parameter(std * torch.randn(vocab_size, n_embd))

    def amplitudes(self, h: torch.Tensor) -> torch.Tensor:
        """Unnormalised amplitudes ψ ``[..., V]`` (complex)."""
        return torch.complex(h @ self.weight_re.T, h @ self.weight_im.T)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        re, im = h @ self.weight_re.T, h @ self.weight_im.T
        a = re**2 + im**2
        tiny = torch.finfo(a.dtype).tiny
        return torch.log(a.clamp_min(tiny)) - torch.log(a.sum(-1, keepdim=True).clamp_min(tiny))


def use_born_head(model: GPT, **head_options) -> BornHead:
    """Replace ``model.lm_head`` by a :class:`BornHead` (unties it from the embedding); returns the head."""
    ref = model.lm_head.weight
    head = BornHead(model.config.n_embd, model.config.vocab_size, **head_options).to(dtype=ref.dtype,
                                                                                   device=ref.device)
    model.lm_head = head
    model.config.tie_weights = False
    return head
