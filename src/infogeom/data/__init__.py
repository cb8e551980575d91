"""Corpora, tokenizers and token batches.

``load_corpus(spec)`` → text; ``build_tokenizer(spec, text)`` / ``load_tokenizer(path)`` →
:class:`Tokenizer`; ``prepare_data(corpus, tokenizer, val_fraction, cache_dir)`` → :class:`TokenData` with
cached memory-mapped ids and ``get_batch(split, batch_size, block_size, generator, device)``.
"""

from .cache import cache_root
from .corpus import load_corpus
from .dataset import TokenData, prepare_data, split_text
from .tokenizer import Tokenizer, build_tokenizer, load_tokenizer, tokenizer_from_dict

__all__ = [
    "TokenData", "Tokenizer", "build_tokenizer", "cache_root", "load_corpus", "load_tokenizer",
    "prepare_data", "split_text", "tokenizer_from_dict",
]
