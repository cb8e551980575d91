"""Tokenizers: round trips on real text, vocabularies vs independent constructions, save/load, bad specs."""

import json

import numpy as np
import pytest

from infogeom.data import build_tokenizer, load_corpus, load_tokenizer
from infogeom.errors import InfogeomError

UNSEEN = "naïve café — 10 € ✓ 😀 and\ttabs\r\n"


@pytest.fixture(scope="module")
def pydoc_text():
    return load_corpus("pydoc")


def test_char_tokenizer_matches_a_sorted_character_table(pydoc_text):
    tok = build_tokenizer("char", pydoc_text)
    table = sorted(set(pydoc_text))  # independent construction of the vocabulary: sorted by code point
    assert tok.vocab_size == len(table)
    sample = pydoc_text[10_000:12_000]
    assert tok.encode(sample) == [table.index(c) for c in sample]
    assert tok.decode(tok.encode(pydoc_text)) == pydoc_text
    assert tok.decode(np.asarray(tok.encode(sample), dtype=np.uint16)) == sample


def test_char_tokenizer_rejects_unseen_characters_by_name():
    tok = build_tokenizer("char", "abc ")
    with pytest.raises(InfogeomError, match=r"character 'é' \(U\+00E9\) is not in the char tokenizer"):
        tok.encode("a cé")


def test_byte_tokenizer_is_utf8(pydoc_text):
    tok = build_tokenizer("byte", "ignored")
    assert tok.vocab_size == 256
    assert tok.encode(UNSEEN) == list(UNSEEN.encode("utf-8"))
    assert tok.decode(tok.encode(UNSEEN)) == UNSEEN
    assert tok.decode(tok.encode(pydoc_text)) == pydoc_text
    assert tok.decode([0xC3]) == "\ufffd"  # a cut multi-byte sequence decodes to U+FFFD, not an exception


def test_bpe_vocabulary_size_round_trip_and_parallel_encoding(pydoc_text):
    from tokenizers import Tokenizer as HFTokenizer

    tok = build_tokenizer("bpe:600", pydoc_text)
    assert tok.spec == "bpe:600" and tok.vocab_size == 600
    ids = tok.encode(pydoc_text)
    assert max(ids) < 600 and len(ids) < 0.5 * len(pydoc_text.encode())  # merges compress the text
    assert tok.decode(ids) == pydoc_text
    assert tok.decode(tok.encode(UNSEEN)) == UNSEEN  # byte fallback: any text encodes
    # encode_array splits at newlines between non-space characters and encodes the pieces in parallel;
    # that must equal encoding the whole string in one call with the underlying Hugging Face tokenizer.
    whole = HFTokenizer.from_str(json.dumps(tok.to_dict()["hf_tokenizer"]))
    piece = pydoc_text[:50_000] + "\n\n  indented\n\nx\n \ny"
    assert tok.encode(piece) == whole.encode(piece).ids
    small = build_tokenizer("bpe:5000", "tiny text, tiny vocabulary")
    assert 256 < small.vocab_size < 5000  # stops when no pair is left to merge


def test_bpe_training_is_deterministic(pydoc_text):
    a, b = (build_tokenizer("bpe:400", pydoc_text[:100_000]) for _ in range(2))
    assert a.to_dict() == b.to_dict()


@pytest.mark.parametrize("spec", ["char", "byte", "bpe:300"])
def test_save_and_load_round_trip(tmp_path, pydoc_text, spec):
    tok = build_tokenizer(spec, pydoc_text[:60_000])
    path = tmp_path / "run" / "tokenizer.json"
    tok.save(path)
    assert json.loads(path.read_text())["spec"] == spec
    loaded = load_tokenizer(path)
    assert type(loaded) is type(tok) and loaded.spec == spec and loaded.vocab_size == tok.vocab_size
    sample = pydoc_text[60_000:70_000]
    assert loaded.encode(sample) == tok.encode(sample)
    assert loaded.decode(tok.encode(sample)) == sample
    assert [p.name for p in path.parent.iterdir()] == ["tokenizer.json"]  # no temporary file left behind


def test_bad_tokenizer_specs():
    for spec in ("word", "bpe", "BPE:300", "sentencepiece:100"):
        with pytest.raises(InfogeomError, match=r"unknown tokenizer .*; choose char, byte or bpe:N"):
            build_tokenizer(spec, "text")
    for spec in ("bpe:", "bpe:abc", "bpe:100", "bpe:-5", "bpe:1e3", "bpe:3.5", "bpe:²"):
        with pytest.raises(InfogeomError, match=r"bad BPE vocabulary size .*integer >= 256"):
            build_tokenizer(spec, "text")
    with pytest.raises(InfogeomError, match="empty text"):
        build_tokenizer("char", "")
    with pytest.raises(InfogeomError, match=r"token id 7 is outside the char tokenizer's vocabulary"):
        build_tokenizer("char", "abc").decode([0, 7])


def test_bad_tokenizer_files(tmp_path):
    with pytest.raises(InfogeomError, match="tokenizer file not found"):
        load_tokenizer(tmp_path / "missing.json")
    cases = {
        "garbage.json": b"\x00\x01 not json",
        "other.json": b'{"model": "something else"}',
        "char.json": b'{"format": "infogeom-tokenizer", "version": 1, "spec": "char"}',
        "bpe.json": b'{"format": "infogeom-tokenizer", "version": 1, "spec": "bpe:300", "hf_tokenizer": {}}',
    }
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(InfogeomError, match=name) as err:
            load_tokenizer(tmp_path / name)
        assert "\n" not in str(err.value)
