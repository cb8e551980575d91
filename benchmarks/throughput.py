"""Training throughput (tokens/s) of infogeom's Trainer against a bare PyTorch loop, side by side.

Both train the same model from the same initialization on the same TokenData batches with the same optimizer
(AdamW from the registry), gradient clipping and warmup-cosine LambdaLR. The bare loop is

    x, y = data.get_batch(...); loss = lm_loss(model(x), y); loss.backward(); clip; opt.step(); sched.step();
    opt.zero_grad()

with no logging. The Trainer runs with its default logging (metrics.jsonl every 10 steps, TensorBoard,
progress bar); evaluation and checkpoints happen only after the last step, outside the timed window. Timing is
external: a timestamp at the start of each step; tokens/s = (steps after warm-up − 1) · tokens/step / (time
from the first timed step's start to the last step's start). Runs alternate (bare, Trainer, Trainer, bare, …)
so machine-load drift hits both equally; the table reports medians and the per-pair ratios.

    python benchmarks/throughput.py            # the default ~0.8M-parameter model, 60 steps × 3 pairs
    python benchmarks/throughput.py --quick    # a small model, a few seconds
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from infogeom.models.gpt import lm_loss
from infogeom.optim import build_optimizer
from infogeom.train import Trainer, load_config
from infogeom.train.modeling import build_model, prepare_run_data
from infogeom.train.schedule import build_scheduler

RESULTS = Path(__file__).parent / "results" / "throughput.json"


def bare_loop(cfg, data, steps: int) -> list[float]:
    """Step start timestamps of a plain PyTorch training loop."""
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, data.vocab_size)
    o = cfg.optim
    opt = build_optimizer(o.name, model, o.lr, o.weight_decay, **o.options)
    sched = build_scheduler(opt, o.warmup_steps, cfg.max_steps, o.lr, o.min_lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    model.train()
    stamps = []
    for _ in range(steps):
        stamps.append(time.perf_counter())
        x, y = data.get_batch("train", cfg.data.batch_size, cfg.data.block_size, gen)
        loss = lm_loss(model(x), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    return stamps


def trainer_loop(cfg, steps: int) -> list[float]:
    """Step start timestamps of ``Trainer.fit`` (its train_step wrapped by a timestamping shim)."""
    with tempfile.TemporaryDirectory() as tmp:
        run = load_config(None, [f"out_dir={tmp}/run"], base=cfg)
        trainer = Trainer(run)
        stamps = []
        step = trainer.train_step

        def timed_step():
            stamps.append(time.perf_counter())
            return step()

        trainer.train_step = timed_step
        try:
            trainer.fit()
        finally:
            trainer.close()
    assert len(stamps) == steps
    return stamps


def tokens_per_s(stamps: list[float], warmup: int, tokens_per_step: int) -> float:
    timed = stamps[warmup:]
    return (len(timed) - 1) * tokens_per_step / (timed[-1] - timed[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small model, few steps (seconds)")
    parser.add_argument("--steps", type=int, help="steps per run (default 60, quick 30)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed first steps per run (default 10)")
    parser.add_argument("--repeats", type=int, help="bare/Trainer pairs (default 3, quick 2)")
    parser.add_argument("--corpus", default="shakespeare", help="corpus (default shakespeare)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"JSON output (default {RESULTS})")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    steps = args.steps or (30 if args.quick else 60)
    repeats = args.repeats or (2 if args.quick else 3)
    size = (["model.n_layer=2", "model.n_embd=64", "model.block_size=64", "data.block_size=64",
             "data.batch_size=16"] if args.quick else [])
    cfg = load_config(None, [f"data.corpus={args.corpus}", f"max_steps={steps}", "optim.warmup_steps=5",
                             "eval_every=0", "ckpt_every=0", "eval_batches=1", "device=cpu", *size])
    data = prepare_run_data(cfg.data)
    tok = cfg.data.batch_size * cfg.data.block_size
    n_params = build_model(cfg.model, data.vocab_size).num_parameters()

    bare, ours = [], []
    for r in range(repeats):
        order = ("bare", "trainer") if r % 2 == 0 else ("trainer", "bare")
        for which in order:
            if which == "bare":
                bare.append(tokens_per_s(bare_loop(cfg, data, steps), args.warmup, tok))
            else:
                ours.append(tokens_per_s(trainer_loop(cfg, steps), args.warmup, tok))
    ratios = [t / b for t, b in zip(ours, bare)]
    ratio = statistics.median(ours) / statistics.median(bare)

    print(f"\nmodel {n_params:,} params, batch {cfg.data.batch_size} x {cfg.data.block_size} tokens, "
          f"{steps} steps/run ({args.warmup} warm-up), {repeats} interleaved pairs, "
          f"{torch.get_num_threads()} threads")
    print(f"{'loop':<10}{'median tok/s':>14}{'runs (tok/s)':>40}")
    print(f"{'bare':<10}{statistics.median(bare):>14.0f}{'  '.join(f'{v:.0f}' for v in bare):>40}")
    print(f"{'Trainer':<10}{statistics.median(ours):>14.0f}{'  '.join(f'{v:.0f}' for v in ours):>40}")
    pairs = ", ".join(f"{x:.3f}" for x in ratios)
    print(f"Trainer / bare: {ratio:.3f} (ratio of medians); per pair: {pairs}; "
          f"target >= 0.95: {'met' if ratio >= 0.95 else 'NOT met'}")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "benchmark": "throughput", "quick": args.quick, "parameters": n_params,
        "batch_size": cfg.data.batch_size, "block_size": cfg.data.block_size, "steps": steps,
        "warmup": args.warmup, "repeats": repeats, "bare_tokens_per_s": bare, "trainer_tokens_per_s": ours,
        "ratio_of_medians": ratio, "ratio_per_pair": ratios, "target": 0.95,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                    "threads": torch.get_num_threads(), "load_avg": os.getloadavg()},
    }, indent=2) + "\n")
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
