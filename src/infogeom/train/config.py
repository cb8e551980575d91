"""Training configuration: dataclasses, TOML loading, ``section.key=value`` overrides and validation.

A TOML file holds top-level run keys plus ``[model]``, ``[data]``, ``[optim]`` (and ``[optim.options]``)
tables; every key is optional (defaults below) and unknown keys are errors. Overrides ``"section.key=value"``
(``"key=value"`` for top-level keys, ``"optim.options.NAME=value"`` for optimizer options) are applied after
the file. :data:`FIELD_HELP` documents every key (``infogeom train --help`` prints it).

Defaults train a 0.82M-parameter character-level GPT (4 layers, width 128, context 128) on ``shakespeare``.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import json
import math
import sys
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..errors import InfogeomError
from ..models.gpt import GPTConfig
from .limits import MAX_SEED, check_int
from .schedule import SCHEDULES, decay_steps

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ARCHS = ("gpt", "hf-gpt2", "hf")
DTYPES = {"float32": torch.float32, "bf16": torch.bfloat16}  # training precision -> autocast dtype


@dataclass
class ModelConfig(GPTConfig):
    """GPT shape (``GPTConfig`` fields; ``vocab_size`` comes from the tokenizer) plus the architecture and
    optional quantum layers (:func:`infogeom.models.quantum_layer.add_quantum_layers`).

    ``arch = "hf"`` loads the transformers checkpoint ``path`` instead: its shape fields (block_size, n_layer,
    n_head, n_embd, tie_weights) are then filled in from the checkpoint's config when the run starts, and
    ``dropout``, ``bias`` and ``norm`` are the checkpoint's own (the fields here are not used).

    ``lora_r > 0`` (arch hf or hf-gpt2) wraps the transformers model with PEFT LoRA adapters of rank ``lora_r``
    (scale ``lora_alpha / lora_r``) on the modules ``lora_targets`` (comma-separated module names; '' = PEFT's
    default for the architecture): only the adapters are trainable (:func:`infogeom.models.hf.add_lora`)."""

    arch: str = "gpt"
    path: str = ""
    lora_r: int = 0
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_targets: str = ""
    quantum_blocks: str = ""
    quantum_target: str = "mlp"
    n_qubits: int = 4
    quantum_depth: int = 2


@dataclass
class DataConfig:
    corpus: str = "shakespeare"
    tokenizer: str = "char"
    val_fraction: float = 0.1
    batch_size: int = 32
    block_size: int = 128
    cache_dir: str = ""
    max_corpus_mb: int = 1024


@dataclass
class OptimConfig:
    name: str = "adamw"
    lr: float = 2e-3
    weight_decay: float = 0.1
    warmup_steps: int = 50
    min_lr: float = 0.0
    schedule: str = "cosine"
    decay_fraction: float = 0.2
    grad_clip: float = 1.0
    params: str = ""
    options: dict = field(default_factory=dict)


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    max_steps: int = 1000
    max_seconds: float = 0.0
    grad_accum: int = 1
    eval_every: int = 100
    eval_batches: int = 20
    log_every: int = 10
    ckpt_every: int = 250
    keep_last: int = 3
    seed: int = 0
    device: str = "auto"
    dtype: str = "float32"
    out_dir: str = ""
    progress: bool = True
    tensorboard: bool = True

    def validate(self) -> TrainConfig:
        """Check every value; raise :class:`InfogeomError` naming the first bad key."""
        _check_types(self)
        m, d, o = self.model, self.data, self.optim
        if m.arch not in ARCHS:
            raise InfogeomError(f"unknown model.arch {m.arch!r}; choose one of {', '.join(ARCHS)}")
        m.validate()
        if (m.arch == "hf") != bool(m.path.strip()):
            raise InfogeomError("model.arch='hf' needs model.path (a transformers checkpoint folder or a cached "
                                "Hub name)" if m.arch == "hf" else
                                f"model.path is only used with model.arch='hf' (arch is {m.arch!r})")
        if m.arch == "hf":
            if d.tokenizer.strip() == "hf":
                d.tokenizer = f"hf:{m.path}"
            if not d.tokenizer.strip().startswith("hf:"):
                raise InfogeomError(f"model.arch='hf' reads text with the checkpoint's tokenizer: set "
                                    f"data.tokenizer='hf' (got {d.tokenizer!r}); --model hf:PATH sets both")
            if m.quantum_blocks.strip():
                raise InfogeomError("model.quantum_blocks is only available for model.arch='gpt'")
        if m.lora_r and m.arch == "gpt":
            raise InfogeomError("model.lora_r (LoRA adapters) is only available for model.arch 'hf' or 'hf-gpt2'")
        _non_negative(m.lora_r, "model.lora_r")
        _positive(m.lora_alpha, "model.lora_alpha")
        if not 0.0 <= m.lora_dropout < 1.0:
            raise InfogeomError(f"model.lora_dropout must be in [0, 1), got {m.lora_dropout}")
        if self.dtype not in DTYPES:
            raise InfogeomError(f"unknown dtype {self.dtype!r}; choose one of {', '.join(DTYPES)}")
        if m.arch == "hf-gpt2":
            gpt2 = GPTConfig()
            for key in ("bias", "tie_weights", "norm"):
                if getattr(m, key) != getattr(gpt2, key):
                    raise InfogeomError(f"model.{key}={getattr(m, key)!r} is not available for arch "
                                        f"'hf-gpt2' (GPT-2 has {key}={getattr(gpt2, key)!r})")
        if not d.corpus.strip():
            raise InfogeomError("data.corpus is empty")
        if not 0.0 < d.val_fraction < 1.0:
            raise InfogeomError(f"data.val_fraction must be strictly between 0 and 1, got {d.val_fraction}")
        _positive(d.batch_size, "data.batch_size")
        _positive(d.block_size, "data.block_size")
        if d.block_size > m.block_size and m.arch != "hf":  # hf: checked once the checkpoint's is known
            raise InfogeomError(f"data.block_size ({d.block_size}) exceeds model.block_size ({m.block_size})")
        _positive(o.lr, "optim.lr")
        for key in ("weight_decay", "min_lr", "grad_clip"):
            _non_negative(getattr(o, key), f"optim.{key}")
        if o.min_lr > o.lr:
            raise InfogeomError(f"optim.min_lr ({o.min_lr}) exceeds optim.lr ({o.lr})")
        _non_negative(o.warmup_steps, "optim.warmup_steps")
        if o.schedule not in SCHEDULES:
            raise InfogeomError(f"unknown optim.schedule {o.schedule!r}; choose one of {', '.join(SCHEDULES)}")
        if not 0.0 <= o.decay_fraction <= 1.0:
            raise InfogeomError(f"optim.decay_fraction must be in [0, 1], got {o.decay_fraction}")
        for key in ("max_steps", "grad_accum", "eval_batches", "log_every", "keep_last"):
            _positive(getattr(self, key), key)
        for key in ("max_seconds", "eval_every", "ckpt_every", "seed"):
            _non_negative(getattr(self, key), key)
        if o.warmup_steps > self.max_steps:
            raise InfogeomError(f"optim.warmup_steps ({o.warmup_steps}) exceeds max_steps ({self.max_steps}): "
                                f"shorten the warmup with --set optim.warmup_steps={self.max_steps // 10} (any "
                                f"value <= {self.max_steps}) or train longer with --max-steps {o.warmup_steps}")
        stable = self.max_steps - decay_steps(self.max_steps, o.decay_fraction)
        if o.schedule == "wsd" and o.warmup_steps > stable:
            raise InfogeomError(f"optim.warmup_steps ({o.warmup_steps}) runs into the WSD cooldown, which starts at "
                                f"step {stable} (max_steps {self.max_steps}, optim.decay_fraction "
                                f"{o.decay_fraction}): use --set optim.warmup_steps={stable} or less")
        _check_ranges(self)
        resolve_device(self.device, check_available=False)
        return self


# Largest accepted sizes and counts (memory is checked separately, once the vocabulary is known).
LIMITS = {"model.n_layer": 1024, "model.n_head": 1024, "model.n_embd": 1 << 16, "model.block_size": 1 << 20,
          "model.lora_r": 1 << 16, "data.batch_size": 1 << 20, "data.block_size": 1 << 20,
          "data.max_corpus_mb": 1 << 30,
          "max_steps": 10**12, "grad_accum": 1 << 20, "eval_batches": 1 << 20, "eval_every": 10**12,
          "log_every": 10**12, "ckpt_every": 10**12, "keep_last": 1 << 20, "optim.warmup_steps": 10**12,
          "seed": MAX_SEED}


def _check_ranges(cfg: TrainConfig) -> None:
    for key, high in LIMITS.items():
        section, _, name = key.rpartition(".")
        value = getattr(getattr(cfg, section) if section else cfg, name)
        low = 0 if key in ("seed", "eval_every", "ckpt_every", "optim.warmup_steps", "model.lora_r") else 1
        check_int(value, key, low, high)


FIELD_HELP = {
    "model.arch": "architecture: gpt (infogeom's GPT), hf-gpt2 (transformers' GPT-2 from these shape keys) or hf "
                  "(the pretrained checkpoint model.path; needs infogeom[hf])",
    "model.path": "with arch hf: a transformers checkpoint folder (config.json + safetensors) or a cached Hub name",
    "model.block_size": "longest context the model accepts (learned positions)",
    "model.n_layer": "number of transformer blocks",
    "model.n_head": "attention heads per block (must divide n_embd)",
    "model.n_embd": "residual stream width",
    "model.dropout": "dropout probability in [0, 1)",
    "model.bias": "biases in linear layers and LayerNorms",
    "model.tie_weights": "share the token embedding with the output layer",
    "model.norm": "layernorm or rmsnorm",
    "model.attention": "sdpa (fused kernel) or math (explicit; supports double backward)",
    "model.lora_r": "LoRA rank of PEFT adapters on an hf/hf-gpt2 model (0 = none; needs infogeom[peft]); only "
                    "the adapters train",
    "model.lora_alpha": "LoRA scale numerator: adapters add (lora_alpha / lora_r) B A x",
    "model.lora_dropout": "dropout on the LoRA adapters' input",
    "model.lora_targets": "comma-separated module names that get adapters ('' = PEFT's default for the arch)",
    "model.quantum_blocks": "comma-separated block indices whose MLP (or qkv) becomes a quantum layer ('' = none)",
    "model.quantum_target": "what the quantum layers replace: mlp or qkv",
    "model.n_qubits": "qubits per quantum layer",
    "model.quantum_depth": "ansatz layers per quantum layer",
    "data.corpus": "shakespeare, pydoc, a .txt file or folder, or hf:NAME[:CONFIG]",
    "data.tokenizer": "char, byte, bpe:N, hf:PATH or hf (the tokenizer of model.path)",
    "data.val_fraction": "fraction of the corpus (its end) held out for validation",
    "data.batch_size": "sequences per micro-step, summed over all processes (the global batch)",
    "data.block_size": "training sequence length (at most model.block_size)",
    "data.cache_dir": "token cache folder ('' = $INFOGEOM_CACHE or ~/.cache/infogeom)",
    "data.max_corpus_mb": "refuse local or hf: corpora larger than this many MiB",
    "optim.name": "registered optimizer (see `infogeom info`)",
    "optim.lr": "peak learning rate",
    "optim.weight_decay": "decoupled weight decay on matrices",
    "optim.warmup_steps": "linear warmup steps before the decay",
    "optim.min_lr": "learning rate reached at max_steps by the decay",
    "optim.schedule": "cosine (warmup, cosine decay) or wsd (warmup, constant, linear cooldown)",
    "optim.decay_fraction": "wsd: fraction of max_steps spent in the final linear cooldown",
    "optim.grad_clip": "clip the global gradient norm to this value (0 = off)",
    "optim.params": "train only the parameters matching these comma-separated globs (tried on each dotted "
                    "suffix of a name) or re:REGEX; the others are frozen ('' = all)",
    "optim.options": "extra keyword arguments of the optimizer, e.g. optim.options.momentum=0.9",
    "max_steps": "optimizer steps to train (the schedule's length)",
    "max_seconds": "stop earlier once this much training time has passed (0 = no limit)",
    "grad_accum": "micro-steps accumulated per optimizer step",
    "eval_every": "evaluate every N steps (0 = only at the end)",
    "eval_batches": "fixed batches per split used by each evaluation",
    "log_every": "write a metrics record every N steps (loss averaged over them)",
    "ckpt_every": "checkpoint every N steps (0 = only at the end and on Ctrl-C)",
    "keep_last": "checkpoints kept on disk (older ones are deleted)",
    "seed": "seed of initialization, data order and dropout",
    "device": "auto, cpu, cuda or cuda:N",
    "dtype": "training precision: float32, or bf16 (autocast forward/backward, float32 master weights, "
             "optimizer state and K-FAC factors; evaluation in float32)",
    "out_dir": "run folder ('' = runs/<date-time>)",
    "progress": "show a progress bar and print evaluations",
    "tensorboard": "also write TensorBoard logs to out_dir/tb when tensorboard is installed",
}


def _positive(value: float, key: str) -> None:
    if not value > 0 or not math.isfinite(value):
        raise InfogeomError(f"{key} must be positive, got {value}")


def _non_negative(value: float, key: str) -> None:
    if not value >= 0 or not math.isfinite(value):
        raise InfogeomError(f"{key} must be non-negative, got {value}")


def resolve_device(spec: str, check_available: bool = True) -> torch.device:
    """``auto`` → cuda if available else cpu; anything else must parse as a torch device."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError):
        raise InfogeomError(f"unknown device {spec!r}; use auto, cpu, cuda or cuda:N") from None
    if check_available and device.type == "cuda" and not torch.cuda.is_available():
        raise InfogeomError(f"device {spec!r} requested but CUDA is not available")
    return device


