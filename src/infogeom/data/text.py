"""Reading local text: UTF-8 validation with one-line errors, and joining documents into one corpus string."""

from __future__ import annotations

from pathlib import Path

from ..errors import InfogeomError

MAX_CORPUS_BYTES = 1 << 30  # default cap on a local corpus (1 GiB); data.max_corpus_mb raises it


def decode_text(data: bytes, name: str) -> str:
    """UTF-8 bytes (optional BOM) → str. NUL bytes mean binary; bad UTF-8 is reported with its offset."""
    if b"\x00" in data:
        raise InfogeomError(f"{name} looks like a binary file (contains NUL bytes), expected UTF-8 text")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InfogeomError(f"{name} is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset "
                            f"{exc.start}); convert it to UTF-8") from exc


def join_documents(texts: list[str]) -> str:
    """Concatenate documents in order; each ends with exactly one newline and a blank line separates them."""
    return "\n".join(t.rstrip("\n") + "\n" for t in texts)


def check_size(size: int, max_bytes: int, name: str) -> None:
    if size > max_bytes:
        raise InfogeomError(f"{name} holds {size:,} bytes, more than the {max_bytes:,}-byte corpus limit; "
                            f"raise it with --set data.max_corpus_mb=N")


def read_text_path(path: Path, max_bytes: int = MAX_CORPUS_BYTES) -> str:
    """A regular text file (any name), or every regular ``*.txt`` file under a folder (recursive, sorted by
    relative path), of at most ``max_bytes`` bytes in all (FIFOs and devices are refused before reading).

    Empty files inside a folder are skipped; an empty result is an error.
    """
    if not path.exists():
        raise InfogeomError(f"corpus path not found: {path}")
    if path.is_dir():
        files = sorted((f for f in path.rglob("*.txt") if f.is_file()),
                       key=lambda p: p.relative_to(path).as_posix())
        if not files:
            raise InfogeomError(f"corpus folder {path} contains no .txt files")
        check_size(sum(f.stat().st_size for f in files), max_bytes, f"corpus folder {path}")
        text = join_documents([t for t in (_read_file(f, max_bytes) for f in files) if t.strip()])
        if not text.strip():
            raise InfogeomError(f"corpus folder {path} is empty: all its .txt files are empty")
        return text
    if not path.is_file():
        raise InfogeomError(f"corpus {path} is not a regular file or folder (a FIFO, socket or device?)")
    text = _read_file(path, max_bytes)
    if not text.strip():
        raise InfogeomError(f"corpus file {path} is empty")
    return text


def _read_file(path: Path, max_bytes: int) -> str:
    try:
        check_size(path.stat().st_size, max_bytes, f"corpus file {path}")
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)  # the size may change after stat
    except OSError as exc:
        raise InfogeomError(f"cannot read corpus file {path}: {exc.strerror or exc}") from exc
    check_size(len(data), max_bytes, f"corpus file {path}")
    return decode_text(data, f"corpus file {path}")
