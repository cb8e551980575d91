"""prepare_data: deterministic split, memory-mapped token cache reuse, seeded batches, bad input."""

import multiprocessing as mp
import time

import numpy as np
import pytest
import torch

from infogeom.data import build_tokenizer, load_corpus, prepare_data
from infogeom.data.tokenizer import BPETokenizer, CharTokenizer
from infogeom.errors import InfogeomError

TEXT = "".join(f"Line {i}: the quick brown fox jumps over the lazy dog.\n" for i in range(400))


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT)
    return str(path)


@pytest.fixture
def encode_calls(monkeypatch):
    """Counts every tokenization pass of prepare_data (char and BPE)."""
    calls = []
    for cls in (CharTokenizer, BPETokenizer):
        original = cls.encode_array
        monkeypatch.setattr(cls, "encode_array",
                            lambda self, text, f=original: calls.append(len(text)) or f(self, text))
    return calls


def test_split_is_the_last_fraction_of_the_text(corpus, tmp_path):
    data = prepare_data(corpus, "char", val_fraction=0.25, cache_dir=tmp_path / "tok")
    n_val = round(len(TEXT) * 0.25)
    table = sorted(set(TEXT))  # independent char ids
    assert data.val.tolist() == [table.index(c) for c in TEXT[-n_val:]]
    assert data.train.tolist() == [table.index(c) for c in TEXT[:-n_val]]
    again = prepare_data(corpus, "char", val_fraction=0.25, cache_dir=tmp_path / "other")  # rebuilt elsewhere
    assert np.array_equal(again.train, data.train) and np.array_equal(again.val, data.val)


def test_bpe_is_trained_on_the_training_split_only(tmp_path):
    text = TEXT + "zebra xylophone quartz " * 800  # the last half holds words the first half never uses
    path = tmp_path / "two_halves.txt"
    path.write_text(text)
    data = prepare_data(str(path), "bpe:300", val_fraction=0.5, cache_dir=tmp_path / "tok")
    train_text = text[: len(text) - round(len(text) * 0.5)]
    assert data.tokenizer.to_dict() == build_tokenizer("bpe:300", train_text).to_dict()
    assert data.tokenizer.to_dict() != build_tokenizer("bpe:300", text).to_dict()
    assert data.tokenizer.decode(data.val) == text[len(train_text):]


def test_second_call_reuses_the_memmapped_cache(corpus, tmp_path, encode_calls):
    first = prepare_data(corpus, "bpe:280", cache_dir=tmp_path)
    assert len(encode_calls) == 2  # train + val
    second = prepare_data(corpus, "bpe:280", cache_dir=tmp_path)
    assert len(encode_calls) == 2  # nothing re-tokenized
    assert isinstance(second.train, np.memmap) and isinstance(second.val, np.memmap)
    assert second.train.dtype == np.uint16 and second.path == first.path
    assert np.array_equal(first.train, second.train)
    assert second.tokenizer.to_dict() == first.tokenizer.to_dict()
    prepare_data(corpus, "bpe:280", val_fraction=0.2, cache_dir=tmp_path)  # another split → another entry
    assert len(encode_calls) == 4
    with open(corpus, "a") as f:
        f.write("new content changes the key\n")
    prepare_data(corpus, "bpe:280", cache_dir=tmp_path)
    assert len(encode_calls) == 6
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".") and p.name != ".locks"]  # no temporaries


def test_corrupted_cache_entry_is_rebuilt(corpus, tmp_path, encode_calls):
    first = prepare_data(corpus, "char", cache_dir=tmp_path)
    expected = first.train.tolist()
    path = first.path
    del first
    (path / "train.npy").write_bytes(b"\x93NUMPY truncated")
    data = prepare_data(corpus, "char", cache_dir=tmp_path)
    assert len(encode_calls) == 4 and data.train.tolist() == expected
    del data
    blob = (path / "val.npy").read_bytes()
    (path / "val.npy").write_bytes(blob[: len(blob) - 10])  # valid header, missing tail
    data = prepare_data(corpus, "char", cache_dir=tmp_path)
    assert len(encode_calls) == 6 and data.train.tolist() == expected


def test_uint32_ids_for_vocabularies_above_65536(tmp_path):
    chars = "".join(chr(c) for c in range(0x100, 0x100 + 70_000) if not 0xD800 <= c <= 0xDFFF)
    path = tmp_path / "wide.txt"
    path.write_text(chars + chars, encoding="utf-8")
    data = prepare_data(str(path), "char", val_fraction=0.5, cache_dir=tmp_path / "tok")
    assert data.vocab_size == len(chars) > 65_536
    assert data.train.dtype == np.uint32 and data.tokenizer.decode(data.val) == chars


def test_default_shakespeare_char_data(tmp_path):
    data = prepare_data()  # shared user cache: instant after the first run
    text = load_corpus("shakespeare")
    assert data.vocab_size == len(set(text)) == 84
    assert len(data.train) + len(data.val) == len(text) and len(data.val) == round(0.1 * len(text))
    assert data.tokenizer.decode(data.val[:40]) == text[len(data.train):len(data.train) + 40]


