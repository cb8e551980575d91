"""Checkpoint files: atomic checksummed writes, verified safe (``weights_only``) reads, naming, ``latest``.

A run keeps its checkpoints in ``<out_dir>/checkpoints/ckpt_<step>.pt``. A checkpoint is a dict of tensors and
plain containers only (``torch.load(weights_only=True)`` reads it without executing pickled code):
``format, version, step, train_time, tokens, config (dict), vocab_size, tokenizer (dict), model, optimizer,
scheduler (state dicts), rng (torch/CUDA/Python/NumPy per rank + the data generator), pending_losses,
world_size, last_eval, divergence``.

Integrity: the file is ``torch.save``'s bytes followed by an 82-byte trailer ``\ninfogeom-sha256 <hex>\n``,
the SHA-256 of every byte before it (so of every tensor, the config and all other state, and of the zip
structure around them). :func:`load_checkpoint` recomputes it before unpickling anything: a single flipped
bit anywhere is refused. ``torch.load`` itself ignores the trailer, so plain PyTorch still reads the file.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from collections.abc import Callable
from pathlib import Path

import torch

from ..data.cache import atomic_write
from ..errors import InfogeomError

FORMAT = "infogeom-checkpoint"
CKPT_DIR = "checkpoints"
_NAME = re.compile(r"^ckpt_(\d+)\.pt$")
_TRAILER = re.compile(rb"\ninfogeom-sha256 ([0-9a-f]{64})\n\Z")
TRAILER_BYTES = 82
# Types of the entries every reader relies on (anything else means a foreign or hand-edited file).
_SCHEMA = {"step": int, "train_time": (int, float), "tokens": int, "config": dict, "tokenizer": dict,
           "model": dict, "vocab_size": int, "last_eval": (dict, type(None))}


def checkpoint_path(out_dir: str | Path, step: int) -> Path:
    return Path(out_dir) / CKPT_DIR / f"ckpt_{step:08d}.pt"


def save_checkpoint(path: str | Path, obj: dict) -> Path:
    """Write ``obj`` to ``path`` atomically: temp file in the same folder, fsync, ``os.replace``, fsync dir.

    A crash or Ctrl-C at any moment leaves either the old file or the new one under ``path``, never a mix.
    """
    path = Path(path)
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    body = buffer.getvalue()
    trailer = b"\ninfogeom-sha256 " + hashlib.sha256(body).hexdigest().encode() + b"\n"

    def write(f) -> None:
        f.write(body)
        f.write(trailer)

    atomic_write(path, write)
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
        raise InfogeomError(f"checkpoint not found: {path}" if not path.exists() else
                            f"checkpoint {path} is not a regular file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InfogeomError(f"cannot read checkpoint {path}: {exc.strerror or exc}") from None
    match = _TRAILER.search(data[-TRAILER_BYTES:])
    if match is None:
        raise InfogeomError(f"cannot read checkpoint {path}: corrupted, truncated or not a checkpoint (it has no "
                            f"infogeom checksum)")
    body = data[:-TRAILER_BYTES]
    if hashlib.sha256(body).hexdigest() != match.group(1).decode():
        raise InfogeomError(f"checkpoint {path} is corrupted: its SHA-256 checksum does not match its contents")
    try:
        obj = torch.load(io.BytesIO(body), map_location=map_location, weights_only=True)
    except Exception as exc:  # zip/pickle/EOF/unsafe-global errors all mean the same thing to the user
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InfogeomError(f"cannot read checkpoint {path}: corrupted, truncated or not a checkpoint "
                            f"({type(exc).__name__}: {reason[:200]})") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise InfogeomError(f"{path} is not an infogeom checkpoint")
    missing = [k for k in ("step", "config", "tokenizer", "model") if k not in obj]
    if missing:
        raise InfogeomError(f"checkpoint {path} is incomplete: missing {', '.join(missing)}")
    for key, tp in _SCHEMA.items():
        value = obj.get(key, 0 if key != "last_eval" else None)
        if not isinstance(value, tp) or isinstance(value, bool) or (tp is int and value < 0):
            raise InfogeomError(f"checkpoint {path} is malformed: {key} is {type(value).__name__} "
                                f"{str(value)[:40]!r}")
    return obj


def list_checkpoints(out_dir: str | Path) -> list[Path]:
    """Checkpoints of a run, oldest (lowest step) first."""
    folder = Path(out_dir) / CKPT_DIR
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def resolve_checkpoint(spec: str | Path, out_dir: str | Path | None = None,
                       note: Callable[[str], None] = print) -> Path | None:
    """``'latest'`` → the newest checkpoint in ``out_dir`` that verifies (each one skipped is reported through
    ``note``), or ``None`` for a run stopped before its first checkpoint (its ``config.toml`` or ``.lock`` but
    no checkpoint: the caller starts it afresh). Anything else is a path."""
    if str(spec) != "latest":
        return Path(spec)
    if not out_dir:
        raise InfogeomError("--resume latest needs the run folder (--out DIR)")
    ckpts = list_checkpoints(out_dir)
    if not ckpts:
        if any((Path(out_dir) / name).is_file() for name in ("config.toml", ".lock")):
            return None
        raise InfogeomError(f"no checkpoint to resume in {Path(out_dir) / CKPT_DIR}")
    for path in reversed(ckpts):
        try:
            load_checkpoint(path)
        except InfogeomError as exc:
            note(f"infogeom: note: skipping {path.name}: {exc}")
            continue
        if path != ckpts[-1]:
            note(f"infogeom: note: resuming from {path}, the newest checkpoint that verifies")
        return path
    raise InfogeomError(f"none of the {len(ckpts)} checkpoint(s) in {Path(out_dir) / CKPT_DIR} verifies; "
                        f"nothing to resume from")


def run_dir_of(path: str | Path) -> Path:
    """The run folder holding checkpoint ``path`` (``<run>/checkpoints/ckpt_*.pt`` → ``<run>``)."""
    path = Path(path)
    return path.parent.parent if path.parent.name == CKPT_DIR else path.parent


def remove_temp_files(out_dir: str | Path) -> list[Path]:
    """Delete the temporary files that a killed write left in a run folder (``.NAME.*.tmp``,
    ``metrics.jsonl.tmp``); returns them.

    Call only while holding the run's lock (:class:`infogeom.train.rundir.RunLock`): no write is in flight."""
    out_dir = Path(out_dir)
    removed = [p for folder in (out_dir, out_dir / CKPT_DIR) if folder.is_dir()
               for p in folder.glob("*.tmp") if p.is_file()]
    for p in removed:
        p.unlink(missing_ok=True)
    return removed


def prune_checkpoints(out_dir: str | Path, keep_last: int) -> None:
    """Delete all but the ``keep_last`` newest checkpoints."""
    for old in list_checkpoints(out_dir)[:-keep_last]:
        old.unlink(missing_ok=True)
