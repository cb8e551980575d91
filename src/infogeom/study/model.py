"""``infogeom study --model hf:PATH``: the study's language-model cells on a local transformers checkpoint.

:func:`study_model` turns the argument into a *model spec*, a small JSON dict (``arch``, absolute ``path``,
``sha256`` of the folder's content, ``parameters``, ``model_type``, ``context``, ``vocab_size``) that experiments
put into the ``params`` of the cells that train or probe one language model; the cell's cache key hashes
``params``, so another folder, or the same folder with other weights, config or tokenizer, never reuses a cell.

The content hash is taken once, when the study is planned: the folder must not change while the study runs.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from ..errors import InfogeomError


def folder_sha256(folder: Path, chunk: int = 1 << 20) -> str:
    """sha256 over (relative name, sha256 of the bytes) of every regular file under ``folder`` (hidden ones
    and ``.cache`` left out), in sorted order: config, weights and tokenizer together."""
    h = hashlib.sha256()
    files = sorted(p for p in folder.rglob("*") if p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    for p in files:
        f = hashlib.sha256()
        with p.open("rb") as fh:
            while block := fh.read(chunk):
                f.update(block)
        h.update(f"{p.relative_to(folder).as_posix()}\0{f.hexdigest()}\n".encode())
    return h.hexdigest()


def study_model(arg: str | None) -> dict | None:
    """The model spec of ``--model hf:PATH`` (``None`` for no argument: the study's own char GPTs).

    Checks what a cell would find out late: a transformers causal LM in a local folder, with a tokenizer whose
    vocabulary fits the embedding. Every problem is an :class:`InfogeomError` (one line, exit 2)."""
    if arg is None:
        return None
    if not arg.startswith("hf:") or not arg[3:].strip():
        raise InfogeomError(f"--model takes hf:PATH (a transformers checkpoint folder), got {arg!r}")
    from ..data import build_tokenizer
    from ..models.hf import inspect_checkpoint
    from ..train.modeling import check_vocab

    path = arg[3:].strip()
    info = inspect_checkpoint(path)
    folder = Path(info.source)
    if not folder.is_dir():
        raise InfogeomError(f"--model {arg}: the study needs a local checkpoint folder (its content is hashed "
                            f"into the cells' cache keys), not a Hub name")
    check_vocab(build_tokenizer(f"hf:{folder}", ""), info.vocab_size, f"the model {arg}")
    return {"arch": "hf", "path": str(folder.resolve()), "sha256": folder_sha256(folder),
            "parameters": int(info.parameters), "model_type": str(info.config.model_type),
            "context": int(info.shape["block_size"]), "vocab_size": int(info.vocab_size)}


def model_label(model: dict) -> str:
    """``hf:PATH (gpt2, 12,345 parameters, sha256 0123abcd…)`` for printing and the report."""
    return (f"hf:{model['path']} ({model['model_type']}, {model['parameters']:,} parameters, "
            f"sha256 {model['sha256'][:12]}…)")
