"""Optimizer benchmark protocol: learning progress in steps (resumable, any machine) × quiet cost per step.

Wall-clock time to a target loss factors as (steps to target) × (seconds per step). The first factor is
deterministic given the seed (constant learning rate after a 50-step warmup, same init and data order), so it
is measured here run by run, in pieces, on a loaded machine; the second is measured once, quietly and drift-free,
by ``benchmarks/optimizers_lockstep.py --no-eval --costs-out FILE`` (every configuration stepping in turn). The
report combines them:

    time to target   T = s* · c,  s* = steps to target (linear interpolation between evaluations), c = s/step,
    loss at budget B = L(B / c)   (validation loss interpolated at that step).

Every run trains a GPT (``--size default``: ``GPTConfig`` defaults, ≈ 0.8M parameters; ``3m``: 6 layers × 192,
≈ 2.7M) on char-level Shakespeare with :class:`infogeom.train.trainer.Trainer` (batch 32 × 128, weight decay
0.1, clip 1.0) for ``--steps`` steps, evaluating every ``--eval-every`` steps on ``--eval-batches`` fixed
validation batches. A finished (optimizer, size, lr, seed) run is saved atomically into ``--out`` at once;
rerunning skips runs already there with at least ``--steps`` steps (or diverged).

    python benchmarks/optimizers.py run --only adamw,muon --size default --seeds 0,1,2 --steps 350
    python benchmarks/optimizers.py run --only ekfac --lrs 5e-3,1e-2 --seeds 0
    python benchmarks/optimizers.py report --size default --costs benchmarks/results/optimizer_costs.json

``report``: each optimizer's learning rate is the grid value with the fewest seeds missing the target, then the
fewest mean steps to it, then the lowest mean final loss. The target defaults to the loss every seed of the
tuned AdamW reaches (its best lr's worst seed's best loss; ``--target`` overrides). Time-to-target ratios vs
Muon are geometric means over paired seeds with a Student-t interval on the log ratios
(:func:`infogeom.study.stats.paired_ratio`); losses at the budget (default: the longest every best run covers)
are means with a t interval. Without ``--costs`` seconds are replaced by steps (c = 1). Writes the table to
``<out>_<size>_report.json`` and the plot of loss vs seconds (mean and min–max over seeds) to ``…_report.png``.

Baselines: ``torch.optim.AdamW``; Muon + AdamW (modded-nanogpt recipe); SOAP and PSGD-Kron from ``heavyball``
(``torch.compile`` disabled: no compilation warm-up). NVIDIA's ``emerging-optimizers`` (KL-Shampoo / KL-SOAP)
needs Python ≥ 3.12, see docs/optimizers.md.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import math
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from infogeom.data.cache import atomic_write
from infogeom.errors import InfogeomError
from infogeom.optim import register_optimizer
from infogeom.optim.params import adamw_groups
from infogeom.study.experiments.common import time_to_target
from infogeom.study.stats import mean_ci, paired_ratio
from infogeom.train import TrainConfig
from infogeom.train.trainer import Trainer

RESULTS = Path(__file__).parent / "results"

#: model sizes: overrides of ``GPTConfig`` (head dimension 32 in both)
SIZES: dict[str, dict] = {"default": {}, "3m": {"n_layer": 6, "n_embd": 192, "n_head": 6}}

#: label -> (learning-rate grid, options). ``weight_decay`` in the options overrides the shared 0.1 (NGCG's
#: lr ≈ 1 would shrink every weight by 10% per step with 0.1); ``optimizer`` names the registry entry when the
#: label is not one. ``ekfac-1s``: the 384/512-wide factor sides of the default GPT stay diagonal.
#: ``muon-fp32``: torch's Muon step with Newton–Schulz in float32 instead of bfloat16 (same progress per step;
#: bfloat16 matmuls are ≈ 15× slower than float32 on this project's CPUs, so this is the fair Muon baseline
#: for wall-clock here). ``fisher-muon``: exponent ¼, one-sided like ``ekfac-1s``; its ablations (one lr
#: each, ``--lrs`` to move it): ``-p0`` exponent 0 (Muon in the same code), ``-p05`` exponent ½ (``-p0125``,
#: ``-p0375``: ⅛, ⅜), ``-full`` every side whitened in its eigenbasis, ``-head`` the tied embedding/head
#: preconditioned too (its head use's factors), ``-cov4`` factors every 4 steps and bases every 20 (half the
#: capture cost). ``-plain``: Newton–Schulz in its plain form, one layer at a time (the runs before the batched
#: Gram-side form; the same step up to float32 rounding).
GRIDS: dict[str, tuple[list[float], dict]] = {
    "adamw": ([2e-3, 4e-3, 8e-3, 1.6e-2], {}),
    "muon": ([4e-3, 8e-3, 1.6e-2, 3.2e-2], {}),
    "muon-fp32": ([4e-3, 8e-3, 1.6e-2, 3.2e-2], {"optimizer": "muon", "ns_dtype": "float32"}),
    "soap": ([2e-3, 4e-3, 8e-3, 1.6e-2], {}),
    "psgd-kron": ([5e-4, 1e-3, 2e-3, 4e-3], {}),
    "ekfac": ([2.5e-3, 5e-3, 1e-2, 2e-2], {}),
    "ekfac-1s": ([5e-3, 1e-2, 2e-2, 4e-2], {"optimizer": "ekfac", "max_basis_dim": 256}),
    "kfac": ([1e-3, 3e-3, 1e-2, 3e-2], {}),
    "fisher-muon": ([4e-3, 8e-3, 1.6e-2, 3.2e-2], {"max_basis_dim": 256}),
    "fisher-muon-plain": ([4e-3, 8e-3, 1.6e-2, 3.2e-2], {"optimizer": "fisher-muon", "max_basis_dim": 256,
                                                        "ns_gram": False}),
    "fisher-muon-p0": ([1.6e-2], {"optimizer": "fisher-muon", "max_basis_dim": 256, "exponent": 0.0}),
    "fisher-muon-p05": ([1.6e-2], {"optimizer": "fisher-muon", "max_basis_dim": 256, "exponent": 0.5}),
    "fisher-muon-p0125": ([1.6e-2], {"optimizer": "fisher-muon", "max_basis_dim": 256, "exponent": 0.125}),
    "fisher-muon-p0375": ([1.6e-2], {"optimizer": "fisher-muon", "max_basis_dim": 256, "exponent": 0.375}),
    "fisher-muon-full": ([1.6e-2], {"optimizer": "fisher-muon"}),
    "fisher-muon-head": ([1.6e-2], {"optimizer": "fisher-muon", "max_basis_dim": 256, "head": True}),
    "fisher-muon-cov4": ([1.6e-2], {"optimizer": "fisher-muon", "max_basis_dim": 256, "cov_every": 4,
                                    "inv_every": 20}),
    "ngcg": ([0.5, 1.0], {"weight_decay": 1e-3}),
}


def _heavyball():
    try:
        import heavyball
    except ImportError as exc:
        raise InfogeomError("the heavyball baselines need heavyball: pip install heavyball") from exc
    heavyball.utils.compile_mode = None  # eager: no compilation warm-up is timed
    return heavyball


@register_optimizer("soap")
def _soap(model: nn.Module, lr: float, weight_decay: float, **options):
    """SOAP (Vyas et al. 2024) from heavyball, eager, decay on matrices only."""
    return _heavyball().SOAP(adamw_groups(model, (), weight_decay), lr=lr, weight_decay=weight_decay, **options)


@register_optimizer("psgd-kron")
def _psgd_kron(model: nn.Module, lr: float, weight_decay: float, **options):
    """PSGD with Kronecker-factored preconditioner (Li 2018) from heavyball (``PSGDKron``), eager."""
    return _heavyball().PSGDKron(adamw_groups(model, (), weight_decay), lr=lr, weight_decay=weight_decay,
                                 **options)


def resolve(label: str) -> tuple[str, dict]:
    """(registry name, options incl. ``weight_decay`` if overridden) of a benchmark label or registry name."""
    options = dict(GRIDS.get(label, ([], {}))[1])
    return options.pop("optimizer", label), options


def make_config(label: str, lr: float, size: str, seed: int, out_dir: str, extra: dict | None = None
                ) -> TrainConfig:
    """The benchmark's training config of one run (constant lr after warmup, no checkpoints, quiet)."""
    cfg = TrainConfig()
    for key, value in SIZES[size].items():
        setattr(cfg.model, key, value)
    name, options = resolve(label)
    options.update(extra or {})
    cfg.optim.name, cfg.optim.lr, cfg.optim.min_lr = name, lr, lr
    cfg.optim.weight_decay = options.pop("weight_decay", cfg.optim.weight_decay)
    cfg.optim.options = options
    cfg.seed, cfg.device, cfg.out_dir = seed, "cpu", out_dir
    cfg.ckpt_every, cfg.keep_last, cfg.log_every = 0, 1, 50
    cfg.progress, cfg.tensorboard = False, False
    return cfg


