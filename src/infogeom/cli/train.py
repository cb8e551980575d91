"""``infogeom train``: train a language model from defaults, a TOML file and overrides; resume; DDP."""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
from dataclasses import fields

from ..errors import InfogeomError
from ..train import Trainer, dumps_toml, load_config
from ..train.checkpoint import load_checkpoint, resolve_checkpoint, run_dir_of
from ..train.config import FIELD_HELP, SECTIONS, TrainConfig
from ..train.modeling import config_of

# Explicit flags for the common settings: (flag, config keys it sets, metavar).
FLAGS = [
    ("--corpus", ("data.corpus",), "SPEC"),
    ("--tokenizer", ("data.tokenizer",), "SPEC"),
    ("--optimizer", ("optim.name",), "NAME"),
    ("--lr", ("optim.lr",), "LR"),
    ("--batch-size", ("data.batch_size",), "B"),
    ("--block-size", ("model.block_size", "data.block_size"), "T"),
    ("--max-steps", ("max_steps",), "N"),
    ("--max-seconds", ("max_seconds",), "S"),
    ("--grad-accum", ("grad_accum",), "K"),
    ("--seed", ("seed",), "SEED"),
    ("--device", ("device",), "DEVICE"),
    ("--out", ("out_dir",), "DIR"),
    ("--params", ("optim.params",), "PATTERN"),
]

EXAMPLES = """\
examples:
  infogeom train                                   # ~1M-parameter char GPT on Shakespeare (defaults)
  infogeom train --corpus pydoc --tokenizer bpe:512 --max-steps 2000 --out runs/pydoc
  infogeom train --config run.toml --set optim.options.momentum=0.9 --set model.dropout=0.1
  infogeom train --out runs/pydoc --resume latest  # continue a stopped run (Ctrl-C writes a checkpoint)
  infogeom train --model hf:models/my-gpt2 --corpus notes.txt --block-size 64 --max-steps 100  # fine-tune
  infogeom train --model hf:models/my-gpt2 --set model.lora_r=8 --optimizer kfac  # LoRA adapters only
  infogeom train --params 'h.3.*' --set dtype=bf16   # train block 3 only, bf16 autocast
  torchrun --nproc_per_node=2 -m infogeom train    # DDP: data.batch_size is split over the processes
"""


def _keys_help() -> str:
    """Every config key with its default and meaning (the TOML tables and --set keys)."""
    defaults = TrainConfig()
    lines = ["config keys (TOML: top-level keys and [model] [data] [optim] tables; --set KEY=VALUE):"]
    for prefix, obj in (("", defaults), *((f"{s}.", getattr(defaults, s)) for s in SECTIONS)):
        for f in fields(obj):
            key = prefix + f.name
            if key in FIELD_HELP:
                lines.append(f"  {key:<20} {json.dumps(getattr(obj, f.name)):<14} {FIELD_HELP[key]}")
    return "\n".join(lines)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train a language model (GPT or Hugging Face GPT-2) with any registered optimizer",
        description=textwrap.fill(
            "Train a decoder-only language model. Settings come from the defaults, then --config, then the "
            "flags below and --set, in that order. Results go to the run folder: config.toml, "
            "tokenizer.json, metrics.jsonl, checkpoints/ (and tb/ for TensorBoard). Ctrl-C stops after the "
            "current step and writes a checkpoint.", 100),
        epilog=_keys_help() + "\n\n" + EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", metavar="TOML", help="TOML file with config keys (see below)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key, e.g. --set optim.lr=3e-4 (repeatable; applied last)")
    for flag, keys, metavar in FLAGS:
        p.add_argument(flag, metavar=metavar, help=f"{FIELD_HELP[keys[0]]} (sets {' and '.join(keys)})")
    p.add_argument("--model", metavar="SPEC",
                   help="gpt, hf-gpt2, or hf:PATH to fine-tune / continue a pretrained transformers checkpoint "
                   "(a folder with config.json, safetensors and its tokenizer; sets model.arch=hf, model.path "
                   "and data.tokenizer=hf)")
    p.add_argument("--resume", metavar="CHECKPOINT",
                   help="continue from a checkpoint file, or 'latest' in --out DIR; the run's own config is "
                   "the base, so only the settings you pass change (the model and vocabulary must not)")
    p.add_argument("--monitor", metavar="QUANTITIES",
                   help="measure curvature while training, comma-separated: lambda_max, hessian_trace, "
                   "fisher_trace, noise_scale, gap, precond_sharpness (curv/* columns of metrics.jsonl)")
    p.add_argument("--monitor-every", type=int, default=100, metavar="N",
                   help="steps between curvature measurements (100)")
    p.add_argument("--monitor-budget", type=float, default=0.1, metavar="F",
                   help="largest fraction of training time the monitor may take (0.1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar or evaluation lines")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as TOML and exit")
    p.set_defaults(func=run)


