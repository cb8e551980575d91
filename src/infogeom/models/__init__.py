"""Language models: infogeom's GPT (and adapters for Hugging Face causal LMs)."""

from .gpt import GPT, GPTConfig, generate, lm_loss, math_attention

__all__ = ["GPT", "GPTConfig", "generate", "lm_loss", "math_attention"]
