"""Time-to-target benchmark of the optimizers on the default corpus and model, all in one run.

Every run trains the same model (``GPTConfig`` defaults, char-level Shakespeare, the trainer's default batch
32 × 128) from the same seed and data order with :func:`infogeom.train.train`, for a fixed budget of
*training* seconds (evaluation excluded: the trainer's ``train_time``), constant learning rate after a 50-step
warmup, weight decay 0.1 (NGCG: 1e-3, see ``GRIDS``), gradient clipping 1.0. Each optimizer's learning rate is
tuned on a grid (≥ 4 values for the baselines in a full run); its best run (lowest time to target, then lowest
validation loss) represents it. Reported per optimizer: steps and seconds to reach the target validation loss,
best validation loss within the budget, seconds per step, and the ratios of these to AdamW's. The target
defaults to the best validation loss of the tuned AdamW run ("time to AdamW's final loss").

Baselines: ``torch.optim.AdamW``; Muon + AdamW (``torch.optim.Muon`` on hidden matrices, modded-nanogpt
recipe); SOAP from ``heavyball`` (``pip install heavyball``; torch.compile disabled so no compilation warm-up
is timed).

    python benchmarks/optimizers.py            # full run: ~45 min on 2 quiet cores
    python benchmarks/optimizers.py --quick    # smoke run: ~3 min

Writes ``benchmarks/results/optimizers.json`` and ``optimizers.png`` (validation loss versus training
seconds).
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from infogeom.errors import InfogeomError
from infogeom.optim import register_optimizer
from infogeom.optim.params import adamw_groups
from infogeom.study.experiments.common import time_to_target
from infogeom.train import TrainConfig, train

RESULTS = Path(__file__).parent / "results"

#: label -> (learning-rate grid of a full run, options). Ours use their library defaults, except the
#: one-sided EK-FAC variant (``max_basis_dim=256``: the 384/512-wide factor sides of the default GPT stay
#: diagonal, see docs/optimizers.md).
#: ``weight_decay`` in the options overrides the shared 0.1: decoupled decay shrinks θ by lr·wd per step, and
#: NGCG's lr is ≈ 1 (wd 0.1 would shrink every weight by 10% per step and stall it), so 1e-3 matches AdamW's
#: ≈ 8e-4 per step.
GRIDS: dict[str, tuple[list[float], dict]] = {
    "adamw": ([2e-3, 4e-3, 8e-3, 1.6e-2], {}),
    "muon": ([4e-3, 8e-3, 1.6e-2, 3.2e-2], {}),
    "soap": ([2e-3, 4e-3, 8e-3, 1.6e-2], {}),
    "ekfac": ([5e-3, 1e-2, 2e-2], {}),
    "ekfac-1s": ([5e-3, 1e-2, 2e-2], {"max_basis_dim": 256}),
    "kfac": ([1e-3, 3e-3, 1e-2], {}),
    "ngcg": ([1.0], {"weight_decay": 1e-3}),
}
QUICK_GRIDS = {"adamw": [4e-3, 8e-3], "muon": [1.6e-2], "soap": [8e-3], "ekfac": [1e-2], "ekfac-1s": [1e-2],
               "kfac": [3e-3], "ngcg": [1.0]}
#: labels that are not registry names
OPTIMIZER = {"ekfac-1s": "ekfac"}


@register_optimizer("soap")
def _soap(model: nn.Module, lr: float, weight_decay: float, **options):
    """SOAP (Vyas et al. 2024) from heavyball, eager (no torch.compile), decay on matrices only."""
    try:
        import heavyball
    except ImportError as exc:
        raise InfogeomError("the SOAP baseline needs heavyball: pip install heavyball") from exc
    heavyball.utils.compile_mode = None
    return heavyball.SOAP(adamw_groups(model, (), weight_decay), lr=lr, weight_decay=weight_decay, **options)


@dataclass
class Run:
    name: str
    lr: float
    steps: int = 0
    train_time: float = 0.0
    curve: list[tuple[float, int, float]] = field(default_factory=list)  # (train seconds, step, val loss)
    error: str | None = None

    @property
    def best_val(self) -> float:
        return min((v for _, _, v in self.curve), default=math.inf)

    @property
    def sec_per_step(self) -> float:
        return self.train_time / self.steps if self.steps else math.nan

    def to_target(self, target: float) -> tuple[float, float] | None:
        return time_to_target(self.curve, target)


def run_one(name: str, lr: float, options: dict, args, workdir: Path) -> Run:
    cfg = TrainConfig()
    cfg.optim.name, cfg.optim.lr, cfg.optim.min_lr = OPTIMIZER.get(name, name), lr, lr
    options = dict(options)
    cfg.optim.weight_decay = options.pop("weight_decay", cfg.optim.weight_decay)
    cfg.optim.options = options
    cfg.max_steps, cfg.max_seconds = 10**7, args.budget
    cfg.eval_every, cfg.eval_batches, cfg.log_every = args.eval_every, args.eval_batches, 50
    cfg.ckpt_every, cfg.keep_last, cfg.device = 0, 1, "cpu"
    cfg.progress, cfg.tensorboard = False, False
    cfg.out_dir = str(workdir / f"{name}_{lr:g}")
    run = Run(name, lr)
    try:
        result = train(cfg)
    except InfogeomError as exc:  # diverged (non-finite loss) or unusable
        run.error = str(exc)
        return run
    run.steps, run.train_time = result.step, result.train_time
    run.curve = [(r["train_time"], r["step"], r["val_loss"]) for r in result.history if "val_loss" in r]
    return run


def pick_best(runs: list[Run], target: float) -> Run:
    def key(r: Run):
        hit = r.to_target(target)
        return (hit is None, hit[1] if hit else 0.0, r.best_val)
    return min(runs, key=key)


def report(best: dict[str, Run], target: float) -> list[dict]:
    base = best["adamw"]
    base_hit = base.to_target(target)
    rows = []
    for name, r in best.items():
        hit = r.to_target(target)
        row = {"optimizer": name, "lr": r.lr, "steps_to_target": hit[0] if hit else None,
               "seconds_to_target": hit[1] if hit else None, "best_val_loss": r.best_val, "steps": r.steps,
               "sec_per_step": r.sec_per_step, "step_cost_vs_adamw": r.sec_per_step / base.sec_per_step,
               "time_to_target_vs_adamw": hit[1] / base_hit[1] if hit and base_hit else None}
        rows.append(row)
    return rows


def fmt(v, spec: str) -> str:
    """``format(v, spec)``, or a dash of the same width for a missing value."""
    missing = v is None or (isinstance(v, float) and not math.isfinite(v))
    return format("—", f">{spec.strip('>').split('.')[0].rstrip('dfg')}") if missing else format(v, spec)


def plot(best: dict[str, Run], runs: list[Run], target: float, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (name, r) in enumerate(best.items()):
        color = f"C{i}"
        for other in runs:
            if other.name == name and other is not r and other.curve:
                ax.plot(*zip(*[(t, v) for t, _, v in other.curve]), color=color, alpha=0.2, lw=0.8)
        if r.curve:
            ax.plot(*zip(*[(t, v) for t, _, v in r.curve]), color=color, lw=1.8,
                    label=f"{name} (lr {r.lr:g})")
    ax.axhline(target, color="k", ls=":", lw=1, label=f"target {target:.3f}")
    ax.set_xlabel("training seconds (evaluation excluded)")
    ax.set_ylabel("validation loss (nats/char)")
    ax.set_ylim(top=min(4.5, ax.get_ylim()[1]))
    ax.legend(fontsize=8)
    ax.set_title("GPT (GPTConfig defaults) on char-level Shakespeare; best lr per optimizer")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="smoke run: tiny budgets, one or two lrs per optimizer")
    p.add_argument("--budget", type=float, help="training seconds per run (default 110, quick 6)")
    p.add_argument("--target", type=float, help="target validation loss (default: tuned AdamW's best)")
    p.add_argument("--optimizers", default=",".join(GRIDS), help="comma-separated subset (adamw is required)")
    p.add_argument("--eval-every", type=int, help="steps between evaluations (default 20, quick 5)")
    p.add_argument("--eval-batches", type=int, default=6)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--out", type=Path, default=RESULTS / "optimizers.json")
    args = p.parse_args(argv)
    args.budget = args.budget or (6.0 if args.quick else 110.0)
    args.eval_every = args.eval_every or (5 if args.quick else 20)
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="Learning rate changed between steps")  # heavyball, on warmup
    names = [n.strip() for n in args.optimizers.split(",") if n.strip()]
    unknown = [n for n in names if n not in GRIDS]
    if unknown or "adamw" not in names:
        p.error(f"--optimizers must include adamw and only use {', '.join(GRIDS)} (got {args.optimizers})")

    started = time.time()
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="infogeom-bench-") as tmp:
        for name in names:
            grid, options = GRIDS[name]
            for lr in QUICK_GRIDS[name] if args.quick else grid:
                run = run_one(name, lr, options, args, Path(tmp))
                runs.append(run)
                status = run.error or (f"{run.steps} steps, best val {run.best_val:.4f}, "
                                       f"{run.sec_per_step:.3f} s/step")
                print(f"{name:6s} lr {lr:<7g} {status}", flush=True)

    adamw_ok = [r for r in runs if r.name == "adamw" and r.curve]
    if not adamw_ok:
        print("every AdamW run failed; nothing to compare")
        return 1
    target = args.target if args.target is not None else min(r.best_val for r in adamw_ok)
    best = {n: pick_best([r for r in runs if r.name == n and r.curve], target)
            for n in names if any(r.name == n and r.curve for r in runs)}
    rows = report(best, target)

    print(f"\ntarget val loss {target:.4f}; budget {args.budget:g} training s per run; "
          f"torch threads {torch.get_num_threads()}")
    header = f"{'optimizer':9s} {'lr':>7s} {'steps→tgt':>9s} {'s→tgt':>7s} {'×AdamW':>7s} {'best val':>8s} " \
             f"{'steps':>6s} {'s/step':>7s} {'cost×':>6s}"
    print(header)
    for row in rows:
        print(f"{row['optimizer']:9s} {row['lr']:>7g} {fmt(row['steps_to_target'], '>9.0f')} "
              f"{fmt(row['seconds_to_target'], '>7.1f')} {fmt(row['time_to_target_vs_adamw'], '>7.2f')} "
              f"{row['best_val_loss']:>8.4f} {row['steps']:>6d} {row['sec_per_step']:>7.3f} "
              f"{row['step_cost_vs_adamw']:>6.2f}")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    png = args.out.with_suffix(".png")
    plot(best, runs, target, png)
    payload = {
        "config": {"quick": args.quick, "budget_s": args.budget, "eval_every": args.eval_every,
                   "eval_batches": args.eval_batches, "threads": torch.get_num_threads(), "target": target,
                   "grids": {n: (QUICK_GRIDS[n] if args.quick else GRIDS[n][0]) for n in names},
                   "options": {n: GRIDS[n][1] for n in names}, "torch": torch.__version__,
                   "wall_s": time.time() - started},
        "table": rows,
        "runs": [{"optimizer": r.name, "lr": r.lr, "steps": r.steps, "train_time": r.train_time,
                  "sec_per_step": r.sec_per_step, "best_val_loss": r.best_val, "error": r.error,
                  "curve": r.curve} for r in runs],
    }
    args.out.write_text(json.dumps(payload, indent=1))
    print(f"\nwrote {args.out} and {png} ({time.time() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
