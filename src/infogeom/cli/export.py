"""``infogeom export``: a trained checkpoint back to a transformers folder (``save_pretrained``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..models.hf import export_pretrained
from ..train.modeling import load_model
from ..train.rundir import check_output_dir


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "export", help="write a checkpoint of a transformers model as a Hugging Face folder",
        description="Load a checkpoint of an arch 'hf' or 'hf-gpt2' run and write its weights and config with "
        "save_pretrained (config.json, model.safetensors) to OUT, plus its tokenizer (tokenizer.json) when it is "
        "a bpe:N or hf:PATH tokenizer; AutoModelForCausalLM.from_pretrained(OUT) then gives the same logits. "
        "LoRA adapters (model.lora_r) are merged into the weights first: OUT is a plain transformers model. "
        "OUT must be new or an empty folder; it appears complete or not at all.")
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="checkpoint file (runs/NAME/checkpoints/*.pt)")
    p.add_argument("out", metavar="OUT", help="folder to create")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    out = check_output_dir(Path(args.out), "OUT")
    model, tokenizer, cfg = load_model(args.checkpoint)
    files = export_pretrained(model, tokenizer, out)
    print(f"exported {args.checkpoint} ({cfg.model.arch}, {model.num_parameters():,} parameters) to {out}/: "
          f"{', '.join(files)}")
    return 0
