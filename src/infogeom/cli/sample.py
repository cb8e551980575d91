"""``infogeom sample``: generate text from a checkpoint."""

from __future__ import annotations

import argparse

import torch

from ..errors import InfogeomError
from ..models.gpt import generate
from ..train.config import resolve_device
from ..train.limits import MAX_SEED, check_int, check_memory, estimate_bytes
from ..train.modeling import load_model


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "sample", help="generate text from a checkpoint",
        description="Autoregressive sampling: each next token is drawn from softmax(logits / temperature), "
        "restricted to the top-k tokens when --top-k is given; the context is the last block_size tokens.")
    p.add_argument("checkpoint", metavar="CHECKPOINT",
                   help="checkpoint file (runs/NAME/checkpoints/*.pt) or hf:PATH (a transformers checkpoint folder)")
    p.add_argument("--prompt", default="", help="text to continue (default: a newline)")
    p.add_argument("--tokens", type=int, default=200, metavar="N", help="tokens to generate (default: 200)")
    p.add_argument("--temperature", type=float, default=0.8,
                   help="softmax temperature; 0 picks the most likely token (default: 0.8)")
    p.add_argument("--top-k", type=int, metavar="K", help="sample only among the K most likely tokens")
    p.add_argument("--seed", type=int, default=0, help="random seed, for reproducible samples (default: 0)")
    p.add_argument("--num-samples", type=int, default=1, metavar="M", help="independent samples (default: 1)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.tokens < 0:
        raise InfogeomError(f"--tokens must be non-negative, got {args.tokens}")
    if not args.temperature >= 0:
        raise InfogeomError(f"--temperature must be non-negative, got {args.temperature}")
    if args.top_k is not None and args.top_k < 1:
        raise InfogeomError(f"--top-k must be a positive integer, got {args.top_k}")
    if args.num_samples < 1:
        raise InfogeomError(f"--num-samples must be a positive integer, got {args.num_samples}")
    if args.temperature == float("inf"):
        raise InfogeomError("--temperature must be finite")
    check_int(args.tokens, "--tokens", 0, 1_000_000)
    check_int(args.num_samples, "--num-samples", 1, 100_000)
    check_int(args.seed, "--seed", 0, MAX_SEED)
    if args.top_k is not None:
        check_int(args.top_k, "--top-k", 1, 1 << 24)
    device = resolve_device(args.device)
    model, tokenizer, cfg = load_model(args.checkpoint, device)
    check_memory(estimate_bytes(cfg.model, tokenizer.vocab_size, args.num_samples, cfg.model.block_size,
                                training=False, stored_tokens=args.num_samples * args.tokens), device,
                 f"sampling {args.num_samples} x {args.tokens} tokens")
    prompt = tokenizer.encode(args.prompt or "\n")
    if not prompt:
        raise InfogeomError("the prompt encodes to no tokens")
    idx = torch.tensor([prompt] * args.num_samples, dtype=torch.long, device=device)
    gen = torch.Generator(device=device).manual_seed(args.seed)
    out = generate(model, idx, args.tokens, cfg.model.block_size, args.temperature, args.top_k, gen)
    texts = [tokenizer.decode(row.tolist()) for row in out.cpu()]
    print("\n---\n".join(texts))
    return 0
