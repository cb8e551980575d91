"""Checkpoint files: atomic writes, safe (``weights_only``) reads, naming, ``latest`` and pruning.

A run keeps its checkpoints in ``<out_dir>/checkpoints/ckpt_<step>.pt``. A checkpoint is a dict of tensors and
plain containers only (``torch.load(weights_only=True)`` reads it without executing pickled code):
``format, version, step, train_time, tokens, config (dict), vocab_size, tokenizer (dict), model, optimizer,
scheduler (state dicts), rng (torch/CUDA/Python/NumPy per rank + the data generator), pending_losses,
world_size, last_eval``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from ..data.cache import atomic_write
from ..errors import InfogeomError

FORMAT = "infogeom-checkpoint"
CKPT_DIR = "checkpoints"
_NAME = re.compile(r"^ckpt_(\d+)\.pt$")


def checkpoint_path(out_dir: str | Path, step: int) -> Path:
    return Path(out_dir) / CKPT_DIR / f"ckpt_{step:08d}.pt"


def save_checkpoint(path: str | Path, obj: dict) -> Path:
    """Write ``obj`` to ``path`` atomically: temp file in the same folder, fsync, ``os.replace``, fsync dir.

    A crash or Ctrl-C at any moment leaves either the old file or the new one under ``path``, never a mix.
    """
    path = Path(path)
    atomic_write(path, lambda f: torch.save(obj, f))
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Read an infogeom checkpoint with ``torch.load(weights_only=True)``; problems raise one-line errors."""
    path = Path(path)
    if not path.is_file():
        raise InfogeomError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # zip/pickle/EOF/unsafe-global errors all mean the same thing to the user
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InfogeomError(f"cannot read checkpoint {path}: corrupted, truncated or not a checkpoint "
                            f"({type(exc).__name__}: {reason[:200]})") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise InfogeomError(f"{path} is not an infogeom checkpoint")
    missing = [k for k in ("step", "config", "tokenizer", "model") if k not in obj]
    if missing:
        raise InfogeomError(f"checkpoint {path} is incomplete: missing {', '.join(missing)}")
    return obj


def list_checkpoints(out_dir: str | Path) -> list[Path]:
    """Checkpoints of a run, oldest (lowest step) first."""
    folder = Path(out_dir) / CKPT_DIR
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def resolve_checkpoint(spec: str | Path, out_dir: str | Path | None = None) -> Path:
    """``'latest'`` → the newest checkpoint in ``out_dir``; anything else is a path."""
    if str(spec) != "latest":
        return Path(spec)
    if not out_dir:
        raise InfogeomError("--resume latest needs the run folder (--out DIR)")
    ckpts = list_checkpoints(out_dir)
    if not ckpts:
        raise InfogeomError(f"no checkpoint to resume in {Path(out_dir) / CKPT_DIR}")
    return ckpts[-1]


def run_dir_of(path: str | Path) -> Path:
    """The run folder holding checkpoint ``path`` (``<run>/checkpoints/ckpt_*.pt`` → ``<run>``)."""
    path = Path(path)
    return path.parent.parent if path.parent.name == CKPT_DIR else path.parent


def prune_checkpoints(out_dir: str | Path, keep_last: int) -> None:
    """Delete all but the ``keep_last`` newest checkpoints."""
    for old in list_checkpoints(out_dir)[:-keep_last]:
        old.unlink(missing_ok=True)