def run_key(label: str, size: str, lr: float, seed: int) -> str:
    return f"{label}|{size}|{lr:g}|{seed}"


def load_runs(path: Path) -> dict[str, dict]:
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())["runs"]
    except (OSError, ValueError, KeyError) as exc:
        raise InfogeomError(f"cannot read benchmark runs from {path}: {exc}") from None


def save_run(path: Path, key: str, record: dict) -> None:
    """Add one finished run to the runs JSON under an exclusive lock (several ``run`` processes may fill the
    same file: each rereads it before writing)."""
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        runs = load_runs(path)
        runs[key] = record
        data = json.dumps({"runs": runs, "torch": torch.__version__}, indent=1).encode()
        atomic_write(path, lambda f: f.write(data))


def run_one(label: str, lr: float, size: str, seed: int, args) -> dict:
    """Train one configuration for ``args.steps`` steps; curve = (loaded train seconds, step, val loss)."""
    record = {"optimizer": label, "size": size, "lr": lr, "seed": seed, "steps": 0, "eval_batches":
              args.eval_batches, "train_time_loaded": 0.0, "curve": [], "error": None}
    with tempfile.TemporaryDirectory(prefix="infogeom-bench-") as tmp:
        cfg = make_config(label, lr, size, seed, tmp)
        cfg.max_steps, cfg.eval_every, cfg.eval_batches = args.steps, args.eval_every, args.eval_batches
        cfg.optim.warmup_steps = min(cfg.optim.warmup_steps, args.steps)
        trainer = Trainer(cfg)  # a bad configuration raises here
        try:
            result = trainer.fit()
        except InfogeomError as exc:  # diverged: recorded, not retried
            record["error"] = str(exc)
            return record
        finally:
            trainer.close()
    record["steps"], record["train_time_loaded"] = result.step, result.train_time
    record["curve"] = [(r["train_time"], r["step"], r["val_loss"]) for r in result.history if "val_loss" in r]
    return record


