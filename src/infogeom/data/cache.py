"""The user's cache folder and crash-safe file writes.

Cache root: ``$INFOGEOM_CACHE``, else ``$XDG_CACHE_HOME/infogeom``, else ``~/.cache/infogeom``. Every file is
written to a temporary name in the same folder and renamed into place (``os.replace`` is atomic on POSIX and
Windows), so a crash or Ctrl-C never leaves a half-written file under its final name. :func:`file_lock` makes
processes that would build the same entry at once (a study's workers on a fresh machine) take turns.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from ..errors import InfogeomError

_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read the process umask (os.umask can only set it) so written files get the usual mode


def cache_root() -> Path:
    """Folder for downloaded corpora and tokenized arrays (not created here)."""
    if os.environ.get("INFOGEOM_CACHE"):
        return Path(os.environ["INFOGEOM_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "infogeom"


def ensure_dir(path: Path) -> Path:
    """``mkdir -p path``; an unwritable location becomes an :class:`InfogeomError`."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InfogeomError(f"cannot create cache folder {path}: {exc.strerror or exc}") from exc
    return path


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write(f)`` on a temporary file next to ``path``, fsync it, then rename it to ``path``."""
    ensure_dir(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing; released when the block ends or the process
    dies), so that check-then-build of one cache entry runs in one process at a time."""
    ensure_dir(path.parent)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def make_temp_dir(parent: Path) -> Path:
    """A fresh hidden folder in ``parent`` (usual permissions), to fill and then rename into place."""
    tmp = Path(tempfile.mkdtemp(dir=ensure_dir(parent), prefix=".tmp-"))
    os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp creates 0700
    return tmp


def sha256_hex(data: bytes | str) -> str:
    """SHA-256 hex digest of bytes, or of a string's UTF-8 encoding."""
    return hashlib.sha256(data.encode("utf-8") if isinstance(data, str) else data).hexdigest()
