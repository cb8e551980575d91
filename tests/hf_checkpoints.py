"""Tiny random transformers checkpoints of three families, saved with ``save_pretrained`` beside a byte-level BPE
tokenizer trained with ``tokenizers`` on a small local text (nothing is downloaded)."""

from __future__ import annotations

from pathlib import Path

import torch

# ~60 KB of local text: the project's own documentation.
TEXT_FILE = Path(__file__).resolve().parents[1] / "README.md"
VOCAB = 256  # the byte alphabet: the smallest byte-level BPE
FAMILIES = ("gpt2", "neox", "llama")


def corpus(tmp: Path) -> Path:
    path = tmp / "corpus.txt"
    if not path.exists():
        path.write_text(TEXT_FILE.read_text(encoding="utf-8")[:30000], encoding="utf-8")
    return path


def _config(family: str, vocab: int = VOCAB, width: int = 32, layers: int = 2):
    """The tiny test configuration of ``family`` (``width``/``layers`` scale it up for the benchmark)."""
    import transformers as tf

    common = dict(vocab_size=vocab, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    if family == "gpt2":  # Conv1D (transposed weights), fused qkv, tied head, learned positions
        return tf.GPT2Config(n_positions=64, n_embd=width, n_layer=layers, n_head=4, **common)
    if family == "neox":  # parallel residual, partial rotary, fused qkv, untied head
        return tf.GPTNeoXConfig(max_position_embeddings=64, hidden_size=width, num_hidden_layers=layers,
                                num_attention_heads=4, intermediate_size=2 * width, use_parallel_residual=True,
                                rotary_pct=0.5, tie_word_embeddings=False, **common)
    if family == "llama":  # RoPE, RMSNorm, grouped-query attention (4 query / 2 key-value heads), SwiGLU, untied
        return tf.LlamaConfig(max_position_embeddings=64, hidden_size=width, num_hidden_layers=layers,
                              num_attention_heads=4, num_key_value_heads=2, intermediate_size=2 * width,
                              tie_word_embeddings=False, **common)
    raise ValueError(family)


def tokenizer(text: str, vocab: int = VOCAB):
    """A byte-level BPE of at most ``vocab`` tokens, as a ``PreTrainedTokenizerFast``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([text], trainers.BpeTrainer(vocab_size=vocab, show_progress=False,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok)


def make_checkpoint(tmp: Path, family: str, seed: int = 0, text: str | None = None, vocab: int = VOCAB,
                    **shape) -> Path:
    """``tmp/<family>``: config.json + model.safetensors + tokenizer files (BPE trained on ``text``, default
    :func:`corpus`); ``shape`` (``width``, ``layers``) as in :func:`_config`."""
    from transformers import AutoModelForCausalLM

    out = tmp / family
    if (out / "config.json").exists():
        return out
    torch.manual_seed(seed)
    AutoModelForCausalLM.from_config(_config(family, vocab, **shape)).save_pretrained(out)
    tokenizer(text or corpus(tmp).read_text(encoding="utf-8"), vocab).save_pretrained(out)
    return out
