"""Tokenizers: ``char``, ``byte`` and ``bpe:N``; JSON save/load so a run stores exactly the tokenizer it used.

- ``char``: one id per Unicode character, vocabulary = the sorted (by code point) characters of the text it is
  built from. Encoding a character outside the vocabulary raises :class:`InfogeomError` naming it (there is no
  ``<unk>`` id: a model never trained on such an id could not use it anyway).
- ``byte``: the 256 UTF-8 byte values; any text encodes, decoding invalid UTF-8 gives U+FFFD.
- ``bpe:N``: byte-level BPE (GPT-2 style pre-tokenization, Hugging Face ``tokenizers``) trained to at most N
  tokens (N ≥ 256: the byte alphabet plus N − 256 merges; fewer if the text runs out of pairs).
- ``hf:PATH``: the fast tokenizer (``AutoTokenizer``) of a transformers checkpoint folder (or a locally cached
  Hub name); the text is encoded without special tokens (no BOS/EOS), and the tokenizer's full JSON is stored,
  so a checkpoint keeps working when the folder is gone. ``hf`` alone (in a run config) means the tokenizer of
  ``model.path``.

Encoding is vectorized (NumPy for char/byte, batched Rust for BPE); ``encode_array`` returns int64 ids.
"""

from __future__ import annotations

import itertools
import json
import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import InfogeomError
from .cache import atomic_write

TOKENIZER_HELP = "char, byte or bpe:N (an integer N >= 256), or hf:PATH (a transformers checkpoint's)"
FORMAT = "infogeom-tokenizer"
MIN_BPE_VOCAB = 256


class Tokenizer(ABC):
    """Text ↔ token ids. ``spec`` names the kind; ``to_dict``/``save`` store the learned vocabulary."""

    spec: str

    @property
    @abstractmethod
    def vocab_size(self) -> int: ...

    @abstractmethod
    def encode_array(self, text: str) -> np.ndarray:
        """Token ids of ``text`` as a 1-D int64 array."""

    @abstractmethod
    def _decode_checked(self, ids: np.ndarray) -> str: ...

    @abstractmethod
    def _state(self) -> dict: ...

    def encode(self, text: str) -> list[int]:
        return self.encode_array(text).tolist()

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """Text of token ids; an id outside ``[0, vocab_size)`` raises InfogeomError."""
        arr = np.asarray(ids, dtype=np.int64).reshape(-1)
        bad = (arr < 0) | (arr >= self.vocab_size)
        if bad.any():
            raise InfogeomError(f"token id {int(arr[bad][0])} is outside the {self.spec} tokenizer's "
                                f"vocabulary (size {self.vocab_size})")
        return self._decode_checked(arr)

    def to_dict(self) -> dict:
        """JSON-serializable state (plain str/int/list/dict: also fits a ``weights_only`` checkpoint)."""
        return {"format": FORMAT, "version": 1, "spec": self.spec, **self._state()}

    def save(self, path: str | Path) -> None:
        """Write :meth:`to_dict` as JSON, atomically."""
        data = json.dumps(self.to_dict(), ensure_ascii=False).encode("utf-8")
        atomic_write(Path(path), lambda f: f.write(data))


class CharTokenizer(Tokenizer):
    spec = "char"

    def __init__(self, chars: str):
        self.chars = "".join(sorted(set(chars)))
        if not self.chars:
            raise InfogeomError("cannot build a char tokenizer from empty text")
        self._codes = np.frombuffer(self.chars.encode("utf-32-le"), dtype="<u4")

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode_array(self, text: str) -> np.ndarray:
        codes = np.frombuffer(text.encode("utf-32-le"), dtype="<u4")
        ids = np.minimum(np.searchsorted(self._codes, codes), len(self._codes) - 1)
        unknown = self._codes[ids] != codes
        if unknown.any():
            ch = text[int(np.argmax(unknown))]
            raise InfogeomError(f"character {ch!r} (U+{ord(ch):04X}) is not in the char tokenizer's "
                                f"vocabulary ({self.vocab_size} characters of the training corpus)")
        return ids.astype(np.int64)

    def _decode_checked(self, ids: np.ndarray) -> str:
        return self._codes[ids].astype("<u4").tobytes().decode("utf-32-le")

    def _state(self) -> dict:
        return {"chars": self.chars}


class ByteTokenizer(Tokenizer):
    spec = "byte"

    @property
    def vocab_size(self) -> int:
        return 256

    def encode_array(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64)

    def _decode_checked(self, ids: np.ndarray) -> str:
        return ids.astype(np.uint8).tobytes().decode("utf-8", errors="replace")

    def _state(self) -> dict:
        return {}


# A newline between two non-space characters always ends a GPT-2 pre-token ("\n" matches only the whitespace
# alternatives, and the next pre-token starts at the non-space), so encoding the pieces between such newlines
# separately — in parallel — gives exactly the ids of encoding the whole text at once.
_SAFE_SPLIT = re.compile(r"(?<=\S\n)(?=\S)")


