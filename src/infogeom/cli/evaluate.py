"""``infogeom eval``: validation loss and perplexity of a checkpoint."""

from __future__ import annotations

import argparse
import math

from ..data import TokenData, load_corpus
from ..errors import InfogeomError
from ..train.config import resolve_device
from ..train.evaluation import eval_batches, mean_loss
from ..train.limits import MAX_SEED, check_int, check_memory, estimate_bytes
from ..train.modeling import load_model, prepare_run_data


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "eval", help="validation loss and perplexity of a checkpoint",
        description="Mean next-token cross-entropy (nats/token) and perplexity exp(loss) of a checkpoint on "
        "fixed random windows. By default it uses the run's own data, batches and seed, so it reproduces the "
        "last validation loss the run logged.")
    p.add_argument("checkpoint", metavar="CHECKPOINT",
                   help="checkpoint file (runs/NAME/checkpoints/*.pt) or hf:PATH (a transformers checkpoint folder)")
    p.add_argument("--split", choices=("val", "train"), default="val", help="data split (default: val)")
    p.add_argument("--corpus", metavar="SPEC", help="evaluate on another corpus instead (all of its text, "
                   "encoded with the checkpoint's tokenizer): shakespeare, pydoc, a .txt file, hf:NAME")
    p.add_argument("--batches", type=int, metavar="N",
                   help="number of batches (default: the run's eval_batches)")
    p.add_argument("--batch-size", type=int, metavar="B", help="sequences per batch (default: the run's)")
    p.add_argument("--seed", type=int, metavar="SEED", help="seed of the windows (default: the run's seed)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    for name in ("batches", "batch_size"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise InfogeomError(f"--{name.replace('_', '-')} must be a positive integer")
        if getattr(args, name) is not None:
            check_int(getattr(args, name), f"--{name.replace('_', '-')}", 1, 1 << 20)
    if args.seed is not None:
        check_int(args.seed, "--seed", 0, MAX_SEED)
    device = resolve_device(args.device)
    model, tokenizer, cfg = load_model(args.checkpoint, device)
    n = args.batches or cfg.eval_batches
    batch = args.batch_size or cfg.data.batch_size
    T = cfg.data.block_size
    check_memory(estimate_bytes(cfg.model, tokenizer.vocab_size, batch, T, training=False,
                                stored_tokens=n * batch * T), device, f"evaluating {n} batches of {batch}x{T}")
    if args.corpus:
        ids = tokenizer.encode_array(load_corpus(args.corpus, cfg.data.max_corpus_mb << 20))
        data, source = TokenData(tokenizer, ids, ids), f"{args.corpus} (all text)"
    else:
        data = prepare_run_data(cfg.data)
        if data.tokenizer.to_dict() != tokenizer.to_dict():
            raise InfogeomError(f"corpus {cfg.data.corpus!r} now yields another {cfg.data.tokenizer} "
                                f"vocabulary than the checkpoint's (evaluate a given text with --corpus)")
        source = f"{cfg.data.corpus} ({args.split} split)"
    seed = cfg.seed if args.seed is None else args.seed
    loss = float(mean_loss(model, eval_batches(data, args.split, n, batch, T, seed), device))
    print(f"checkpoint: {args.checkpoint}")
    print(f"data:       {source}, {n} batches x {batch} sequences x {T} tokens, seed {seed}")
    print(f"loss:       {loss:.4f} nats/token ({loss / math.log(2):.4f} bits/token)")
    print(f"perplexity: {math.exp(min(loss, 700.0)):.3f}")
    return 0
