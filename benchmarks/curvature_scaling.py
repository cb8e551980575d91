"""Cost of curvature estimates against model size: infogeom, PyHessian and hessian-eigenthings, log-log.

For each GPT width/depth in ``SIZES`` (≈ 60k → 3M parameters, trained ``--train-steps`` AdamW steps so that
the Hessian is not the one at initialization, whose trace is ≈ 0 and cannot be estimated to a relative
error; one fixed batch of 16×64 tokens of the ``pydoc`` corpus, math attention) and each library:

- ``lambda_max``: largest-|λ| Hessian eigenvalue at relative tolerance ``--tol`` (PyHessian: power
  iteration's relative change of λ; ours: Lanczos on the gradient-difference sketch with the value an exact
  Rayleigh quotient and exact residual (``eigsh(..., sketch=True)``, finished with exact products where that
  residual fails), residual ‖Hv − θv‖ ≤ ``--our-tol``·|θ|, default 0.03,
  the residual tolerance at which ``benchmarks/curvature.py`` measured our eigenvalue error at or below
  PyHessian's at tol 1e-3 (a Ritz value's error is ≈ residual²/gap); hessian-eigenthings, also Lanczos:
  the fewest steps whose residual meets the same ``--our-tol``, see ``benchmarks/curvature.py``);
- ``trace`` to a relative standard error of ``--rtol``, each library with its best estimator: ours adaptive
  Hutch++ whose quadratic forms are product-free (second differences of float64 loss values, one-sided for
  the residual probes; a first sketch of ``--hutchpp-sketch`` columns, grown as it pays, each column one
  gradient difference instead of a product; timed, and projected
  by SE² ∝ 1/m when its pilot-sized sample lands above the target); PyHessian's
  Hutchinson with the probes that a 32-probe Hutchinson pilot's sd predicts for the same rtol (pilot untimed; capped at
  ``--max-probes`` and then its time scaled up to the predicted count, marked "projected");
  hessian-eigenthings' Hutch++ with our count of products and forms, its time then scaled by its SE over
  the target SE (SE ∝ 1/m, Hutch++'s best rate, so the projection favours the peer; marked "projected");
- ``density``: SLQ with ``--slq-probes`` × ``--slq-steps`` for all, with exact products (the gradient-difference
  sketch is off by up to 70% along the sharpest direction of the 3.2M model, so its density is not used here).

Every (size, library, quantity) runs in a fresh process so that its peak resident memory (``ru_maxrss``
minus the resident size after building the model and batch) is its own. Prints a table, fits the slope of
log time and log memory against log parameters, saves ``benchmarks/results/curvature_scaling.{json,png,svg}``.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).parent / "results"
SIZES = {"63k": (2, 48), "210k": (4, 64), "0.8M": (4, 128), "3.2M": (4, 256)}  # (layers, width)
LIBRARIES = ("infogeom", "pyhessian", "eigenthings")
QUANTITIES = ("lambda_max", "trace", "density")


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def build(size: str, seed: int):
    """The GPT of ``size`` (math attention), the corpus and the fixed probe batch."""
    from infogeom.data import prepare_data
    from infogeom.models import GPT, GPTConfig

    torch.manual_seed(seed)
    data = prepare_data("pydoc", "char")
    layers, width = SIZES[size]
    model = GPT(GPTConfig(vocab_size=data.vocab_size, block_size=64, n_layer=layers, n_head=4, n_embd=width,
                          attention="math"))
    return model, data, data.get_batch("train", 16, 64, torch.Generator().manual_seed(seed))


def train(size: str, steps: int, seed: int, path: Path) -> None:
    """``steps`` AdamW steps (lr 3e-3, batches of 16×64) of the ``size`` model; weights saved to ``path``."""
    from infogeom.models import lm_loss

    model, data, _ = build(size, seed)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(seed + 1)
    for _ in range(steps):
        x, y = data.get_batch("train", 16, 64, gen)
        opt.zero_grad()
        lm_loss(model(x), y).backward()
        opt.step()
    torch.save(model.state_dict(), path)


def measure(size: str, library: str, quantity: str, args: argparse.Namespace) -> dict:
    """Time and extra peak memory of one quantity by one library (run in its own process)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import hessian_eigenthings as he
    from curvature import eigenthings_lambda_max  # benchmarks/curvature.py
    from peers.eigenthings_compat import eigenthings_hessian
    from peers.pyhessian_compat import pyhessian_session

    from infogeom.curvature import eigsh, hutchpp, spectral_density
    from infogeom.curvature.trace import hutchinson_samples
    from infogeom.geometry import HessianOperator

    model, _, batch = build(size, args.seed)
    model.load_state_dict(torch.load(args.weights, weights_only=True))
    model.eval()
    gen = torch.Generator().manual_seed(args.seed)
    base = _rss_mb()
    stderr = None
    start = time.perf_counter()
    if library == "infogeom":
        op = HessianOperator(model, batch)
        if quantity == "lambda_max":
            res = eigsh(op, k=1, which="LM", tol=args.our_tol, residuals=False, generator=gen, sketch=True)
            value, products = float(res.values[0]), res.matvecs
        elif quantity == "trace":
            est = hutchpp(op, 3 * args.hutchpp_sketch, gen, rtol=args.rtol, max_probes=4096)
            value, products, stderr = est.value, est.num_probes, est.stderr
        else:
            sd = spectral_density(op, args.slq_probes, args.slq_steps, generator=gen)
            value, products = sd.moment(1), args.slq_probes * args.slq_steps
    elif library == "pyhessian":
        with pyhessian_session(model, batch) as ph:
            if quantity == "lambda_max":
                value, products = float(ph.eigenvalues(maxIter=200, tol=args.tol, top_n=1)[0][0]), None
            elif quantity == "trace":
                samples = ph.trace(maxIter=min(args.probes, args.max_probes), tol=-math.inf)
                value, products = float(np.mean(samples)), args.probes
            else:
                nodes, weights = ph.density(iter=args.slq_steps, n_v=args.slq_probes)
                value = float(np.mean([np.dot(w, n) for n, w in zip(nodes, weights)]))
                products = args.slq_probes * args.slq_steps
    else:
        if quantity == "lambda_max":
            value, products = eigenthings_lambda_max(model, batch, args.our_tol, args.seed)
        elif quantity == "trace":
            products = args.hutchpp_probes
            res = he.hutch_plus_plus(eigenthings_hessian(model, batch), num_matvecs=products, seed=args.seed)
            value, stderr = res.estimate, res.stderr
        else:
            sd = he.spectral_density(eigenthings_hessian(model, batch), num_runs=args.slq_probes,
                                     lanczos_steps=args.slq_steps, num_grid_points=64, seed=args.seed)
            value = float((sd.raw_weights * sd.raw_eigenvalues).sum(1).mean())
            products = args.slq_probes * args.slq_steps
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    extra = {} if quantity != "trace" else {"stderr": stderr}
    if library == "pyhessian" and quantity == "trace" and args.probes > args.max_probes:
        extra["projected_from"] = {"probes": args.max_probes, "seconds": seconds}
        seconds *= args.probes / args.max_probes
    if library == "infogeom" and quantity == "trace" and stderr > args.rtol * abs(value):  # sized from a pilot
        extra["projected_from"] = {"seconds": seconds, "stderr": stderr}  # above the target: SE² ∝ 1/m
        seconds *= (stderr / (args.rtol * abs(value))) ** 2
    if library == "eigenthings" and quantity == "trace":  # to the target SE (its SE ∝ 1/m at best)
        extra["projected_from"] = {"seconds": seconds, "stderr": stderr}
        seconds *= stderr / (args.rtol * abs(args.target))
    if library == "infogeom" and quantity == "trace":  # the Hutchinson probes for the same rtol (untimed pilot)
        pilot = hutchinson_samples(op, 32, gen)
        extra["hutchinson_probes"] = math.ceil((float(pilot.std()) / (args.rtol * abs(value))) ** 2)
    return {**extra, "size": size, "library": library, "quantity": quantity, "parameters": sum(p.numel() for p in
            model.parameters()), "seconds": seconds, "peak_extra_mb": max(peak - base, 0.0), "value": value,
            "products": products}


