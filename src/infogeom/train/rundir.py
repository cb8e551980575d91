"""Output paths checked before any work, and the run folder's lock.

:func:`check_output_dir` / :func:`check_output_file` fail fast (one-line :class:`InfogeomError`) when an output
path cannot be written — it or an ancestor is a file, or the first existing ancestor is not writable — so no
command learns it after its work is done. :class:`RunLock` is an exclusive ``fcntl.flock`` on
``<run>/.lock``, held for the training process's life: the kernel drops it when the process exits or is
killed, so a dead holder never blocks the folder, and a second writer is refused with the holder's pid.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from ..errors import InfogeomError

LOCK_FILE = ".lock"


def _first_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_output_dir(path: str | Path, what: str = "--out") -> Path:
    """``path`` is a folder, or can be created as one, and is writable."""
    path = Path(path)
    base = _first_existing(path.absolute())
    if not base.is_dir():
        where = "is" if base == path.absolute() else f"is under {base}, which is"
        raise InfogeomError(f"{what} {path} {where} not a folder")
    if not os.access(base, os.W_OK | os.X_OK):
        raise InfogeomError(f"{what} {path}: {base} is not writable")
    return path


def check_output_file(path: str | Path, what: str = "--out") -> Path:
    """``path`` names a file that can be (over)written: not a folder, its folder creatable and writable."""
    path = Path(path)
    if path.is_dir():
        raise InfogeomError(f"{what} {path} is a folder; give a file name")
    if path.exists() and not os.access(path, os.W_OK):
        raise InfogeomError(f"{what} {path} is not writable")
    check_output_dir(path.parent, what)
    return path


def _lock_or_refuse(fd: int, folder: Path) -> None:
    """``flock(fd)`` without waiting; if another process holds it, close ``fd`` and refuse, naming its pid."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
        os.close(fd)
        raise InfogeomError(f"{folder} is in use by another infogeom process (pid {holder}); wait for it to "
                            f"finish or choose another --out") from None


class RunLock:
    """Exclusive lock on run folder ``out_dir`` (created if needed) until :meth:`release` or process exit."""

    def __init__(self, out_dir: str | Path):
        self.path = Path(out_dir) / LOCK_FILE
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise InfogeomError(f"cannot create run folder {self.path.parent}: {exc.strerror or exc}") from None
        _lock_or_refuse(self._fd, self.path.parent)
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)

    @staticmethod
    def check(out_dir: str | Path) -> None:
        """Refuse now if another process holds ``out_dir`` (reads only: nothing is created or written)."""
        try:
            fd = os.open(Path(out_dir) / LOCK_FILE, os.O_RDONLY)
        except OSError:  # no lock file: nobody ever held the folder
            return
        _lock_or_refuse(fd, Path(out_dir))
        os.close(fd)

    def release(self) -> None:
        """Drop the lock (closing the descriptor releases the flock); idempotent."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
