"""A run's model and data built from its config, and a trained model loaded back from a checkpoint."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn as nn

from ..data import TokenData, Tokenizer, prepare_data, tokenizer_from_dict
from ..errors import InfogeomError
from ..models.gpt import GPT, GPTConfig
from ..models.quantum_layer import add_quantum_layers
from .checkpoint import load_checkpoint
from .config import DataConfig, ModelConfig, TrainConfig, config_from_dict
from .limits import check_memory, estimate_bytes


def build_model(cfg: ModelConfig, vocab_size: int) -> nn.Module:
    """A freshly initialized model (uses the global torch RNG): GPT (with quantum layers in
    ``cfg.quantum_blocks``) or the Hugging Face GPT-2 adapter."""
    if cfg.arch == "hf-gpt2":
        from ..models.hf import HFCausalLM
        return HFCausalLM.from_gpt2(vocab_size, cfg.block_size, cfg.n_layer, cfg.n_head, cfg.n_embd,
                                    dropout=cfg.dropout, attention=cfg.attention)
    extra = ("arch", "quantum_blocks", "quantum_target", "n_qubits", "quantum_depth")
    fields = {k: v for k, v in asdict(cfg).items() if k not in extra}
    model = GPT(GPTConfig(**{**fields, "vocab_size": vocab_size}))
    if cfg.quantum_blocks.strip():
        try:
            blocks = [int(b) for b in cfg.quantum_blocks.split(",")]
        except ValueError:
            raise InfogeomError(f"model.quantum_blocks must be comma-separated block indices, got "
                                f"{cfg.quantum_blocks!r}") from None
        add_quantum_layers(model, blocks, cfg.quantum_target, cfg.n_qubits, cfg.quantum_depth)
    return model


def prepare_run_data(cfg: DataConfig) -> TokenData:
    """Tokenized train/val splits of ``cfg.corpus`` (memory-mapped from the cache after the first time)."""
    return prepare_data(cfg.corpus, cfg.tokenizer, cfg.val_fraction, cfg.cache_dir or None,
                        cfg.max_corpus_mb << 20)


def load_state(model: nn.Module, state: dict, source: str | Path) -> None:
    """``model.load_state_dict(state)`` with a one-line error when the checkpoint belongs to another model."""
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())
        raise InfogeomError(f"checkpoint {source} does not fit this model: {detail[:300]}") from None


def config_of(ckpt: dict, source: str | Path) -> TrainConfig:
    """The TrainConfig stored in a checkpoint."""
    try:
        return config_from_dict(ckpt["config"]).validate()
    except InfogeomError as exc:
        raise InfogeomError(f"checkpoint {source} holds an invalid config: {exc}") from None


def load_model(checkpoint_path: str | Path, device: str | torch.device = "cpu"
               ) -> tuple[nn.Module, Tokenizer, TrainConfig]:
    """(model in eval mode on ``device``, its tokenizer, its training config) from a checkpoint file."""
    ckpt = load_checkpoint(checkpoint_path)
    cfg = config_of(ckpt, checkpoint_path)
    tokenizer = tokenizer_from_dict(ckpt["tokenizer"])
    check_memory(estimate_bytes(cfg.model, tokenizer.vocab_size, 1, 1, training=False), torch.device(device),
                 f"the model of checkpoint {checkpoint_path}")
    model = build_model(cfg.model, tokenizer.vocab_size)
    load_state(model, ckpt["model"], checkpoint_path)
    return model.to(device).eval(), tokenizer, cfg