def test_batches_are_windows_shifted_by_one_and_depend_only_on_the_generator(corpus, tmp_path):
    data = prepare_data(corpus, "char", cache_dir=tmp_path)
    train_text = TEXT[: len(data.train)]
    g = torch.Generator().manual_seed(123)
    state = g.get_state()
    x, y = data.get_batch("train", 16, 32, g)
    assert x.shape == y.shape == (16, 32) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    for row_x, row_y in zip(x, y):  # every row is a contiguous window of the training text
        assert data.tokenizer.decode(row_x) + data.tokenizer.decode(row_y[-1:]) in train_text
    torch.manual_seed(999)  # global RNG is irrelevant
    g2 = torch.Generator()
    g2.set_state(state)
    x2, y2 = data.get_batch("train", 16, 32, g2)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert torch.equal(g.get_state(), g2.get_state())
    x3, _ = data.get_batch("train", 16, 32, g)  # the generator advanced: a different batch
    assert not torch.equal(x, x3)
    xv, yv = data.get_batch("val", 4, 8, torch.Generator().manual_seed(0))
    for row_x, row_y in zip(xv, yv):
        assert data.tokenizer.decode(row_x) + data.tokenizer.decode(row_y[-1:]) in TEXT[len(data.train):]


def test_batch_windows_cover_the_whole_range(tmp_path):
    path = tmp_path / "short.txt"
    path.write_text("abcdefghijklmnopqrst")
    data = prepare_data(str(path), "char", val_fraction=0.5, cache_dir=tmp_path / "tok")
    x, y = data.get_batch("val", 3, 9, torch.Generator().manual_seed(0))  # 10 val tokens: one possible start
    assert all(data.tokenizer.decode(r) == "klmnopqrs" for r in x)
    assert all(data.tokenizer.decode(r) == "lmnopqrst" for r in y)
    x, _ = data.get_batch("train", 2000, 1, torch.Generator().manual_seed(0))  # starts uniform over 0..8
    assert sorted(set(data.tokenizer.decode(x[:, 0]))) == list("abcdefghi")


def test_bad_inputs(corpus, tmp_path):
    for vf in (0, 1, 0.0, 1.0, -0.1, 1.5, float("nan"), True, "0.1", None):
        with pytest.raises(InfogeomError, match="val_fraction must be a number strictly between 0 and 1"):
            prepare_data(corpus, "char", val_fraction=vf, cache_dir=tmp_path)
    with pytest.raises(InfogeomError, match="unknown tokenizer 'words'; choose char, byte or bpe:N"):
        prepare_data(corpus, "words", cache_dir=tmp_path)
    with pytest.raises(InfogeomError, match="bad BPE vocabulary size"):
        prepare_data(corpus, "bpe:12", cache_dir=tmp_path)
    with pytest.raises(InfogeomError, match="corpus path not found"):
        prepare_data(str(tmp_path / "nope.txt"), cache_dir=tmp_path)
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(InfogeomError, match="cannot create cache folder"):
        prepare_data(corpus, "char", cache_dir=blocker / "tokens")
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("abcd")
    with pytest.raises(InfogeomError, match=r"corpus \(4 characters\) is too short to split"):
        prepare_data(str(tiny), "char", val_fraction=0.1, cache_dir=tmp_path)

    data = prepare_data(corpus, "char", val_fraction=0.01, cache_dir=tmp_path)
    n_val = len(data.val)
    g = torch.Generator().manual_seed(0)
    with pytest.raises(InfogeomError, match=f"the val split has only {n_val} tokens but block_size {n_val}"):
        data.get_batch("train", 2, n_val, g)  # checks both splits up front
    data.get_batch("train", 2, n_val - 1, g)
    for kwargs, match in [(dict(split="test"), "unknown data split 'test'"),
                          (dict(batch_size=0), "batch_size must be a positive integer"),
                          (dict(block_size=0), "block_size must be a positive integer"),
                          (dict(block_size=2.5), "block_size must be a positive integer")]:
        args = dict(split="train", batch_size=2, block_size=8, generator=g) | kwargs
        with pytest.raises(InfogeomError, match=match):
            data.get_batch(**args)


def _prepare_and_count(args):
    corpus, cache, start = args
    time.sleep(max(0.0, start - time.time()))  # every worker starts building at the same moment
    data = prepare_data(corpus, "bpe:300", cache_dir=cache)
    return int(len(data.train)), int(len(data.val))


def test_concurrent_builders_of_one_entry_all_succeed(tmp_path):
    """Study workers on a fresh machine prepare the same corpus at once: each must get the one entry (the race
    once moved a finished entry aside under a reader: 'could not be read back after writing it')."""
    path = tmp_path / "big.txt"
    path.write_text(TEXT * 20)  # BPE training makes the build slow enough for the builders to overlap
    with mp.get_context("spawn").Pool(4) as pool:
        start = time.time() + 3.0  # after the spawned workers have imported torch
        sizes = pool.map(_prepare_and_count, [(str(path), str(tmp_path / "cache"), start)] * 4, chunksize=1)
    assert len(set(sizes)) == 1
    entries = [p for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")]  # .locks: the flock files
    assert len(entries) == 1 and not list((tmp_path / "cache").glob(".tmp-*"))
