"""Lock-step comparison of optimizer configurations: drift-free cost per step and time to a target loss.

Every configuration builds its own :class:`infogeom.train.trainer.Trainer` (default model and data, same seed,
so identical batches); the runs then take one training step each in turn, so machine-speed drift hits them
alike. Reported per configuration: seconds per step (and × the first configuration's), seconds per step spent
inside ``optimizer.step()``, the validation loss at the evaluation steps, and steps/seconds to ``--target``
(linear interpolation between evaluations; evaluation time excluded). Curves are (seconds, step, loss).
The first ``--warmup`` steps of every configuration are timed separately (first-step allocations, lazy state,
any compilation) and excluded from s/step; the table reports them.

Cost-only mode for the benchmark protocol (``benchmarks/optimizers.py report --costs``): ``--no-eval`` skips
every evaluation and ``--costs-out FILE`` merges s/step, ``step()`` ms and warm-up seconds per label into FILE
under ``sizes.<size>`` (run it on a quiet machine):

    python benchmarks/optimizers_lockstep.py --size default --steps 60 --no-eval \
        --costs-out benchmarks/results/optimizer_costs.json adamw:8e-3 muon:1.6e-2 ekfac:5e-3

    python benchmarks/optimizers_lockstep.py --steps 450 --eval-every 25 --target 1.8501 \\
        adamw:8e-3 muon:8e-3 ekfac:5e-3 ekfac:1e-2:max_basis_dim=256

A configuration is ``name:lr[:key=value,...]``: ``name`` a benchmark label of ``benchmarks/optimizers.py``
(its options apply, e.g. ``ekfac-1s``) or a registry name, values Python literals (e.g. ``cov_every=4``). Writes
JSON to ``--out`` (default ``benchmarks/results/optimizers_lockstep.json``).
"""

from __future__ import annotations

import argparse
import ast
import json
import tempfile
import time
import warnings
from pathlib import Path

import torch
from optimizers import SIZES, make_config, time_to_target  # benchmarks/optimizers.py (+ heavyball baselines)

from infogeom.data.cache import atomic_write
from infogeom.train.trainer import Trainer

RESULTS = Path(__file__).parent / "results"


def parse(spec: str) -> tuple[str, float, dict]:
    name, lr, *rest = spec.split(":")
    options = {}
    for item in rest[0].split(",") if rest else []:
        key, value = item.split("=", 1)
        options[key] = ast.literal_eval(value)
    return name, float(lr), options


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("configs", nargs="+", help="name:lr[:key=value,...]; the first is the cost reference")
    p.add_argument("--steps", type=int, default=450)
    p.add_argument("--eval-every", type=int, default=25)
    p.add_argument("--target", type=float, default=1.8501)
    p.add_argument("--eval-batches", type=int, default=20, help="fixed validation batches per evaluation")
    p.add_argument("--out", type=Path, default=RESULTS / "optimizers_lockstep.json")
    p.add_argument("--size", choices=list(SIZES), default="default")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--warmup", type=int, default=5, help="first steps timed apart, excluded from s/step")
    p.add_argument("--no-eval", action="store_true", help="cost only: no evaluations, no time to target")
    p.add_argument("--costs-out", type=Path, help="merge per-label costs into this JSON (see module doc)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.steps <= args.warmup:
        p.error(f"--steps ({args.steps}) must exceed --warmup ({args.warmup})")
    warnings.filterwarnings("ignore", message="Learning rate changed between steps")  # heavyball, on warmup
    warnings.filterwarnings("ignore", message="Seems like `optimizer.step()` has been overridden")  # our timer
    runs = []
    with tempfile.TemporaryDirectory(prefix="infogeom-lockstep-") as tmp:
        for i, spec in enumerate(args.configs):
            name, lr, options = parse(spec)
            cfg = make_config(name, lr, args.size, args.seed, f"{tmp}/{i}", options)
            cfg.max_steps, cfg.eval_batches = 10**6, args.eval_batches
            trainer = Trainer(cfg)
            run = {"config": spec, "label": name, "trainer": trainer, "total": 0.0, "opt": 0.0, "warmup": 0.0,
                   "curve": []}
            inner = trainer.optimizer.step

            def timed(*a, _inner=inner, _run=run, **kw):
                start = time.perf_counter()
                out = _inner(*a, **kw)
                _run["opt"] += time.perf_counter() - start
                return out

            trainer.optimizer.step = timed
            runs.append(run)
        for step in range(1, args.steps + 1):
            for run in runs:
                if step == args.warmup + 1:  # the warm-up steps are timed apart
                    run["warmup"], run["total"], run["opt"] = run["total"], 0.0, 0.0
                start = time.perf_counter()
                run["trainer"].train_step()
                run["total"] += time.perf_counter() - start
                if not args.no_eval and step % args.eval_every == 0:
                    loss = run["trainer"].evaluate()["val_loss"]
                    run["curve"].append((run["warmup"] + run["total"], step, loss))
        for run in runs:
            run.pop("trainer").close()
    timed = args.steps - args.warmup
    base = runs[0]["total"]
    print(f"target {args.target}; {args.steps} lock-step steps ({args.warmup} warm-up excluded from s/step); "
          f"size {args.size}; torch threads {torch.get_num_threads()}")
    print(f"{'configuration':44s} {'s/step':>7s} {'cost×':>6s} {'opt ms':>7s} {'warm-up s':>9s} {'steps→tgt':>9s} "
          f"{'s→tgt':>7s} {'best val':>8s}")
    rows = []
    for run in runs:
        hit = time_to_target(run["curve"], args.target) if run["curve"] else None
        row = {"config": run["config"], "label": run["label"], "sec_per_step": run["total"] / timed,
               "cost": run["total"] / base, "opt_ms_per_step": 1e3 * run["opt"] / timed, "warmup_s": run["warmup"],
               "steps_to_target": hit and hit[0], "seconds_to_target": hit and hit[1],
               "best_val": min((v for _, _, v in run["curve"]), default=None), "curve": run["curve"]}
        rows.append(row)
        hit_txt = f"{hit[0]:9.0f} {hit[1]:7.1f}" if hit else f"{'—':>9s} {'—':>7s}"
        best = f"{row['best_val']:8.4f}" if row["best_val"] is not None else f"{'—':>8s}"
        print(f"{row['config']:44s} {row['sec_per_step']:7.4f} {row['cost']:6.3f} {row['opt_ms_per_step']:7.1f} "
              f"{row['warmup_s']:9.2f} {hit_txt} {best}")
    payload = json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=1).encode()
    atomic_write(args.out, lambda f: f.write(payload))
    print(f"wrote {args.out}")
    if args.costs_out:
        write_costs(args.costs_out, args.size, rows, args)
        print(f"merged costs of {len(rows)} configurations (size {args.size}) into {args.costs_out}")
    return 0


def write_costs(path: Path, size: str, rows: list[dict], args) -> None:
    """Merge ``{label: {sec_per_step, opt_ms_per_step, warmup_s, config}}`` into ``path`` under sizes.<size>."""
    costs = json.loads(path.read_text()) if path.exists() else {"sizes": {}}
    entry = costs["sizes"].setdefault(size, {})
    for row in rows:
        entry[row["label"]] = {k: row[k] for k in ("config", "sec_per_step", "opt_ms_per_step", "warmup_s")}
        entry[row["label"]].update(steps=args.steps, warmup=args.warmup, threads=torch.get_num_threads())
    data = json.dumps(costs, indent=1).encode()
    atomic_write(path, lambda f: f.write(data))

if __name__ == "__main__":
    raise SystemExit(main())
