"""A run's model and data built from its config, and a trained model loaded back from a checkpoint.

``load_model`` also takes ``"hf:PATH"``: a pretrained transformers checkpoint (config + safetensors + tokenizer)
as it is, with a default run config around it (``model.arch = "hf"``), so ``eval``, ``sample`` and ``curvature``
work on it directly."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn as nn

from ..data import TokenData, Tokenizer, build_tokenizer, prepare_data, tokenizer_from_dict
from ..errors import InfogeomError
from ..models.gpt import GPT, GPTConfig
from ..models.quantum_layer import add_quantum_layers
from .checkpoint import load_checkpoint
from .config import DataConfig, ModelConfig, TrainConfig, config_from_dict
from .limits import check_memory, estimate_bytes


def inspect_hf(cfg: ModelConfig):
    """The :class:`~infogeom.models.hf.CheckpointInfo` of ``cfg.path``; fills ``cfg``'s shape fields from it."""
    from ..models.hf import inspect_checkpoint

    info = inspect_checkpoint(cfg.path)
    for key, value in info.shape.items():
        setattr(cfg, key, value)
    return info


def check_vocab(tokenizer: Tokenizer, model_vocab: int, what: str) -> None:
    """Every token id of ``tokenizer`` must have a row in the model's embedding (padding rows are fine)."""
    if tokenizer.vocab_size > model_vocab:
        raise InfogeomError(f"the tokenizer ({tokenizer.spec}, {tokenizer.vocab_size:,} tokens) does not match "
                            f"{what}: its vocabulary has only {model_vocab:,} rows")


def build_model(cfg: ModelConfig, vocab_size: int, hf=None) -> nn.Module:
    """A freshly initialized model (uses the global torch RNG): GPT (with quantum layers in
    ``cfg.quantum_blocks``) or the Hugging Face GPT-2 adapter, with LoRA adapters when ``cfg.lora_r`` (hf archs).
    ``arch = "hf"``: ``hf`` is the checkpoint's
    :class:`~infogeom.models.hf.CheckpointInfo` (its pretrained weights are loaded) or a stored transformers
    config dict (architecture only, for a state dict to be loaded into)."""
    if cfg.arch in ("hf", "hf-gpt2"):
        from ..models.hf import HFCausalLM, add_lora, from_config_dict, load_pretrained
        if cfg.arch == "hf-gpt2":
            model = HFCausalLM.from_gpt2(vocab_size, cfg.block_size, cfg.n_layer, cfg.n_head, cfg.n_embd,
                                         dropout=cfg.dropout, attention=cfg.attention)
        elif hf is None:
            raise InfogeomError("model.arch='hf' needs the checkpoint (inspect_hf) or its stored config")
        else:
            model = from_config_dict(hf, cfg.attention) if isinstance(hf, dict) else load_pretrained(hf, cfg.attention)
        if cfg.lora_r:
            add_lora(model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_targets)
        return model
    extra = ("arch", "path", "quantum_blocks", "quantum_target", "n_qubits", "quantum_depth", "lora_r",
             "lora_alpha", "lora_dropout", "lora_targets")
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


def hf_run_config(path: str) -> tuple[TrainConfig, object]:
    """The default run config around the pretrained checkpoint ``path`` (arch hf, its tokenizer, its shape;
    the training window is the default one, shortened to the model's context) and its CheckpointInfo."""
    cfg = config_from_dict({"model": {"arch": "hf", "path": path}, "data": {"tokenizer": "hf"}})
    info = inspect_hf(cfg.model)
    cfg.data.block_size = min(cfg.data.block_size, cfg.model.block_size)
    return cfg.validate(), info


def load_model(checkpoint_path: str | Path, device: str | torch.device = "cpu"
               ) -> tuple[nn.Module, Tokenizer, TrainConfig]:
    """(model in eval mode on ``device``, its tokenizer, its training config) from a checkpoint file, or from
    ``"hf:PATH"`` (a transformers checkpoint folder: its weights, tokenizer and :func:`hf_run_config`)."""
    device = torch.device(device)
    if str(checkpoint_path).startswith("hf:"):
        cfg, info = hf_run_config(str(checkpoint_path)[3:])
        tokenizer = build_tokenizer(cfg.data.tokenizer, "")
        check_vocab(tokenizer, info.vocab_size, f"the model hf:{cfg.model.path}")
        check_memory(estimate_bytes(cfg.model, info.vocab_size, 1, 1, training=False, params=info.parameters),
                     device, f"the model hf:{cfg.model.path} ({info.parameters:,} parameters)")
        return build_model(cfg.model, info.vocab_size, info).to(device).eval(), tokenizer, cfg
    ckpt = load_checkpoint(checkpoint_path)
    cfg = config_of(ckpt, checkpoint_path)
    tokenizer = tokenizer_from_dict(ckpt["tokenizer"])
    hf_config = ckpt.get("hf_config") if cfg.model.arch == "hf" else None
    if cfg.model.arch == "hf" and not isinstance(hf_config, dict):
        raise InfogeomError(f"checkpoint {checkpoint_path} of an arch 'hf' run lacks its transformers config")
    vocab = int(hf_config["vocab_size"]) if hf_config and "vocab_size" in hf_config else tokenizer.vocab_size
    check_memory(estimate_bytes(cfg.model, vocab, 1, 1, training=False), device,
                 f"the model of checkpoint {checkpoint_path}")
    model = build_model(cfg.model, tokenizer.vocab_size, hf_config)
    load_state(model, ckpt["model"], checkpoint_path)
    return model.to(device).eval(), tokenizer, cfg
