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

Pretrained checkpoints (``model.arch = "hf"``): :func:`inspect_checkpoint` reads a transformers folder's
``config.json`` (or a Hub name already in the local Hugging Face cache: ``local_files_only``, never the network)
and counts the parameters of the architecture on the ``meta`` device, so the memory check runs before any
weight is read; :func:`load_pretrained` then loads the weights (float32) with the requested attention path and
:func:`from_config_dict` rebuilds the architecture from the config stored in an infogeom checkpoint.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

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


def add_lora(model: HFCausalLM, r: int, alpha: float = 16.0, dropout: float = 0.0, targets: str = "") -> HFCausalLM:
    """Wrap ``model.model`` in place with PEFT LoRA adapters W x + (α/r) B A x (A ``[r, d_in]`` random, B
    ``[d_out, r]`` zero: the function is unchanged at start) on the modules ``targets`` (comma-separated names;
    '' = PEFT's default for the architecture, e.g. GPT-2 ``c_attn``, Llama ``q_proj,v_proj``). Every other
    parameter is frozen; A and B are ``nn.Linear`` maps (K-FAC preconditions them). Needs ``peft``
    (``pip install 'infogeom[peft]'``); draws A from the global torch RNG."""
    import warnings

    try:
        import peft
    except ImportError as exc:
        raise InfogeomError("LoRA adapters (model.lora_r) need the optional 'peft' package: "
                            "pip install 'infogeom[peft]'") from exc
    from .linear import CONV1D, linear_kind

    names = [t.strip() for t in targets.split(",") if t.strip()] or None
    conv1d = any(linear_kind(m) == CONV1D for m in model.model.modules())  # GPT-2 stores weights [d_in, d_out]
    config = peft.LoraConfig(r=int(r), lora_alpha=alpha, lora_dropout=dropout, target_modules=names,
                             fan_in_fan_out=conv1d)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # transformers deprecations inside peft
            model.model = peft.get_peft_model(model.model, config)
    except ValueError as exc:
        raise InfogeomError(f"cannot add LoRA adapters (model.lora_targets={targets!r}): {_first_line(exc)}") from None
    return model


def merge_lora(model: HFCausalLM) -> nn.Module:
    """The transformers model of ``model``; with LoRA adapters, merged into its weights (W ← W + (α/r) B A,
    PEFT's ``merge_and_unload``; ``model`` is changed)."""
    return model.model.merge_and_unload() if hasattr(model.model, "merge_and_unload") else model.model


WEIGHT_FILES = ("*.safetensors", "pytorch_model*.bin")


def transformers_module():
    """``transformers`` with its progress bars off, or a one-line error naming the extra to install."""
    try:
        import transformers
    except ImportError as exc:
        raise InfogeomError("Hugging Face models need the optional 'transformers' package: "
                            "pip install 'infogeom[hf]'") from exc
    transformers.utils.logging.disable_progress_bar()
    return transformers


def _first_line(exc: BaseException) -> str:
    return " ".join((str(exc).strip().splitlines() or [type(exc).__name__])[0].split())[:300]


def source_of(path: str) -> tuple[str, bool]:
    """(name for ``from_pretrained``, is a local folder); a missing or non-folder local path is an error."""
    p = Path(path).expanduser()
    if p.exists() or path.startswith((".", "/", "~")) or path.count("/") > 1:
        if not p.is_dir():
            raise InfogeomError(f"hf:{path}: no such folder" if not p.exists() else f"hf:{path} is not a folder")
        if not (p / "config.json").is_file():
            raise InfogeomError(f"hf:{path} is not a transformers checkpoint (no config.json in the folder)")
        if not any(any(p.glob(pattern)) for pattern in WEIGHT_FILES):
            raise InfogeomError(f"hf:{path} is not a transformers checkpoint (config.json but no weights: "
                                f"model.safetensors or pytorch_model.bin)")
        return str(p), True
    return path, False


@dataclass
class CheckpointInfo:
    """What :func:`inspect_checkpoint` learns without loading weights."""

    source: str
    config: object  # transformers.PretrainedConfig
    parameters: int  # distinct parameters (tied once)

    @property
    def shape(self) -> dict:
        """infogeom's ModelConfig shape fields (block_size, n_layer, n_head, n_embd, tie_weights)."""
        text = self.config.get_text_config()
        block = getattr(text, "max_position_embeddings", None) or getattr(text, "n_positions", None) or 2048
        return {"block_size": int(block), "n_layer": int(text.num_hidden_layers),
                "n_head": int(text.num_attention_heads), "n_embd": int(text.hidden_size),
                "tie_weights": bool(getattr(text, "tie_word_embeddings", False))}

    @property
    def vocab_size(self) -> int:
        return int(self.config.get_text_config().vocab_size)


