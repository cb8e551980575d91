"""A decoder-only transformer language model (GPT), readable in one sitting.

Pre-norm blocks: x ← x + Attn(Norm(x)); x ← x + MLP(Norm(x)). Learned absolute positions, optional weight
tying between token embedding and LM head, LayerNorm or RMSNorm.

Attention has two numerically equivalent paths:
- ``"sdpa"``: ``torch.nn.functional.scaled_dot_product_attention`` (fast, fused kernels; no double backward);
- ``"math"``: softmax(QKᵀ/√d + mask) V written out, which supports double backward (Hessian-vector products).
Switch with ``model.set_attention("math")`` or the context manager :func:`math_attention`.

``forward(idx)`` returns logits ``[B, T, V]``; the loss is :func:`lm_loss` (mean token cross-entropy).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import InfogeomError

ATTENTION_PATHS = ("sdpa", "math")
NORMS = ("layernorm", "rmsnorm")


@dataclass
class GPTConfig:
    """Shape of a GPT. ``vocab_size`` is set from the tokenizer when training."""

    vocab_size: int = 65
    block_size: int = 128
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = True
    tie_weights: bool = True
    norm: str = "layernorm"
    attention: str = "sdpa"

    def validate(self) -> GPTConfig:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            if int(getattr(self, name)) <= 0:
                raise InfogeomError(f"model.{name} must be a positive integer, got {getattr(self, name)}")
        if self.n_embd % self.n_head:
            raise InfogeomError(f"model.n_embd ({self.n_embd}) must be divisible by model.n_head "
                                f"({self.n_head})")
        if not 0.0 <= self.dropout < 1.0:
            raise InfogeomError(f"model.dropout must be in [0, 1), got {self.dropout}")
        if self.norm not in NORMS:
            raise InfogeomError(f"unknown model.norm {self.norm!r}; choose one of {', '.join(NORMS)}")
        if self.attention not in ATTENTION_PATHS:
            raise InfogeomError(f"unknown model.attention {self.attention!r}; choose one of "
                                f"{', '.join(ATTENTION_PATHS)}")
        return self


def _norm(cfg: GPTConfig) -> nn.Module:
    if cfg.norm == "rmsnorm":
        return nn.RMSNorm(cfg.n_embd, eps=1e-5)
    return nn.LayerNorm(cfg.n_embd, bias=cfg.bias)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention. Cost O(B·T²·C) time, O(B·H·T²) memory on the math path."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = cfg.dropout
        self.resid_dropout = nn.Dropout(cfg.dropout)
        self.path = cfg.attention

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        p_drop = self.dropout if self.training else 0.0
        if self.path == "sdpa":
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=p_drop, is_causal=True)
        else:
            att = (q @ k.transpose(-2, -1)) / math.sqrt(k.size(-1))
            mask = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
            att = att.masked_fill(~mask, float("-inf")).softmax(dim=-1)
            y = F.dropout(att, p_drop, training=self.training) @ v
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln_1 = _norm(cfg)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = _norm(cfg)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """Decoder-only transformer. ``forward(idx [B, T] long) -> logits [B, T, vocab]``."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.config = cfg.validate()
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = _norm(cfg)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_weights:
            self.lm_head.weight = self.wte.weight
        self.apply(self._init_weights)
        # GPT-2 scaled init of residual projections: std 0.02/√(2·n_layer).
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        T = idx.size(1)
        if T > self.config.block_size:
            raise InfogeomError(f"sequence length {T} exceeds the model's block_size "
                                f"{self.config.block_size}")
        pos = torch.arange(T, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))

    @property
    def attention(self) -> str:
        """Current attention path, ``"sdpa"`` or ``"math"``."""
        return self.config.attention

    def set_attention(self, path: str) -> None:
        """Select the attention path (``"sdpa"`` or ``"math"``) for every block."""
        if path not in ATTENTION_PATHS:
            raise InfogeomError(f"unknown attention path {path!r}; choose one of "
                                f"{', '.join(ATTENTION_PATHS)}")
        self.config.attention = path
        for block in self.blocks:
            block.attn.path = path

    def num_parameters(self, non_embedding: bool = False) -> int:
        """Number of distinct parameters (tied weights counted once); optionally without embeddings."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.wpe.weight.numel()
            if not self.config.tie_weights:
                n -= self.wte.weight.numel()
        return n

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token ≈ 6·N_nonemb + 12·L·T·C (Kaplan et al. 2020; PaLM appendix B)."""
        cfg = self.config
        T = seq_len or cfg.block_size
        return 6.0 * self.num_parameters(non_embedding=True) + 12.0 * cfg.n_layer * T * cfg.n_embd

    @torch.no_grad()
    def generate(
        self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Autoregressive sampling; ``idx [B, T0] -> [B, T0 + max_new_tokens]``."""
        return generate(self, idx, max_new_tokens, self.config.block_size, temperature, top_k, generator)


@torch.no_grad()
def generate(
    model: nn.Module, idx: torch.Tensor, max_new_tokens: int, block_size: int, temperature: float = 1.0,
    top_k: int | None = None, generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Sample from any ``idx -> logits`` model (GPT or an adapted Hugging Face causal LM)."""
    for _ in range(max_new_tokens):
        logits = model(idx[:, -block_size:])[:, -1, :]
        if temperature <= 0:
            nxt = logits.argmax(dim=-1, keepdim=True)
        else:
            logits = logits / temperature
            if top_k is not None:
                kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            nxt = torch.multinomial(logits.softmax(dim=-1), 1, generator=generator)
        idx = torch.cat([idx, nxt], dim=1)
    return idx


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over all B·T positions: L = −(1/BT) Σ log p(y_t | x_≤t)."""
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))


@contextlib.contextmanager
def math_attention(model: nn.Module) -> Iterator[nn.Module]:
    """Temporarily route attention through the double-backward-capable math path.

    Works for any model with ``attention`` / ``set_attention(path)`` (GPT, ``HFCausalLM``); other models are
    yielded unchanged."""
    if not hasattr(model, "set_attention"):
        yield model
        return
    old = model.attention
    model.set_attention("math")
    try:
        yield model
    finally:
        model.set_attention(old)


def config_dict(cfg: GPTConfig) -> dict:
    return asdict(cfg)