def slope(xs, ys) -> float:
    """Least-squares slope of log y against log x."""
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0]) if len(xs) > 1 else float("nan")


def plot(records: list[dict], path: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from infogeom.plotting import curve_styles, new_figure, save_figure

    fig = new_figure(12, 4.5)
    axes = fig.subplots(1, 2)
    styles = curve_styles(len(LIBRARIES) * len(QUANTITIES))
    for i, (lib, q) in enumerate((lib, q) for q in QUANTITIES for lib in LIBRARIES):
        rs = sorted((r for r in records if r["library"] == lib and r["quantity"] == q), key=lambda r: r["parameters"])
        if not rs:
            continue
        xs = [r["parameters"] for r in rs]
        for ax, key in ((axes[0], "seconds"), (axes[1], "peak_extra_mb")):
            ys = [max(r[key], 1e-3) for r in rs]
            ax.loglog(xs, ys, marker="o", label=f"{lib}, {q} (slope {slope(xs, ys):.2f})", **styles[i])
    axes[0].set_ylabel("wall time (s)")
    axes[1].set_ylabel("peak resident memory above the model and batch (MB)")
    for ax in axes:
        ax.set_xlabel("parameters")
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=8, ncol=1)
    fig.suptitle("Hessian λ_max, trace to equal relative SE, SLQ density vs model size; batch 16×64, "
                 f"{torch.get_num_threads()} threads")
    save_figure(fig, path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default=",".join(SIZES), help="comma-separated subset of " + ", ".join(SIZES))
    p.add_argument("--quantities", default=",".join(QUANTITIES))
    p.add_argument("--tol", type=float, default=1e-3, help="the peers' λ_max tolerance")
    p.add_argument("--our-tol", type=float, default=0.03, help="our Lanczos residual tolerance (equal accuracy)")
    p.add_argument("--rtol", type=float, default=0.01, help="target relative standard error of the trace")
    p.add_argument("--max-probes", type=int, default=256,
                   help="products of our XTrace and probes PyHessian runs at most (then projected)")
    p.add_argument("--slq-probes", type=int, default=2)
    p.add_argument("--slq-steps", type=int, default=32)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-steps", type=int, default=100, help="AdamW steps before measuring (100)")
    p.add_argument("--weights", help=argparse.SUPPRESS)  # the trained model, for the --one runs
    p.add_argument("--probes", type=int, default=0, help=argparse.SUPPRESS)  # PyHessian's trace probes
    p.add_argument("--hutchpp-probes", type=int, default=0, help=argparse.SUPPRESS)  # eigenthings' Hutch++
    p.add_argument("--target", type=float, default=0.0, help=argparse.SUPPRESS)  # our trace (the peers' target SE)
    p.add_argument("--hutchpp-sketch", type=int, default=8, help="first Hutch++ sketch (8 columns; grown as it pays)")
    p.add_argument("--out", default="curvature_scaling", help="results/<out>.{json,png,svg} (curvature_scaling)")
    p.add_argument("--one", nargs=3, metavar=("SIZE", "LIBRARY", "QUANTITY"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.one:
        import warnings

        warnings.filterwarnings("ignore")
        print(json.dumps(measure(*args.one, args)))
        return
    records, tmp = [], Path(tempfile.mkdtemp(prefix="curvature-scaling-"))
    common = [f"--{k.replace('_', '-')}={getattr(args, k)}" for k in
              ("tol", "our_tol", "rtol", "max_probes", "slq_probes", "slq_steps", "threads", "seed", "hutchpp_sketch")]
    for size in args.sizes.split(","):
        weights = tmp / f"{size}.pt"
        train(size, args.train_steps, args.seed, weights)
        for q in args.quantities.split(","):
            probes = hpp = target = 0
            for lib in LIBRARIES:
                cmd = [sys.executable, __file__, "--one", size, lib, q, f"--probes={probes}", f"--hutchpp-probes={hpp}",
                       f"--target={target}", f"--weights={weights}", *common]
                out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
                r = json.loads(out)
                if lib == "infogeom" and q == "trace":  # the peers get the probes ours needed for the same rtol
                    probes, hpp, target = r["hutchinson_probes"], r["products"], r["value"]
                records.append(r)
                print(f"{size:>5} {q:<10} {lib:<12} {r['seconds']:8.2f} s  {r['peak_extra_mb']:8.1f} MB  "
                      f"value {r['value']:.5g}  products {r['products']}", flush=True)
    print("\nslopes of log time / log memory against log parameters, and time ratio to the faster peer:")
    summary = {}
    for q in args.quantities.split(","):
        for lib in LIBRARIES:
            rs = sorted((r for r in records if r["library"] == lib and r["quantity"] == q),
                        key=lambda r: r["parameters"])
            xs = [r["parameters"] for r in rs]
            summary[f"{lib}/{q}"] = {"time_slope": slope(xs, [r["seconds"] for r in rs]),
                                     "memory_slope": slope(xs, [max(r["peak_extra_mb"], 1e-3) for r in rs])}
        for size in args.sizes.split(","):
            t = {r["library"]: r["seconds"] for r in records if r["size"] == size and r["quantity"] == q}
            summary[f"ratio/{q}/{size}"] = t["infogeom"] / min(t["pyhessian"], t["eigenthings"])
    for k, v in summary.items():
        print(f"  {k:<28} {v if isinstance(v, dict) else f'{v:.2f}'}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(
        {"settings": {k: v for k, v in vars(args).items()
                      if k not in ("one", "probes", "hutchpp_probes", "weights", "target")},
         "threads": torch.get_num_threads(), "records": records, "summary": summary}, indent=1))
    plot(records, RESULTS / f"{args.out}.png")
    print(f"saved {RESULTS / args.out}.json and {args.out}.png/.svg")


if __name__ == "__main__":
    main()
