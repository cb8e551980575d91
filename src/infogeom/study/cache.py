"""The study's on-disk cache: ``OUT/study.json`` (which study this folder holds) and one folder per cell.

Layout of ``OUT/cells/<hash>/``: ``lock`` (``flock``-ed by the process running the cell, so two workers, even on
two machines sharing the folder, never run one cell; the kernel drops the lock when the process dies, so a
``kill -9`` leaves no stale lock), the cell's own files (checkpoints: a retried or rerun cell resumes from them),
``error.txt`` (traceback of the last failed attempt), ``cell.json`` (spec, seed, timings) and ``result.json``,
written last and atomically: a cell is done exactly when its ``result.json`` exists.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..data.cache import atomic_write, ensure_dir
from ..errors import InfogeomError

MANIFEST = "study.json"
FORMAT = "infogeom-study"
RESULT, CELL_INFO, ERROR, LOCK = "result.json", "cell.json", "error.txt", "lock"


def write_json(path: Path, obj) -> None:
    """Write ``obj`` as JSON atomically (temporary file, fsync, rename)."""
    data = json.dumps(obj, indent=1, sort_keys=True, allow_nan=True).encode()
    atomic_write(path, lambda f: f.write(data))


def open_study(out: Path, manifest: dict, force: bool = False) -> Path:
    """Create ``out`` or check that it holds this study (same ``manifest``: format, infogeom version, seed).

    A folder holding another study is refused unless ``force``; forcing is safe because cell hashes include the
    version and seed, so the other study's cells are never reused, only kept beside this one's.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InfogeomError(f"--out {out} exists and is not a folder")
    path = out / MANIFEST
    manifest = {"format": FORMAT, **manifest}
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise InfogeomError(f"{path} is corrupt ({exc}); delete it to reuse this folder") from None
        if old != manifest and not force:
            diff = ", ".join(f"{k} {old.get(k)!r} here vs {v!r} now" for k, v in manifest.items() if old.get(k) != v)
            raise InfogeomError(f"{out} holds another study ({diff}); choose another --out, or pass --force to add "
                                f"this one beside it (no cell is shared)")
        if old == manifest:
            return out
    elif out.exists() and any(out.iterdir()):
        raise InfogeomError(f"{out} is not empty and holds no {MANIFEST}: not a study folder; choose another --out")
    write_json(ensure_dir(out) / MANIFEST, manifest)
    return out


def read_manifest(out: Path) -> dict | None:
    """The study manifest of ``out``, or ``None`` if there is none."""
    path = Path(out) / MANIFEST
    return json.loads(path.read_text()) if path.exists() else None


class CellStore:
    """Access to ``OUT/cells/<hash>/``."""

    def __init__(self, out: Path):
        self.root = Path(out) / "cells"

    def dir(self, key: str) -> Path:
        return self.root / key

    def done(self, key: str) -> bool:
        return (self.dir(key) / RESULT).exists()

    def result(self, key: str, label: str = "") -> dict:
        """The cell's result; a corrupt file is a one-line :class:`InfogeomError` naming it (nothing is deleted)."""
        path = self.dir(key) / RESULT
        try:
            obj = json.loads(path.read_text())
            if not isinstance(obj, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as exc:
            raise InfogeomError(f"corrupt result {path}{f' (cell {label})' if label else ''}: "
                                f"{str(exc).splitlines()[0][:120]}; delete that file to recompute the cell") from None
        return obj

    def info(self, key: str) -> dict:
        """``cell.json`` (spec, seed, timings) of a done cell, or ``{}``."""
        path = self.dir(key) / CELL_INFO
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return {}

    def error(self, key: str) -> str | None:
        """Traceback of the cell's last failed attempt, if it has not succeeded since."""
        path = self.dir(key) / ERROR
        return path.read_text() if path.exists() and not self.done(key) else None

    def running(self, key: str) -> bool:
        """Whether some process holds the cell's lock right now."""
        path = self.dir(key) / LOCK
        if not path.exists():
            return False
        fd = os.open(path, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # closing releases a lock we may have taken
        return False

    @contextmanager
    def claim(self, key: str) -> Iterator[Path]:
        """Hold the cell's lock (waiting while another process runs it) and yield its folder."""
        workdir = ensure_dir(self.dir(key))
        fd = os.open(workdir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield workdir
        finally:
            os.close(fd)

    def finish(self, key: str, info: dict, result: dict) -> None:
        """Record a successful run: ``cell.json``, then (the done marker) ``result.json``; drop ``error.txt``."""
        workdir = self.dir(key)
        write_json(workdir / CELL_INFO, info)
        write_json(workdir / RESULT, result)
        (workdir / ERROR).unlink(missing_ok=True)

    def fail(self, key: str, text: str) -> None:
        atomic_write(self.dir(key) / ERROR, lambda f: f.write(text.encode()))