def _model_overrides(spec: str | None) -> list[str]:
    """``--model``: ``hf:PATH`` sets the arch, the path and the tokenizer; anything else is model.arch."""
    if spec is None:
        return []
    if spec.startswith("hf:"):
        return ["model.arch=hf", f"model.path={spec[3:]}", "data.tokenizer=hf"]
    return [f"model.arch={spec}"]


def _overrides(args: argparse.Namespace) -> list[str]:
    out = _model_overrides(args.model)
    for flag, keys, _ in FLAGS:
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is not None:
            out += [f"{k}={value}" for k in keys]
    if args.no_progress:
        out.append("progress=false")
    return out + args.set


def _monitor(args: argparse.Namespace):
    """The :class:`~infogeom.curvature.CurvatureMonitor` of ``--monitor`` (validated before any work)."""
    from ..curvature import CurvatureMonitor

    quantities = [q.strip() for q in args.monitor.split(",") if q.strip()]
    if not quantities:
        raise InfogeomError("--monitor is empty; name at least one quantity, e.g. --monitor lambda_max")
    if args.monitor_every < 1:
        raise InfogeomError(f"--monitor-every must be a positive integer, got {args.monitor_every}")
    return CurvatureMonitor(every=args.monitor_every, quantities=quantities, budget=args.monitor_budget)


def run(args: argparse.Namespace) -> int:
    overrides = _overrides(args)
    resume = None
    if args.resume:  # the checkpoint's config is the base; the file and flags change what they name
        out_dir = load_config(args.config, overrides, validate=False).out_dir
        resume = resolve_checkpoint(args.resume, out_dir or None, note=lambda s: print(s, file=sys.stderr))
    if resume is not None:
        base = config_of(load_checkpoint(resume), resume)
        base.out_dir = str(run_dir_of(resume))
        cfg = load_config(args.config, overrides, base=base)
    else:
        cfg = load_config(args.config, overrides)
    if args.print_config:
        print(dumps_toml(cfg), end="")
        return 0
    main = int(os.environ.get("RANK", "0")) == 0
    if args.resume and resume is None:
        print(f"infogeom: note: {cfg.out_dir} holds no checkpoint (a run stopped before its first one); "
              f"starting it from step 0", file=sys.stderr)
    callbacks = [_monitor(args)] if args.monitor else []
    trainer = Trainer(cfg, resume=resume, callbacks=callbacks)
    try:
        if main:
            what = f"resuming at step {trainer.step}" if resume else "training"
            print(f"infogeom: {what} in {trainer.out_dir} ({trainer.model.num_parameters():,} parameters, "
                  f"{trainer.world_size} process(es), {trainer.device})", flush=True)
        result = trainer.fit()
    finally:
        trainer.close()
    if not main:
        return 130 if result.stop_reason == "interrupted" else 0
    if result.stop_reason == "interrupted":
        print(f"infogeom: interrupted at step {result.step}; checkpoint {result.checkpoint}; continue with: "
              f"infogeom train --out {result.out_dir} --resume latest", file=sys.stderr)
        return 130
    if result.stop_reason == "already_done":
        print(f"infogeom: {result.out_dir} already finished max_steps={cfg.max_steps}; pass a larger "
              f"--max-steps to continue")
    val = result.final_val_loss
    print(f"finished at step {result.step} ({result.stop_reason}) after {result.train_time:.1f} s of training"
          + (f"; validation loss {val:.4f}" if val is not None else ""))
    print(f"results:     {result.out_dir}")
    print(f"metrics:     {result.metrics_path}")
    print(f"checkpoint:  {result.checkpoint}")
    if result.tensorboard_dir is not None:
        print(f"tensorboard: tensorboard --logdir {result.tensorboard_dir}")
    print(f"sample:      infogeom sample {result.checkpoint} --tokens 300")
    return 0