def _causal_lm_on_meta(transformers, config) -> nn.Module:
    try:
        with torch.device("meta"):
            return transformers.AutoModelForCausalLM.from_config(config)
    except (ValueError, KeyError, TypeError) as exc:
        raise InfogeomError(f"{type(config).__name__} ({config.model_type}) is not a causal language model "
                            f"transformers can build: {_first_line(exc)}") from None


def inspect_checkpoint(path: str) -> CheckpointInfo:
    """Config and parameter count of the checkpoint ``path`` (a local folder or a locally cached Hub name)."""
    transformers = transformers_module()
    source, local = source_of(path)
    try:
        config = transformers.AutoConfig.from_pretrained(source, local_files_only=True)
    except (ValueError, KeyError) as exc:  # unknown model_type, malformed config
        raise InfogeomError(f"hf:{path}: architecture unknown to transformers {transformers.__version__}: "
                            f"{_first_line(exc)}") from None
    except OSError as exc:
        if local:
            raise InfogeomError(f"hf:{path}: cannot read config.json: {_first_line(exc)}") from None
        raise InfogeomError(f"hf:{path} is neither a local folder nor in the local Hugging Face cache, and "
                            f"infogeom never downloads (offline: local_files_only); fetch it first, e.g. "
                            f"`hf download {path}`, or pass the folder") from None
    meta = _causal_lm_on_meta(transformers, config)
    return CheckpointInfo(source, config, sum(p.numel() for p in meta.parameters()))


def load_pretrained(info: CheckpointInfo, attention: str = "math") -> HFCausalLM:
    """The checkpoint's weights (float32) in an :class:`HFCausalLM` on the CPU, attention path ``attention``."""
    transformers = transformers_module()
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(
            info.source, config=info.config, local_files_only=True, dtype=torch.float32,
            attn_implementation=ATTENTION[attention])
    except (OSError, ValueError) as exc:
        raise InfogeomError(f"cannot load the weights of hf:{info.source}: {_first_line(exc)}") from None
    return HFCausalLM(model)


def config_dict(model: HFCausalLM) -> dict:
    """The transformers config as plain JSON values (fits a ``weights_only`` checkpoint)."""
    return json.loads(model.model.config.to_json_string(use_diff=False))


def from_config_dict(data: dict, attention: str = "math") -> HFCausalLM:
    """A freshly initialised model of the architecture ``data`` (:func:`config_dict`), for loading a state."""
    transformers = transformers_module()
    try:
        config = transformers.AutoConfig.for_model(**data)
    except (ValueError, KeyError, TypeError) as exc:
        raise InfogeomError(f"stored transformers config is not usable here: {_first_line(exc)}") from None
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation=ATTENTION[attention])
    return HFCausalLM(model.float())


def export_pretrained(model: nn.Module, tokenizer, out: Path) -> list[str]:
    """Write ``model`` (an :class:`HFCausalLM`; LoRA adapters merged into the weights, :func:`merge_lora`: a
    plain transformers checkpoint) and, when it has a ``tokenizers`` backend (bpe:N, hf:PATH),
    its tokenizer as a ``PreTrainedTokenizerFast`` to the new folder ``out`` with ``save_pretrained``: filled
    in a hidden temporary folder beside it, then renamed into place (no partial folder). Returns the files."""
    import os
    import shutil

    from ..data.cache import make_temp_dir

    if not isinstance(model, HFCausalLM):
        raise InfogeomError(f"only transformers models (arch hf or hf-gpt2) can be exported, not "
                            f"{type(model).__name__}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InfogeomError(f"{out} already exists and is not an empty folder; choose a new OUT")
    transformers = transformers_module()
    tmp = make_temp_dir(out.absolute().parent)
    try:
        merge_lora(model).save_pretrained(tmp)
        backend = getattr(tokenizer, "_tok", None)
        if backend is not None:
            transformers.PreTrainedTokenizerFast(tokenizer_object=backend).save_pretrained(tmp)
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return sorted(p.name for p in out.iterdir())
