"""Reading local text: UTF-8 validation with one-line errors, and joining documents into one corpus string."""

from __future__ import annotations

from pathlib import Path

from ..errors import InfogeomError


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


def read_text_path(path: Path) -> str:
    """A text file (any name), or every ``*.txt`` under a folder (recursive, sorted by relative path).

    Empty files inside a folder are skipped; an empty result is an error.
    """
    if not path.exists():
        raise InfogeomError(f"corpus path not found: {path}")
    if path.is_dir():
        files = sorted(path.rglob("*.txt"), key=lambda p: p.relative_to(path).as_posix())
        if not files:
            raise InfogeomError(f"corpus folder {path} contains no .txt files")
        text = join_documents([t for t in (_read_file(f) for f in files) if t.strip()])
        if not text.strip():
            raise InfogeomError(f"corpus folder {path} is empty: all its .txt files are empty")
        return text
    text = _read_file(path)
    if not text.strip():
        raise InfogeomError(f"corpus file {path} is empty")
    return text


def _read_file(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InfogeomError(f"cannot read corpus file {path}: {exc.strerror or exc}") from exc
    return decode_text(data, f"corpus file {path}")
