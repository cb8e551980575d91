"""``infogeom curvature``: curvature diagnostics of a checkpoint (table + PNG plots + JSON)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

from ..curvature.analysis import ITEMS, AnalysisOptions, analyze, format_table, parse_items
from ..curvature.blocks import GRANULARITIES
from ..curvature.operators import OPERATOR_KINDS
from ..errors import InfogeomError
from ..optim import build_optimizer
from ..train.checkpoint import load_checkpoint
from ..train.config import resolve_device
from ..train.limits import MAX_SEED, check_int, check_memory, estimate_bytes
from ..train.modeling import load_model, prepare_run_data
from ..train.rundir import check_output_dir

# Largest accepted counts (batch, Krylov and probe budgets, landscape grid).
LIMITS = {"batch_size": 4096, "k": 1000, "probes": 100_000, "lanczos_steps": 10_000, "density_probes": 10_000,
          "grid": 1001}


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "curvature",
        help="Hessian/Fisher spectra, traces, sharpness, noise scale, loss landscapes of a checkpoint",
        description="Curvature diagnostics of a checkpoint on one fixed batch of its training data: prints a "
        "table and writes JSON (and PNG plots) into --out (default: next to the checkpoint, in "
        "<checkpoint>-curvature/). Items (--what): " + ", ".join(ITEMS) + ".",
    )
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="checkpoint file (runs/NAME/checkpoints/*.pt)")
    p.add_argument(
        "--what",
        default="eig,trace,density",
        metavar="ITEMS",
        help="comma-separated items (default: eig,trace,density): " + ", ".join(ITEMS),
    )
    p.add_argument(
        "--operator",
        default="hessian",
        choices=OPERATOR_KINDS,
        help="curvature for eig/trace/density/blocks (default: hessian)",
    )
    p.add_argument("--batch-size", type=int, default=8, metavar="B", help="sequences in the probe batch (8)")
    p.add_argument(
        "--split", choices=("train", "val"), default="train", help="data split of the batch (train)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the batch and all random probes (0)")
    p.add_argument("--out", metavar="DIR", help="output folder (default: <checkpoint>-curvature next to it)")
    p.add_argument("--k", type=int, default=3, help="eigenpairs for 'eig' (3)")
    p.add_argument("--tol", type=float, default=1e-4, help="Lanczos relative residual tolerance (1e-4)")
    p.add_argument("--probes", type=int, default=32, help="Hutchinson probes for 'trace' (32)")
    p.add_argument("--lanczos-steps", type=int, default=64, help="Lanczos steps per SLQ probe (64)")
    p.add_argument("--density-probes", type=int, default=4, help="SLQ probes for 'density'/'blocks' (4)")
    p.add_argument("--granularity", default="sublayer", choices=GRANULARITIES, help="blocks for 'blocks'")
    p.add_argument("--rho", type=float, default=0.05, help="ε-ball radius for 'sharpness' (0.05)")
    p.add_argument("--dims", type=int, default=2, choices=(1, 2), help="landscape dimensions (2)")
    p.add_argument("--grid", type=int, default=21, help="landscape points per axis (21)")
    p.add_argument("--span", type=float, default=1.0, help="landscape extent ±span (1.0)")
    p.add_argument("--compare", metavar="CHECKPOINT", help="second checkpoint for 'interpolate'")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    p.set_defaults(func=run)


def _optimizer_from(ckpt: dict, model: torch.nn.Module, cfg) -> torch.optim.Optimizer | None:
    """The run's optimizer with its saved state (for the preconditioned sharpness), or None if unavailable."""
    if not ckpt.get("optimizer"):
        return None
    opt = build_optimizer(cfg.optim.name, model, cfg.optim.lr, cfg.optim.weight_decay, **cfg.optim.options)
    try:
        opt.load_state_dict(ckpt["optimizer"])
    except (ValueError, KeyError, RuntimeError):
        return None
    return opt


def run(args: argparse.Namespace) -> int:
    what = parse_items(args.what)
    for name, high in LIMITS.items():
        if getattr(args, name) < 1:
            raise InfogeomError(f"--{name.replace('_', '-')} must be a positive integer")
        check_int(getattr(args, name), f"--{name.replace('_', '-')}", 1, high)
    check_int(args.seed, "--seed", 0, MAX_SEED)
    for name in ("tol", "rho", "span"):
        if not getattr(args, name) > 0 or not math.isfinite(getattr(args, name)):
            raise InfogeomError(f"--{name} must be positive")
    if "interpolate" in what and not args.compare:
        raise InfogeomError("--what interpolate needs a second checkpoint: --compare CHECKPOINT")
    out = check_output_dir(
        Path(args.out)
        if args.out
        else Path(args.checkpoint).with_name(Path(args.checkpoint).stem + "-curvature")
    )
    device = resolve_device(args.device)
    model, tokenizer, cfg = load_model(args.checkpoint, device)
    check_memory(3 * estimate_bytes(cfg.model, tokenizer.vocab_size, args.batch_size, cfg.data.block_size),
                 device, f"curvature of a {args.batch_size}x{cfg.data.block_size} batch")
    compare = None
    if "interpolate" in what:
        compare = load_model(args.compare, device)[0].state_dict()
    data = prepare_run_data(cfg.data)
    block = cfg.data.block_size
    batch = data.get_batch(
        args.split, args.batch_size, block, torch.Generator().manual_seed(args.seed), device=device
    )
    optimizer = _optimizer_from(load_checkpoint(args.checkpoint), model, cfg) if "sharpness" in what else None
    options = AnalysisOptions(
        operator=args.operator,
        k=args.k,
        tol=args.tol,
        probes=args.probes,
        lanczos_steps=args.lanczos_steps,
        density_probes=args.density_probes,
        granularity=args.granularity,
        n_head=cfg.model.n_head,
        rho=args.rho,
        dims=args.dims,
        grid=args.grid,
        span=args.span,
        seed=args.seed,
        progress=True,
    )
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"checkpoint: {args.checkpoint} ({cfg.model.arch}, {n_params:,} parameters)")
    print(f"batch:      {args.batch_size} x {block} tokens from the {args.split} split, seed {args.seed}")
    rows = analyze(model, batch, what, out, options, optimizer, compare)
    print(format_table(rows))
    print(f"outputs:    {out}/")
    return 0