def cmd_run(args) -> int:
    labels = args.only or list(GRIDS)
    todo = [(label, lr, seed) for label in labels for lr in (args.lrs or GRIDS[label][0]) for seed in args.seeds]
    for label, lr, seed in todo:
        key = run_key(label, args.size, lr, seed)
        done = load_runs(args.out).get(key)  # reread: another process may have finished it
        if done and (done["error"] or done["steps"] >= args.steps):
            print(f"{key}: done", flush=True)
            continue
        start = time.time()
        r = run_one(label, lr, args.size, seed, args)
        if not r["error"] and r["steps"] < args.steps:  # the trainer stopped on SIGINT/SIGTERM: not a result
            print(f"{key}: interrupted after {r['steps']} steps, not saved", flush=True)
            return 130
        save_run(args.out, key, r)
        hit = time_to_target(r["curve"], args.show_target) if r["curve"] else None
        status = r["error"] or (f"{r['steps']} steps, best val {min(v for *_, v in r['curve']):.4f}, "
                                f"steps→{args.show_target}: {hit[0]:.0f}" if hit else
                                f"{r['steps']} steps, best val {min(v for *_, v in r['curve']):.4f}")
        print(f"{key}: {status} ({time.time() - start:.0f} s loaded)", flush=True)
    return 0


# ----------------------------------------------------------------------------------------------- report


def steps_to(curve: list, target: float) -> float:
    hit = time_to_target(curve, target)
    return hit[0] if hit else math.inf


def loss_at(curve: list, step: float) -> float:
    """Validation loss linearly interpolated at ``step`` (nan beyond the last evaluation)."""
    steps = [s for _, s, _ in curve]
    if not curve or step > steps[-1] or step < steps[0]:
        return math.nan
    return float(np.interp(step, steps, [v for *_, v in curve]))


def best_loss(run: dict) -> float:
    return min((v for *_, v in run["curve"]), default=math.inf)