# --- typed construction from dicts --------------------------------------------------------------------------

SECTIONS = {"model": ModelConfig, "data": DataConfig, "optim": OptimConfig}


def _field_types(cls: type) -> dict[str, type]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.name != "vocab_size"}


def _type_name(tp: type) -> str:
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string", dict: "a table"}[tp]


def _coerce(value, tp: type, key: str):
    """Value of TOML/JSON type → field type (ints are accepted as floats); wrong types raise."""
    ok = isinstance(value, tp) and not (tp is not bool and isinstance(value, bool))
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not ok:
        raise InfogeomError(f"{key} must be {_type_name(tp)}, got {value!r}")
    return value


def _check_types(cfg: TrainConfig) -> None:
    for prefix, obj in (("", cfg), *((f"{s}.", getattr(cfg, s)) for s in SECTIONS)):
        for name, tp in _field_types(type(obj)).items():
            if name not in SECTIONS:
                setattr(obj, name, _coerce(getattr(obj, name), tp, prefix + name))


def config_from_dict(data: dict, base: TrainConfig | None = None) -> TrainConfig:
    """``base`` (default: the defaults) updated with the nested dict ``data``; unknown keys raise."""
    cfg = copy.deepcopy(base) if base is not None else TrainConfig()
    top = _field_types(TrainConfig)
    for key, value in data.items():
        if key in SECTIONS:
            if not isinstance(value, dict):
                raise InfogeomError(f"[{key}] must be a table, got {value!r}")
            section = getattr(cfg, key)
            types = _field_types(type(section))
            for sub, v in value.items():
                if sub not in types:
                    raise InfogeomError(f"unknown config key {key}.{sub}" + (
                        " (set from the tokenizer)" if sub == "vocab_size" else _suggest(f"{key}.{sub}")))
                setattr(section, sub, _coerce(v, types[sub], f"{key}.{sub}"))
        elif key in top:
            setattr(cfg, key, _coerce(value, top[key], key))
        else:
            raise InfogeomError(f"unknown config key {key}{_suggest(key)}")
    return cfg


