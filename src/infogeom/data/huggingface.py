"""``hf:NAME[:CONFIG]`` corpora through the optional ``datasets`` library (``pip install 'infogeom[hf]'``).

NAME is a Hub dataset id (``hf:wikitext:wikitext-2-raw-v1``; needs network access to the Hub) or a local
folder: either a dataset written with ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk`` (read with
``datasets.load_from_disk``) or a folder of data files (``.txt``, ``.jsonl``, ``.csv``, ``.parquet``, ...;
read with ``datasets.load_dataset``). The text column is ``text`` if present, else the only string column.
Records are joined with ``"\\n"``; splits are concatenated in the order train, validation, test, then others
by name — so infogeom's own validation split (the end of the corpus) falls in the dataset's held-out part.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import InfogeomError

SPLIT_ORDER = ("train", "validation", "test")


def load_hf_corpus(name: str, config: str | None = None) -> str:
    """Text of a Hugging Face dataset (Hub id or local folder) as one string."""
    try:
        import datasets
    except ImportError as exc:
        raise InfogeomError(f"corpus 'hf:{name}' needs the optional 'datasets' package: "
                            "pip install 'infogeom[hf]'") from exc
    path = Path(name).expanduser()
    if not path.exists() and name.startswith((".", "/", "~")):
        raise InfogeomError(f"Hugging Face dataset folder not found: {name}")
    saved = path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file())
    if saved and config is not None:
        raise InfogeomError(f"hf:{name} is a dataset saved with save_to_disk; it has no config {config!r}")
    try:
        ds = datasets.load_from_disk(str(path)) if saved else datasets.load_dataset(
            str(path) if path.exists() else name, config)
    except Exception as exc:  # datasets raises many types: FileNotFoundError, ConnectionError, ValueError...
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InfogeomError(f"could not load Hugging Face dataset {name!r}: {reason}") from exc
    parts = [ds] if isinstance(ds, datasets.Dataset) else [ds[s] for s in _split_order(list(ds))]
    text = "\n".join(_column_text(part, name) for part in parts)
    if not text.strip():
        raise InfogeomError(f"Hugging Face dataset {name!r} is empty (no text)")
    return text


def _split_order(splits: list[str]) -> list[str]:
    return [s for s in SPLIT_ORDER if s in splits] + sorted(s for s in splits if s not in SPLIT_ORDER)


def _column_text(ds, name: str) -> str:
    strings = [c for c, f in ds.features.items() if getattr(f, "dtype", None) in ("string", "large_string")]
    column = "text" if "text" in strings else strings[0] if len(strings) == 1 else None
    if column is None:
        raise InfogeomError(f"Hugging Face dataset {name!r}: cannot tell which column holds the text "
                            f"(string columns: {', '.join(strings) or 'none'}); add a 'text' column")
    return "\n".join(t for t in ds[column] if t is not None)