def load_costs(path: Path | None, size: str) -> dict[str, dict]:
    if path is None:
        return {}
    try:
        return json.loads(path.read_text())["sizes"][size]
    except (OSError, ValueError, KeyError) as exc:
        raise InfogeomError(f"no costs for size {size!r} in {path}: {exc}") from None


def pick_lr(by_lr: dict[float, list[dict]], target: float) -> float:
    def key(lr):
        s = [steps_to(r["curve"], target) for r in by_lr[lr]]
        reached = [x for x in s if math.isfinite(x)]
        return (len(s) - len(reached), np.mean(reached) if reached else 0.0,
                np.mean([best_loss(r) for r in by_lr[lr]]))
    return min(by_lr, key=key)


def cmd_report(args) -> int:
    runs = [r for r in load_runs(args.out).values() if r["size"] == args.size and r["curve"] and not r["error"]
            and (not args.only or r["optimizer"] in args.only)]
    grouped: dict[str, dict[float, list[dict]]] = {}
    for r in runs:
        grouped.setdefault(r["optimizer"], {}).setdefault(r["lr"], []).append(r)
    if "adamw" not in grouped and args.target is None:
        raise InfogeomError(f"no AdamW runs for size {args.size!r} in {args.out}: give --target")
    if args.target is not None:
        target = args.target
    else:
        adamw = grouped["adamw"]
        lr = min(adamw, key=lambda lr: np.mean([best_loss(r) for r in adamw[lr]]))
        target = max(best_loss(r) for r in adamw[lr])
    costs = load_costs(args.costs, args.size)
    missing = [n for n in grouped if costs and n not in costs]
    if missing:
        raise InfogeomError(f"{args.costs} has no cost for {', '.join(missing)} (size {args.size})")
    unit = "s" if costs else "steps"
    best = {n: by_lr[pick_lr(by_lr, target)] for n, by_lr in grouped.items()}
    cost = {n: costs[n]["sec_per_step"] if costs else 1.0 for n in best}
    budget = args.budget or min(max(r["steps"] for r in rs) * cost[n] for n, rs in best.items())
    if args.reference and args.reference not in best:
        raise InfogeomError(f"no runs of reference {args.reference!r} for size {args.size!r} in {args.out}")
    ref = args.reference or ("muon" if "muon" in best else next(iter(best)))
    by_seed = {n: {r["seed"]: r for r in rs} for n, rs in best.items()}
    rows = []
    for n, rs in best.items():
        seeds = sorted(set(by_seed[n]) & set(by_seed[ref]))
        t = [steps_to(by_seed[n][s]["curve"], target) * cost[n] for s in seeds]
        t_ref = [steps_to(by_seed[ref][s]["curve"], target) * cost[ref] for s in seeds]
        s_hit = [steps_to(r["curve"], target) for r in rs]
        ratio = paired_ratio(t, t_ref).interval
        loss = mean_ci([loss_at(r["curve"], budget / cost[n]) for r in rs])
        rows.append({"optimizer": n, "lr": rs[0]["lr"], "seeds": sorted(by_seed[n]),
                     "steps_to_target": s_hit, "steps_to_target_ci": mean_ci(s_hit).to_dict(),
                     "reached": sum(map(math.isfinite, s_hit)), "cost_per_step": cost[n],
                     "opt_ms_per_step": costs[n].get("opt_ms_per_step") if costs else None,
                     "time_to_target_vs_ref": ratio.to_dict(), "loss_at_budget": loss.to_dict()})
    print(f"size {args.size}; target val loss {target:.4f}; budget {budget:.1f} {unit}; ratios vs {ref} "
          f"(paired seeds, 95% t interval); cost {'from ' + str(args.costs) if costs else 'absent: unit = steps'}")
    cost_head = "s/step" if costs else "cost"
    print(f"{'optimizer':10s} {'lr':>7s} {'seeds':>5s} {'steps→target (95% CI)':>24s} {cost_head:>8s} "
          f"{'opt ms':>6s} {'T/T_' + ref + ' (95% CI)':>24s} {'loss @ budget (95% CI)':>26s}")
    for row in rows:
        s, r, loss = row["steps_to_target_ci"], row["time_to_target_vs_ref"], row["loss_at_budget"]
        opt_ms = f"{row['opt_ms_per_step']:6.1f}" if row["opt_ms_per_step"] is not None else f"{'—':>6s}"
        hit = f"{s['value']:.0f} [{s['lo']:.0f}, {s['hi']:.0f}] {row['reached']}/{len(row['seeds'])}"
        print(f"{row['optimizer']:10s} {row['lr']:>7g} {len(row['seeds']):>5d} {hit:>24s} "
              f"{row['cost_per_step']:>8.4f} {opt_ms} {_ci(r, 3):>24s} {_ci(loss, 4):>26s}")
    stem = args.out.with_name(f"{args.out.stem}_{args.size}_report")
    payload = {"size": args.size, "target": target, "budget": budget, "unit": unit, "reference": ref,
               "costs": str(args.costs) if costs else None, "rows": rows}
    data = json.dumps(payload, indent=1).encode()
    atomic_write(stem.with_suffix(".json"), lambda f: f.write(data))
    plot(best, cost, target, unit, args.size, stem.with_suffix(".png"))
    print(f"wrote {stem}.json and {stem}.png")
    return 0


