"""Lock-step comparison of optimizer configurations: drift-free cost per step and time to a target loss.

Every configuration builds its own :class:`infogeom.train.trainer.Trainer` (default model and data, same seed,
so identical batches); the runs then take one training step each in turn, so machine-speed drift hits them
alike. Reported per configuration: seconds per step (and × the first configuration's), seconds per step spent
inside ``optimizer.step()``, the validation loss at the evaluation steps, and steps/seconds to ``--target``
(linear interpolation between evaluations; evaluation time excluded). Curves are (seconds, step, loss).

    python benchmarks/optimizers_lockstep.py --steps 450 --eval-every 25 --target 1.8501 \\
        adamw:8e-3 muon:8e-3 ekfac:5e-3 ekfac:1e-2:max_basis_dim=256

A configuration is ``name:lr[:key=value,...]`` (values are Python literals, e.g. ``cov_every=4``). Writes JSON
to ``--out`` (default ``benchmarks/results/optimizers_lockstep.json``).
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
from optimizers import time_to_target  # benchmarks/optimizers.py (also registers the SOAP baseline)

from infogeom.train import TrainConfig
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
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore", message="Learning rate changed between steps")  # heavyball, on warmup
    warnings.filterwarnings("ignore", message="Seems like `optimizer.step()` has been overridden")  # our timer
    runs = []
    with tempfile.TemporaryDirectory(prefix="infogeom-lockstep-") as tmp:
        for i, spec in enumerate(args.configs):
            name, lr, options = parse(spec)
            cfg = TrainConfig()
            cfg.optim.name, cfg.optim.lr, cfg.optim.min_lr, cfg.optim.options = name, lr, lr, options
            cfg.max_steps, cfg.progress, cfg.tensorboard, cfg.out_dir = 10**6, False, False, f"{tmp}/{i}"
            cfg.eval_batches = args.eval_batches
            trainer = Trainer(cfg)
            run = {"config": spec, "trainer": trainer, "total": 0.0, "opt": 0.0, "curve": []}
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
                start = time.perf_counter()
                run["trainer"].train_step()
                run["total"] += time.perf_counter() - start
                if step % args.eval_every == 0:
                    loss = run["trainer"].evaluate()["val_loss"]
                    run["curve"].append((run["total"], step, loss))
        for run in runs:
            run.pop("trainer").close()
    base = runs[0]["total"]
    print(f"target {args.target}; {args.steps} lock-step steps; torch threads {torch.get_num_threads()}")
    print(f"{'configuration':48s} {'s/step':>7s} {'cost×':>6s} {'opt ms':>7s} {'steps→tgt':>9s} {'s→tgt':>7s} "
          f"{'best val':>8s}")
    rows = []
    for run in runs:
        hit = time_to_target(run["curve"], args.target)
        row = {"config": run["config"], "sec_per_step": run["total"] / args.steps, "cost": run["total"] / base,
               "opt_ms_per_step": 1e3 * run["opt"] / args.steps, "steps_to_target": hit and hit[0],
               "seconds_to_target": hit and hit[1], "best_val": min(v for _, _, v in run["curve"]),
               "curve": run["curve"]}
        rows.append(row)
        hit_txt = f"{hit[0]:9.0f} {hit[1]:7.1f}" if hit else f"{'—':>9s} {'—':>7s}"
        print(f"{row['config']:48s} {row['sec_per_step']:7.4f} {row['cost']:6.3f} {row['opt_ms_per_step']:7.1f} "
              f"{hit_txt} {row['best_val']:8.4f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
