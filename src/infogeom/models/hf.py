"""Adapter that lets a Hugging Face ``transformers`` causal LM train and be analysed like infogeom's GPT.

``HFCausalLM(hf_model)`` keeps the HF module in ``.model`` and exposes the GPT interface used by the trainer
and the geometry code: ``forward(idx [B, T]) -> logits [B, T, V]`` (no KV cache), ``block_size``,
``num_parameters(non_embedding)``, ``generate`` and ``set_attention("sdpa" | "math")``.

Attention paths: ``"sdpa"`` is PyTorch's fused kernel (no double backward: Hessian-vector products fail);
``"math"`` selects transformers' ``"eager"`` attention (softmax(QKᵀ·scale + mask)·V written out), which
supports double backward. The switch goes through ``PreTrainedModel.set_attn_implementation``
(transformers ≥ 4.56), which updates the shared ``config._attn_implementation`` that the attention layers and
the causal-mask builder read at every forward (checked for GPT-2 with transformers 5.24).
:func:`infogeom.models.math_attention` works on the adapter too.

``HFCausalLM.from_gpt2(...)`` builds a randomly initialised ``GPT2LMHeadModel`` from a ``GPT2Config`` (never
from the Hub); requires the optional ``transformers`` package (``pip install 'infogeom[hf]'``).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import InfogeomError
from .gpt import GPTConfig, generate

ATTENTION = {"sdpa": "sdpa", "math": "eager"}  # infogeom path -> transformers attn_implementation


class HFCausalLM(nn.Module):
    """``idx -> logits`` wrapper around a transformers causal LM (``*ForCausalLM`` / ``*LMHeadModel``)."""

    def __init__(self, hf_model: nn.Module):
        super().__init__()
        self.model = hf_model

    @classmethod
    def from_gpt2(cls, vocab_size: int, block_size: int, n_layer: int, n_head: int, n_embd: int,
                  dropout: float = 0.0, attention: str = "sdpa") -> HFCausalLM:
        """A fresh GPT-2 (learned positions, pre-LayerNorm, tied embeddings, GELU-tanh MLP of width 4·n_embd).

        ``dropout`` sets the embedding, attention and residual dropout probabilities alike.
        """
        GPTConfig(vocab_size=vocab_size, block_size=block_size, n_layer=n_layer, n_head=n_head, n_embd=n_embd,
                  dropout=dropout, attention=attention).validate()  # the native model's one-line errors
        try:
            from transformers import GPT2Config, GPT2LMHeadModel
        except ImportError as exc:
            raise InfogeomError("model arch 'hf-gpt2' needs the optional 'transformers' package: "
                                "pip install 'infogeom[hf]'") from exc
        config = GPT2Config(vocab_size=vocab_size, n_positions=block_size, n_layer=n_layer, n_head=n_head,
                            n_embd=n_embd, resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout,
                            bos_token_id=None, eos_token_id=None, attn_implementation=ATTENTION[attention])
        return cls(GPT2LMHeadModel(config))

    @property
    def block_size(self) -> int:
        cfg = self.model.config
        return int(getattr(cfg, "n_positions", None) or cfg.max_position_embeddings)

    @property
    def attention(self) -> str:
        """Current path: ``"math"`` for transformers' eager attention, else ``"sdpa"``."""
        return "math" if self.model.config._attn_implementation == "eager" else "sdpa"

    def set_attention(self, path: str) -> None:
        """Switch every attention layer to ``"sdpa"`` or ``"math"`` (double-backward-capable eager path)."""
        if path not in ATTENTION:
            raise InfogeomError(f"unknown attention path {path!r}; choose one of {', '.join(ATTENTION)}")
        self.model.set_attn_implementation(ATTENTION[path])
        if self.model.config._attn_implementation != ATTENTION[path]:
            raise InfogeomError(f"{type(self.model).__name__} cannot switch to {ATTENTION[path]} attention")

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """``idx [B, T]`` (long, T ≤ block_size) → logits ``[B, T, vocab]``."""
        if idx.size(1) > self.block_size:
            raise InfogeomError(f"sequence length {idx.size(1)} exceeds the model's block_size "
                                f"{self.block_size}")
        return self.model(input_ids=idx, use_cache=False).logits

    def num_parameters(self, non_embedding: bool = False) -> int:
        """Distinct parameters (tied weights once). ``non_embedding`` drops every embedding table except the
        input embedding when it doubles as the output layer (the convention of infogeom's GPT)."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            out = self.model.get_output_embeddings()
            tied = out is not None and out.weight is self.model.get_input_embeddings().weight
            n -= sum(m.weight.numel() for m in self.model.modules() if isinstance(m, nn.Embedding)
                     and not (tied and m.weight is out.weight))
        return n

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Sampling ``idx [B, T0] -> [B, T0 + max_new_tokens]`` (:func:`infogeom.models.gpt.generate`)."""
        return generate(self, idx, max_new_tokens, self.block_size, temperature, top_k, generator)