def _ci(ci: dict, digits: int) -> str:
    if not math.isfinite(ci["value"]):
        return "—"
    return f"{ci['value']:.{digits}f} [{ci['lo']:.{digits}f}, {ci['hi']:.{digits}f}]"


def plot(best: dict[str, list[dict]], cost: dict[str, float], target: float, unit: str, size: str,
         path: Path) -> None:
    """Mean validation loss vs seconds (steps × quiet s/step) per optimizer, min–max band over seeds."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from infogeom.plotting import save_figure

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (n, rs) in enumerate(best.items()):
        steps = sorted(set.intersection(*[{s for _, s, _ in r["curve"]} for r in rs]))
        losses = np.array([[dict((s, v) for _, s, v in r["curve"])[s] for s in steps] for r in rs])
        x = np.array(steps) * cost[n]
        ax.plot(x, losses.mean(0), color=f"C{i}", lw=1.6, label=f"{n} (lr {rs[0]['lr']:g}, {len(rs)} seeds)")
        ax.fill_between(x, losses.min(0), losses.max(0), color=f"C{i}", alpha=0.2, lw=0)
    ax.axhline(target, color="k", ls=":", lw=1, label=f"target {target:.3f}")
    ax.set_xlabel("training seconds (steps × quiet s/step)" if unit == "s" else "training steps")
    ax.set_ylabel("validation loss (nats/char)")
    ax.set_ylim(top=min(3.0, ax.get_ylim()[1]))
    ax.legend(fontsize=8)
    ax.set_title(f"GPT ({size}) on char-level Shakespeare; best lr per optimizer; band = min–max over seeds",
                 fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("run", "report"):
        q = sub.add_parser(name)
        q.add_argument("--size", choices=list(SIZES), default="default")
        q.add_argument("--out", type=Path, default=RESULTS / "optimizer_runs.json", help="runs JSON (resumable)")
    r, rep = sub.choices["run"], sub.choices["report"]
    for q in (r, rep):
        q.add_argument("--only", type=lambda s: [x for x in s.split(",") if x], help="comma-separated labels")
    r.add_argument("--lrs", type=floats, help="override the labels' lr grids")
    r.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0])
    r.add_argument("--steps", type=int, default=350)
    r.add_argument("--eval-every", type=int, default=25)
    r.add_argument("--eval-batches", type=int, default=8)
    r.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    r.add_argument("--show-target", type=float, default=1.85, help="loss whose steps-to are printed per run")
    rep.add_argument("--costs", type=Path, help="costs JSON from optimizers_lockstep.py --costs-out")
    rep.add_argument("--target", type=float, help="target validation loss (default: tuned AdamW's, see doc)")
    rep.add_argument("--reference", help="label the time ratios are taken against (default: muon)")
    rep.add_argument("--budget", type=float, help="wall-clock (or step) budget for the loss at budget")
    args = p.parse_args(argv)
    unknown = [n for n in args.only or [] if n not in GRIDS]
    warnings.filterwarnings("ignore", message="Learning rate changed between steps")  # heavyball, on warmup
    try:
        if unknown:
            raise InfogeomError(f"unknown --only label(s) {', '.join(unknown)}; choose from {', '.join(GRIDS)}")
        if args.cmd == "run":
            if args.threads:
                torch.set_num_threads(args.threads)
            return cmd_run(args)
        return cmd_report(args)
    except InfogeomError as exc:
        print(f"infogeom: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
