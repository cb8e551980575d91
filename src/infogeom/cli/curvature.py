"""``infogeom curvature``: curvature diagnostics of a checkpoint (table + PNG plots + JSON)."""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..curvature.analysis import ITEMS, AnalysisOptions, format_table, iter_analysis, parse_items
from ..curvature.blocks import GRANULARITIES
from ..curvature.operators import OPERATOR_KINDS
from ..errors import InfogeomError
from ..geometry.functional import freeze_except
from ..optim import build_optimizer
from ..train.checkpoint import load_checkpoint
from ..train.config import resolve_device
from ..train.limits import MAX_SEED, check_int, check_memory, estimate_bytes
from ..train.modeling import load_model, prepare_run_data
from ..train.rundir import check_output_dir

# Largest accepted counts (batch, Krylov and probe budgets, landscape grid).
LIMITS = {"batch_size": 4096, "k": 1000, "probes": 100_000, "hutchpp_probes": 100_000, "lanczos_steps": 10_000,
          "density_probes": 10_000, "block_steps": 10_000, "grid": 1001, "threads": 1024}

WIDTHS = (34, 22)  # table columns: rows are printed as items finish, so the widths are fixed
DTYPES = {"float32": torch.float32, "float64": torch.float64}  # --dtype: precision of the curvature computations


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "curvature",
        help="Hessian/Fisher spectra, traces, sharpness, noise scale, loss landscapes of a checkpoint",
        description="Curvature diagnostics of a checkpoint on one fixed batch of its training data: prints a "
        "table and writes JSON (and PNG plots) into --out (default: next to the checkpoint, in "
        "<checkpoint>-curvature/). Items (--what): " + ", ".join(ITEMS) + ".",
    )
    p.add_argument("checkpoint", metavar="CHECKPOINT",
                   help="checkpoint file (runs/NAME/checkpoints/*.pt) or hf:PATH (a transformers checkpoint folder)")
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
    p.add_argument("--token-chunk", default="auto", metavar="N|auto|none",
                   help="GGN/Fisher: at most N tokens' logits at once (auto: chunk only when one [tokens, vocabulary] "
                   "block exceeds 64 MiB; none: never)")
    p.add_argument("--batch-size", type=int, default=8, metavar="B", help="sequences in the probe batch (8)")
    p.add_argument(
        "--split", choices=("train", "val"), default="train", help="data split of the batch (train)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the batch and all random probes (0)")
    p.add_argument("--corpus", metavar="SPEC", help="draw the batch from another corpus, split as in training "
                   "and encoded with the model's tokenizer (default: the run's; shakespeare for hf:PATH)")
    p.add_argument("--out", metavar="DIR", help="output folder (default: <checkpoint>-curvature next to it)")
    p.add_argument("--k", type=int, default=3, help="eigenpairs for 'eig' (3)")
    p.add_argument("--tol", type=float, default=1e-4, help="Lanczos relative residual tolerance (1e-4)")
    p.add_argument(
        "--budget",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="seconds for all items (default 30): probe counts, Lanczos steps and the landscape grid not set "
        "below are sized from a measured product time; 0 = fixed defaults (32, 48, 64, 4, 21) instead",
    )
    p.add_argument(
        "--threads", type=int, metavar="N", help="torch threads (default: the faster of all cores and 1, timed)"
    )
    p.add_argument("--probes", type=int, help="Hutchinson probes for 'trace' (default: from --budget)")
    p.add_argument("--hutchpp-probes", type=int, help="Hutch++ products for 'trace' (default: from --budget)")
    p.add_argument("--lanczos-steps", type=int, help="Lanczos steps per SLQ probe (default: from --budget)")
    p.add_argument("--density-probes", type=int, help="SLQ probes for 'density'/'blocks' (default: from --budget)")
    p.add_argument("--block-steps", type=int, help="Lanczos steps per block for 'blocks' (default: from --budget)")
    p.add_argument("--granularity", default="sublayer", choices=GRANULARITIES, help="blocks for 'blocks'")
    p.add_argument("--rho", type=float, default=0.05, help="ε-ball radius for 'sharpness' (0.05)")
    p.add_argument("--dims", type=int, default=2, choices=(1, 2), help="landscape dimensions (2)")
    p.add_argument("--grid", type=int, help="landscape points per axis (default: from --budget)")
    p.add_argument("--span", type=float, default=1.0, help="landscape extent ±span (1.0)")
    p.add_argument("--compare", metavar="CHECKPOINT", help="second checkpoint for 'interpolate'")
    p.add_argument("--params", metavar="PATTERN",
                   help="restrict every item to the trainable parameters matching PATTERN, the others held "
                   "fixed: comma-separated globs tried on each dotted suffix of a name ('transformer.h.3.*', "
                   "'*.attn.*,lm_head.weight') or re:REGEX (re.search) (default: the run's optim.params, else all; "
                   "'*' = all; a LoRA model's trainable parameters are its adapters)")
    p.add_argument("--dtype", default="float32", choices=tuple(DTYPES),
                   help="precision of the computation: the model's weights are cast to it (default float32, also "
                   "for bf16-stored checkpoints or runs trained with dtype=bf16; float64 for reference values)")
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
    for name, high in LIMITS.items():  # unset sizes (None) come from --budget
        if getattr(args, name) is None:
            continue
        if getattr(args, name) < 1:
            raise InfogeomError(f"--{name.replace('_', '-')} must be a positive integer")
        check_int(getattr(args, name), f"--{name.replace('_', '-')}", 1, high)
    check_int(args.seed, "--seed", 0, MAX_SEED)
    token_chunk = {"auto": "auto", "none": None}.get(args.token_chunk, args.token_chunk)
    if isinstance(token_chunk, str) and token_chunk != "auto":
        if not token_chunk.isdigit() or int(token_chunk) < 1:
            raise InfogeomError(f"--token-chunk must be a positive integer, auto or none, got {args.token_chunk!r}")
        token_chunk = int(token_chunk)
    if not args.budget >= 0 or not math.isfinite(args.budget):
        raise InfogeomError("--budget must be a number of seconds >= 0 (0 = fixed default sizes)")
    for name in ("tol", "rho", "span"):
        if not getattr(args, name) > 0 or not math.isfinite(getattr(args, name)):
            raise InfogeomError(f"--{name} must be positive")
    if "interpolate" in what and not args.compare:
        raise InfogeomError("--what interpolate needs a second checkpoint: --compare CHECKPOINT")
    pretrained = args.checkpoint.startswith("hf:")  # a transformers checkpoint as it is (no optimizer state)
    source = Path(args.checkpoint[3:] if pretrained else args.checkpoint).expanduser()
    out = check_output_dir(Path(args.out) if args.out else source.with_name(source.name + "-curvature")
                           if pretrained else source.with_name(source.stem + "-curvature"))
    device = resolve_device(args.device)
    model, tokenizer, cfg = load_model(args.checkpoint, device)
    model.to(DTYPES[args.dtype])
    params = cfg.optim.params if args.params is None else args.params  # default: the subset the run trained
    if params:
        freeze_except(model, params, "--params" if args.params is not None else "the run's optim.params")
    check_memory(3 * estimate_bytes(cfg.model, tokenizer.vocab_size, args.batch_size, cfg.data.block_size),
                 device, f"curvature of a {args.batch_size}x{cfg.data.block_size} batch")
    compare = None
    if "interpolate" in what:
        compare = load_model(args.compare, device)[0].state_dict()
    if args.corpus:
        cfg.data.corpus = args.corpus
    data = prepare_run_data(cfg.data)
    block = cfg.data.block_size
    batch = data.get_batch(
        args.split, args.batch_size, block, torch.Generator().manual_seed(args.seed), device=device
    )
    ckpt = {} if pretrained else load_checkpoint(args.checkpoint)
    optimizer = _optimizer_from(ckpt, model, cfg) if "sharpness" in what else None
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    step = ckpt.get("step", "?")
    options = AnalysisOptions(
        operator=args.operator,
        k=args.k,
        tol=args.tol,
        probes=args.probes,
        hutchpp_probes=args.hutchpp_probes,
        lanczos_steps=args.lanczos_steps,
        density_probes=args.density_probes,
        block_steps=args.block_steps,
        granularity=args.granularity,
        n_head=cfg.model.n_head,
        rho=args.rho,
        dims=args.dims,
        grid=args.grid,
        span=args.span,
        seed=args.seed,
        progress=True,
        budget=args.budget or None,
        threads=args.threads,
        title=f"{cfg.model.arch} {n_params / 1e6:.2g}M, step {step}",
        token_chunk=token_chunk,
    )
    subset = f" matching {params!r}" if params else ""
    print(f"checkpoint: {args.checkpoint} ({cfg.model.arch}, {n_params:,} parameters{subset}, step {step}, "
          f"{args.dtype})")
    print(f"batch:      {args.batch_size} x {block} tokens from the {args.split} split, seed {args.seed}")
    print(f"outputs:    {out}/ (each item's JSON and plots as it finishes; summary.json)", flush=True)
    start = time.perf_counter()
    for _, rows in iter_analysis(model, batch, what, out, options, optimizer, compare):
        tqdm.write(format_table(rows, WIDTHS))
        sys.stdout.flush()
    print(f"done in {time.perf_counter() - start:.1f} s; outputs in {out}/")
    return 0
