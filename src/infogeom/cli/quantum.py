"""``infogeom quantum-ablation``: Adam vs Fubini–Study QNG vs pull-back QNG on a small hybrid quantum LM."""

from __future__ import annotations

import argparse
import json
import math
import os
from datetime import datetime
from pathlib import Path

from ..errors import InfogeomError
from ..train.limits import check_int
from ..train.rundir import check_output_file

# Accepted ranges of the counts (the state vector has 2^n_qubits amplitudes per input).
LIMITS = {"seeds": 1000, "steps": 10**7, "batch_size": 4096, "block_size": 4096, "n_qubits": 16, "n_layers": 100,
          "n_embd": 1 << 16, "recompute_every": 10**7, "max_inputs": 1 << 20, "threads": 1024}


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..study.ablation import ARMS, TASKS, AblationConfig

    d = AblationConfig()
    p.add_argument("--task", choices=TASKS, default=d.task,
                   help="bigram: embedding → quantum layer → vocabulary (the circuit carries the model); "
                   "gpt: "
                   "one-block GPT whose MLP is a quantum layer (default: %(default)s)")
    p.add_argument("--corpus", default=d.corpus,
                   help="shakespeare, pydoc, a .txt file (default: %(default)s)")
    p.add_argument("--arms", nargs="+", choices=ARMS, default=list(d.arms), help="optimizers to compare")
    p.add_argument("--seeds", type=int, default=d.seeds, help="seeds per arm (default: %(default)s)")
    p.add_argument("--steps", type=int, default=d.steps, help="training steps (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--block-size", type=int, default=d.block_size)
    p.add_argument("--n-qubits", type=int, default=d.n_qubits)
    p.add_argument("--n-layers", type=int, default=d.n_layers, help="ansatz layers (default: %(default)s)")
    p.add_argument("--n-embd", type=int, default=d.n_embd)
    p.add_argument("--lr", type=float, default=d.lr, help="AdamW learning rate (default: %(default)s)")
    p.add_argument("--qng-lr", type=float, default=d.qng_lr,
                   help="QNG learning rate of the circuit weights (default: %(default)s)")
    p.add_argument("--damping", type=float, default=d.damping)
    p.add_argument("--recompute-every", type=int, default=d.recompute_every)
    p.add_argument("--max-inputs", type=int, default=d.max_inputs,
                   help="token positions the metrics are averaged over (default: %(default)s)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s)")
    p.add_argument("--out", type=Path, metavar="DIR",
                   help="output folder for quantum_ablation.json, .png and .svg (default: a new "
                   "runs/quantum-ablation-<date-time>/); a path ending in .json names the JSON file itself "
                   "(e.g. --out benchmarks/results/quantum_ablation.json to update the committed results)")


def run(args: argparse.Namespace) -> int:
    import torch

    from ..study.ablation import AblationConfig, format_summary, plot_curves, run_ablation

    for name, high in LIMITS.items():
        check_int(getattr(args, name), f"--{name.replace('_', '-')}", 1, high)
    for name in ("lr", "qng_lr", "damping"):
        value = getattr(args, name)
        if not (value > 0 or (name == "damping" and value == 0)) or not math.isfinite(value):
            raise InfogeomError(f"--{name.replace('_', '-')} must be a finite "
                                f"{'non-negative' if name == 'damping' else 'positive'} number, got {value}")
    out = _output_path(args.out)
    check_output_file(out)
    torch.set_num_threads(args.threads)
    cfg = AblationConfig(task=args.task, corpus=args.corpus, arms=tuple(args.arms), seeds=args.seeds,
                         steps=args.steps, batch_size=args.batch_size, block_size=args.block_size,
                         n_qubits=args.n_qubits, n_layers=args.n_layers, n_embd=args.n_embd, lr=args.lr,
                         qng_lr=args.qng_lr, damping=args.damping, recompute_every=args.recompute_every,
                         max_inputs=args.max_inputs, eval_every=max(1, args.steps // 10))
    result = run_ablation(cfg)
    print(format_summary(result))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, out)
    plot_curves(result, out.with_suffix(".png"))
    print(f"wrote {out}, {out.with_suffix('.png')} and {out.with_suffix('.svg')}")
    return 0


def _output_path(out: Path | None) -> Path:
    """The JSON file: ``out`` itself if it ends in .json, else ``out/quantum_ablation.json``; by default in a
    fresh ``runs/quantum-ablation-<date-time>`` folder (never inside the repository's tracked files)."""
    if out is None:
        base = Path("runs") / f"quantum-ablation-{datetime.now():%Y%m%d-%H%M%S}"
        out, i = base, 1
        while out.exists():
            out, i = base.with_name(f"{base.name}-{i}"), i + 1
    return out if out.suffix == ".json" else out / "quantum_ablation.json"


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "quantum-ablation", help="compare Adam, Fubini-Study QNG and pull-back QNG on a hybrid quantum LM",
        description="Train a small hybrid (circuit + classical) character-level language model with AdamW, "
        "quantum natural gradient with the Fubini-Study metric, and quantum natural gradient with the "
        "pull-back of the output distribution, over several seeds; print mean ± std of the final validation "
        "loss and save JSON + a plot.")
    add_arguments(p)
    p.set_defaults(func=run)
