"""Tokenized train/validation data, cached as memory-mapped ``.npy`` arrays, and seeded random-window batches.

Split: the corpus string of n characters is cut at ``n − round(n·val_fraction)``; the *last*
``val_fraction`` of the text is validation, the rest training (no shuffling: deterministic, and only the
passage at the cut straddles both splits). BPE merges are learned on the training split only; the char
vocabulary is the character set of the whole corpus (so validation never meets an unknown character).

Cache: ``<cache_dir>/<key>/{tokenizer.json, train.npy, val.npy, meta.json}`` with
``key = sha256(corpus text, tokenizer spec, val_fraction)``; ids are uint16 when the vocabulary has at most
65,536 tokens, else uint32. An entry is built in a temporary folder and renamed into place, so concurrent runs
(e.g. DDP ranks) and interrupted runs never see a partial entry; an unreadable entry is rebuilt. A second run
with the same inputs only reads the corpus, hashes it and memory-maps the arrays.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import InfogeomError
from .cache import cache_root, ensure_dir, file_lock, make_temp_dir, sha256_hex
from .corpus import load_corpus
from .text import MAX_CORPUS_BYTES
from .tokenizer import Tokenizer, build_tokenizer, load_tokenizer, parse_tokenizer_spec

SPLITS = ("train", "val")
CACHE_VERSION = 1


@dataclass
class TokenData:
    """Token ids of both splits (1-D integer memmaps) and the tokenizer that produced them."""

    tokenizer: Tokenizer
    train: np.ndarray
    val: np.ndarray
    path: Path | None = None  # cache entry folder

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    def split(self, name: str) -> np.ndarray:
        if name not in SPLITS:
            raise InfogeomError(f"unknown data split {name!r}; choose train or val")
        return self.train if name == "train" else self.val

    def check_block_size(self, block_size: int) -> None:
        """Both splits must hold ≥ ``block_size + 1`` tokens (an input window plus its shifted target)."""
        if not isinstance(block_size, int) or block_size < 1:
            raise InfogeomError(f"block_size must be a positive integer, got {block_size!r}")
        for name in SPLITS:
            n = len(self.split(name))
            if n < block_size + 1:
                raise InfogeomError(
                    f"the {name} split has only {n} tokens but block_size {block_size} needs at least "
                    f"{block_size + 1}; use a larger corpus, another val_fraction or a smaller block_size")

    def get_batch(self, split: str, batch_size: int, block_size: int, generator: torch.Generator,
                  device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """``batch_size`` random windows: ``x[b] = data[s_b : s_b+T]``, ``y[b] = data[s_b+1 : s_b+T+1]``.

        Starts ``s_b ~ U{0, …, n−T−1}`` are drawn from ``generator`` (a CPU ``torch.Generator``) only, so
        the batch sequence is a function of the generator state. Returns int64 tensors
        ``[batch_size, block_size]``; one fancy-indexing gather, cost O(B·T).
        """
        data = self.split(split)
        self.check_block_size(block_size)
        if not isinstance(batch_size, int) or batch_size < 1:
            raise InfogeomError(f"batch_size must be a positive integer, got {batch_size!r}")
        starts = torch.randint(len(data) - block_size, (batch_size,), generator=generator).numpy()
        window = torch.from_numpy(data[starts[:, None] + np.arange(block_size + 1)].astype(np.int64))
        x, y = window[:, :-1].contiguous(), window[:, 1:].contiguous()
        device = torch.device(device)
        if device.type == "cuda":
            return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
        return x.to(device), y.to(device)


def split_text(text: str, val_fraction: float) -> tuple[str, str]:
    """(train, val): validation is the last ``round(len(text)·val_fraction)`` characters."""
    n_val = round(len(text) * val_fraction)
    if n_val == 0 or n_val == len(text):
        raise InfogeomError(f"the corpus ({len(text)} characters) is too short to split with "
                            f"val_fraction={val_fraction}: one split would be empty")
    return text[: len(text) - n_val], text[len(text) - n_val:]


def prepare_data(corpus: str = "shakespeare", tokenizer: str = "char", val_fraction: float = 0.1,
                 cache_dir: str | Path | None = None, max_bytes: int = MAX_CORPUS_BYTES) -> TokenData:
    """Load ``corpus`` (at most ``max_bytes``), split it, build ``tokenizer``, tokenize both splits — or
    memory-map the cache."""
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not (
            math.isfinite(val_fraction) and 0.0 < val_fraction < 1.0):
        raise InfogeomError(f"val_fraction must be a number strictly between 0 and 1, got {val_fraction!r}")
    kind, n = parse_tokenizer_spec(tokenizer)
    spec = f"bpe:{n}" if kind == "bpe" else tokenizer.strip() if kind == "hf" else kind
    # a pretrained tokenizer is keyed by its content: the folder may change under the same path
    key_spec = spec if kind != "hf" else sha256_hex(json.dumps(build_tokenizer(spec, "").to_dict(), sort_keys=True))
    text = load_corpus(corpus, max_bytes)
    corpus_sha = sha256_hex(text)
    key = sha256_hex(json.dumps({"version": CACHE_VERSION, "corpus_sha256": corpus_sha, "tokenizer": key_spec,
                                 "val_fraction": float(val_fraction)}, sort_keys=True))
    root = ensure_dir(Path(cache_dir).expanduser() if cache_dir else cache_root() / "tokens")
    entry = root / key[:32]
    data = _load_entry(entry)
    if data is None:
        with file_lock(root / ".locks" / key[:32]):  # a concurrent builder (study workers) finishes first
            data = _load_entry(entry)
            if data is None:
                meta = {"corpus": str(corpus), "corpus_sha256": corpus_sha, "val_fraction": float(val_fraction)}
                _build_entry(entry, text, spec, float(val_fraction), meta)
                data = _load_entry(entry)
        if data is None:
            raise InfogeomError(f"token cache {entry} could not be read back after writing it")
    return data


def _load_entry(entry: Path) -> TokenData | None:
    """The cached TokenData, or None if the entry is missing, unreadable or not the recorded size."""
    try:
        meta = json.loads((entry / "meta.json").read_text())
        tok = load_tokenizer(entry / "tokenizer.json")
        arrays = [np.load(entry / f"{name}.npy", mmap_mode="r") for name in SPLITS]
        intact = all(a.ndim == 1 and a.dtype == np.dtype(meta["dtype"]) and len(a) == meta[f"{name}_tokens"]
                     for name, a in zip(SPLITS, arrays))
    except (InfogeomError, OSError, ValueError, KeyError, TypeError):  # missing entry, malformed files
        return None
    return TokenData(tok, arrays[0], arrays[1], entry) if intact else None


def _build_entry(entry: Path, text: str, spec: str, val_fraction: float, meta: dict) -> None:
    train_text, val_text = split_text(text, val_fraction)
    tok = build_tokenizer(spec, text if spec == "char" else train_text)
    dtype = np.uint16 if tok.vocab_size <= 1 << 16 else np.uint32
    tmp = make_temp_dir(entry.parent)
    try:
        tok.save(tmp / "tokenizer.json")
        sizes = {}
        for name, part in zip(SPLITS, (train_text, val_text)):
            ids = tok.encode_array(part).astype(dtype)
            np.save(tmp / f"{name}.npy", ids)
            sizes[f"{name}_tokens"] = len(ids)
        meta = {**meta, "tokenizer": spec, "vocab_size": tok.vocab_size, "dtype": np.dtype(dtype).name,
                **sizes}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        if entry.exists():  # stale or unreadable entry: move it aside, then delete it
            stale = entry.parent / f".stale-{uuid.uuid4().hex}"
            os.replace(entry, stale)
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.replace(tmp, entry)
        except OSError:
            if _load_entry(entry) is None:  # not a concurrent writer's finished entry: a real failure
                raise
    except OSError as exc:
        raise InfogeomError(f"cannot write token cache {entry}: {exc.strerror or exc}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