class BPETokenizer(Tokenizer):
    def __init__(self, hf_tokenizer, spec: str):
        self._tok = hf_tokenizer
        self.spec = spec

    @classmethod
    def train(cls, text: str, vocab_size: int) -> BPETokenizer:
        """Byte-level BPE with at most ``vocab_size`` tokens learned from ``text``."""
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders, models, pre_tokenizers, trainers

        tok = HFTokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(_SAFE_SPLIT.split(text), trainer=trainer)
        return cls(tok, f"bpe:{vocab_size}")

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    def encode_array(self, text: str) -> np.ndarray:
        encodings = self._tok.encode_batch(_SAFE_SPLIT.split(text), add_special_tokens=False)
        return np.fromiter(itertools.chain.from_iterable(e.ids for e in encodings), dtype=np.int64)

    def _decode_checked(self, ids: np.ndarray) -> str:
        return self._tok.decode(ids.tolist(), skip_special_tokens=False)

    def _state(self) -> dict:
        return {"hf_tokenizer": json.loads(self._tok.to_str())}


class PretrainedTokenizer(BPETokenizer):
    """A transformers checkpoint's fast tokenizer (its ``tokenizers`` backend); spec ``hf:PATH``."""

    @classmethod
    def load(cls, path: str) -> PretrainedTokenizer:
        """``AutoTokenizer.from_pretrained(path, local_files_only=True)`` (must be a fast tokenizer)."""
        from ..models.hf import transformers_module

        transformers = transformers_module()
        try:
            tok = transformers.AutoTokenizer.from_pretrained(str(Path(path).expanduser()), local_files_only=True)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            first = " ".join((str(exc).strip().splitlines() or [type(exc).__name__])[0].split())[:200]
            raise InfogeomError(f"hf:{path} holds no usable tokenizer (tokenizer.json): {first}") from None
        if not getattr(tok, "is_fast", False) or getattr(tok, "backend_tokenizer", None) is None:
            raise InfogeomError(f"hf:{path}: the tokenizer {type(tok).__name__} is not a fast (tokenizers) "
                                f"tokenizer; save it with PreTrainedTokenizerFast")
        return cls(tok.backend_tokenizer, f"hf:{path}")

    def __init__(self, hf_tokenizer, spec: str):
        super().__init__(hf_tokenizer, spec)
        pre = json.loads(hf_tokenizer.to_str()).get("pre_tokenizer") or {}
        # GPT-2 pre-tokenization (byte level, its regex, no prefix space, no normalizer): the pieces between
        # safe newlines encode in parallel to the same ids; any other tokenizer encodes the text in one call
        self._parallel = (pre.get("type") == "ByteLevel" and pre.get("use_regex", True)
                          and not pre.get("add_prefix_space", False) and hf_tokenizer.normalizer is None)

    def encode_array(self, text: str) -> np.ndarray:
        if self._parallel:
            return super().encode_array(text)
        return np.asarray(self._tok.encode(text, add_special_tokens=False).ids, dtype=np.int64)


def parse_tokenizer_spec(spec: str) -> tuple[str, int | None]:
    """``'char' | 'byte' | 'bpe:N' | 'hf:PATH'`` → (kind, N or None); anything else raises InfogeomError."""
    spec = str(spec).strip()
    if spec in ("char", "byte"):
        return spec, None
    if spec.startswith("hf:") and spec[3:].strip():
        return "hf", None
    if spec.startswith("bpe:"):
        n = spec[4:]
        if not (n.isascii() and n.isdigit()) or int(n) < MIN_BPE_VOCAB:
            raise InfogeomError(f"bad BPE vocabulary size in tokenizer {spec!r}: N must be an integer >= "
                                f"{MIN_BPE_VOCAB} (the byte alphabet)")
        return "bpe", int(n)
    raise InfogeomError(f"unknown tokenizer {spec!r}; choose {TOKENIZER_HELP}")


def build_tokenizer(spec: str, text: str) -> Tokenizer:
    """A tokenizer of kind ``spec`` learned from ``text`` (char vocabulary / BPE merges; byte ignores it)."""
    kind, n = parse_tokenizer_spec(spec)
    if kind == "byte":
        return ByteTokenizer()
    if kind == "hf":
        return PretrainedTokenizer.load(spec.strip()[3:])
    if not text:
        raise InfogeomError(f"cannot build a {spec} tokenizer from empty text")
    return CharTokenizer(text) if kind == "char" else BPETokenizer.train(text, n)


def tokenizer_from_dict(state: dict) -> Tokenizer:
    """Inverse of :meth:`Tokenizer.to_dict`."""
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise InfogeomError("not an infogeom tokenizer (missing format marker)")
    try:
        kind, _ = parse_tokenizer_spec(state["spec"])
        if kind == "byte":
            return ByteTokenizer()
        if kind == "char":
            return CharTokenizer(state["chars"])
        from tokenizers import Tokenizer as HFTokenizer
        cls = PretrainedTokenizer if kind == "hf" else BPETokenizer
        return cls(HFTokenizer.from_str(json.dumps(state["hf_tokenizer"])), state["spec"])
    except InfogeomError:
        raise
    except Exception as exc:  # KeyError/TypeError from a bad dict; tokenizers raises a bare Exception
        reason = (str(exc).splitlines() or [""])[0]
        raise InfogeomError(f"corrupted tokenizer state ({type(exc).__name__}: {reason})") from exc


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Read a tokenizer written by :meth:`Tokenizer.save`."""
    path = Path(path)
    try:
        state = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError as exc:
        raise InfogeomError(f"tokenizer file not found: {path}") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InfogeomError(f"cannot read tokenizer file {path}: {exc}") from exc
    try:
        return tokenizer_from_dict(state)
    except InfogeomError as exc:
        raise InfogeomError(f"tokenizer file {path}: {exc}") from exc
