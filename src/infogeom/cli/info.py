"""``infogeom info``: versions, device, corpora, tokenizers, optimizers; a checkpoint's model summary."""

from __future__ import annotations

import argparse
import importlib.metadata
import platform

import torch

from .. import __version__
from ..data import tokenizer_from_dict
from ..data.cache import cache_root
from ..data.corpus import CORPUS_HELP
from ..data.tokenizer import TOKENIZER_HELP
from ..optim import OPTIMIZERS
from ..train.checkpoint import load_checkpoint
from ..train.modeling import build_model, config_of, load_state

OPTIONAL = ("transformers", "datasets", "tensorboard", "pennylane")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "info", help="versions, device, corpora, tokenizers, optimizers; summary of a checkpoint",
        description="Print what this installation offers; given a checkpoint, also its model (parameters, "
        "training FLOPs per token), data, optimizer and progress.")
    p.add_argument("checkpoint", nargs="?", metavar="CHECKPOINT", help="checkpoint file to summarize")
    p.set_defaults(func=run)


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _device() -> str:
    if torch.cuda.is_available():
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        return f"cuda ({names})"
    return f"cpu ({torch.get_num_threads()} threads; CUDA not available)"


def _checkpoint_summary(path: str) -> list[str]:
    ckpt = load_checkpoint(path)
    cfg = config_of(ckpt, path)
    m, d, o = cfg.model, cfg.data, cfg.optim
    tokenizer_from_dict(ckpt["tokenizer"])
    with torch.device("meta"):  # shapes only: no memory, no initialization cost
        model = build_model(m, int(ckpt["vocab_size"]))
    load_state(model, ckpt["model"], path)  # names and shapes must match (copies into meta tensors are no-ops)
    n, n_body = model.num_parameters(), model.num_parameters(non_embedding=True)
    flops = (f"{model.flops_per_token(d.block_size):,.0f} per token for training (6·N_non-emb + 12·L·T·C at "
             f"T={d.block_size})" if hasattr(model, "flops_per_token") else "n/a for this architecture")
    last = ckpt.get("last_eval") or {}
    lines = [
        f"checkpoint:  {path}",
        f"  progress:  step {ckpt['step']} of {cfg.max_steps}, {ckpt.get('tokens', 0):,} tokens, "
        f"{ckpt['train_time']:.1f} s of training"
        + (f", val loss {last['val_loss']:.4f} at step {last['step']}" if "val_loss" in last else ""),
        f"  model:     {m.arch}, {m.n_layer} layers, {m.n_head} heads, width {m.n_embd}, context "
        f"{m.block_size}, {m.norm}, dropout {m.dropout}, tied embeddings {m.tie_weights}",
        f"  params:    {n:,} ({n_body:,} non-embedding)",
        f"  FLOPs:     {flops}",
        f"  data:      {d.corpus}, tokenizer {d.tokenizer} ({ckpt['vocab_size']} tokens), "
        f"batch {d.batch_size} x {d.block_size}, grad_accum {cfg.grad_accum}",
        f"  optimizer: {o.name}, lr {o.lr:g} (warmup {o.warmup_steps}, {o.schedule} to {o.min_lr:g}), "
        f"weight decay {o.weight_decay:g}, clip {o.grad_clip:g}"
        + (f", options {o.options}" if o.options else ""),
    ]
    return lines


def run(args: argparse.Namespace) -> int:
    lines = [
        f"infogeom {__version__} (Python {platform.python_version()}, torch {torch.__version__})",
        f"device:      {_device()}",
        f"cache:       {cache_root()}",
        f"corpora:     {CORPUS_HELP}",
        f"tokenizers:  {TOKENIZER_HELP}",
        f"optimizers:  {', '.join(sorted(OPTIMIZERS))}",
        "optional:    " + ", ".join(f"{p} {_version(p)}" for p in OPTIONAL),
    ]
    if args.checkpoint:
        lines += _checkpoint_summary(args.checkpoint)
    print("\n".join(lines))
    return 0