def config_keys() -> list[str]:
    """Every settable key: top-level run keys and ``section.key`` (``optim.options.NAME`` is free-form)."""
    top = [k for k in _field_types(TrainConfig) if k not in SECTIONS]
    return top + [f"{s}.{k}" for s, cls in SECTIONS.items() for k in _field_types(cls)]


def _suggest(key: str) -> str:
    """'; did you mean X?' for the valid key nearest to ``key`` (difflib), with where the list is."""
    close = difflib.get_close_matches(key, config_keys(), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]}?" if close else ""
    return f"{hint} (`infogeom train --help` lists every key)"


def _parse_value(text: str, tp: type | None, key: str):
    """Command-line value text → typed value; strings need no quotes, options are parsed as TOML values."""
    text = text.strip()
    try:
        if tp is str:
            return text[1:-1] if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"" else text
        if tp is bool:
            return {"true": True, "false": False, "1": True, "0": False}[text.lower()]
        if tp in (int, float):
            return tp(text)
        return tomllib.loads(f"v = {text}")["v"]
    except (KeyError, ValueError, tomllib.TOMLDecodeError):
        if tp is None:  # optimizer option: accept an unquoted string
            return text
        raise InfogeomError(f"{key} must be {_type_name(tp)}, got {text!r}") from None


def apply_overrides(cfg: TrainConfig, overrides: list[str] | tuple[str, ...]) -> TrainConfig:
    """Apply ``"section.key=value"`` strings in order."""
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise InfogeomError(f"bad override {item!r}; expected section.key=value")
        parts = key.split(".")
        if parts[0] == "train" and len(parts) == 2:  # train.KEY names the top-level run key KEY
            parts = parts[1:]
        if parts[:2] == ["optim", "options"] and len(parts) == 3:
            cfg.optim.options[parts[2]] = _parse_value(text, None, key)
            continue
        if len(parts) == 1 and parts[0] in _field_types(TrainConfig) and parts[0] not in SECTIONS:
            patch = {parts[0]: _parse_value(text, _field_types(TrainConfig)[parts[0]], key)}
        elif len(parts) == 2 and parts[0] in SECTIONS and parts[1] in _field_types(SECTIONS[parts[0]]):
            tp = _field_types(SECTIONS[parts[0]])[parts[1]]
            patch = {parts[0]: {parts[1]: _parse_value(text, tp, key)}}
        else:
            raise InfogeomError(f"unknown config key {key}{_suggest(key)}")
        cfg = config_from_dict(patch, base=cfg)
    return cfg


def load_config(toml_path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
                base: TrainConfig | None = None, validate: bool = True) -> TrainConfig:
    """Defaults (or a copy of ``base``) ← TOML file ← overrides, validated unless ``validate=False``."""
    cfg = copy.deepcopy(base) if base is not None else TrainConfig()
    if toml_path is not None:
        path = Path(toml_path)
        if path.exists() and not path.is_file():
            raise InfogeomError(f"config file {path} is not a regular file")
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise InfogeomError(f"config file not found: {path}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise InfogeomError(f"cannot read config file {path}: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise InfogeomError(f"config file {path} is not valid TOML: {exc}") from None
        cfg = config_from_dict(data, base=cfg)
    cfg = apply_overrides(cfg, overrides)
    return cfg.validate() if validate else cfg


def config_to_dict(cfg: TrainConfig) -> dict:
    """Nested dict of plain values (JSON/TOML/checkpoint safe); ``model.vocab_size`` is left out."""
    data = json.loads(json.dumps(asdict(cfg)))
    del data["model"]["vocab_size"]
    return data


def dumps_toml(cfg: TrainConfig) -> str:
    """The config as a TOML document that :func:`load_config` reads back to an equal config."""
    def value(v) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{json.dumps(k)} = {value(x)}" for k, x in v.items()) + "}"
        raise InfogeomError(f"cannot write {v!r} to TOML")

    data = config_to_dict(cfg)
    lines = [f"{k} = {value(v)}" for k, v in data.items() if k not in SECTIONS]
    for section in SECTIONS:
        lines += ["", f"[{section}]"]
        lines += [f"{k} = {value(v)}" for k, v in data[section].items()]
    return "\n".join(lines) + "\n"
