"""infogeom.curvature vs PyHessian and hessian-eigenthings v1 on the same model and batch, in the same run.

A char-level GPT is trained briefly on the offline ``pydoc`` corpus (so the Hessian is not the one at
initialization), then both libraries estimate, from one fixed batch:

- λ_max (largest-|λ|): our Lanczos vs PyHessian's power iteration, both at relative tolerance ``--tol``
  (ours: residual ‖Hv − λv‖ ≤ tol·|λ|; PyHessian: relative change of λ between iterations); the reference is
  our Lanczos at tol 1e-8. Ours runs on the gradient-difference sketch (``eigsh(..., sketch=True)``: one
  gradient per Krylov column, then one HVP per wanted vector for its exact Rayleigh quotient and residual, and
  exact-product Lanczos steps from there while a residual fails ``--tol``; "sketch columns and HVPs" counts
  both); the exact-product Lanczos has its own row;
- top-5 eigenvalues: Lanczos (k = 5, sketch as above) vs deflated power iteration (top_n = 5);
- the Hutchinson trace with the same number of probes (PyHessian's stopping test is disabled, see below);
- the SLQ density with the same probes × Lanczos steps (moments and the JS distance between the densities).

hessian-eigenthings runs the same three: its Lanczos takes a fixed number of steps, so it gets the fewest
steps (from 4, 6, 8, 12, 16, 24, 32, 48) whose residual meets the same tolerance, and that run is timed; its
Hutchinson trace and SLQ use the same probe counts. First, the cost of one product: a gradient, one
Hessian-vector product per column (our CPU default), k columns vmapped, forward-over-reverse, central
finite differences of two gradients, hessian-eigenthings' (which rebuilds the gradient graph each time), and a
quadratic form vᵀHv by second differences of float64 loss values (no product: all a Hutchinson probe needs).

Prints a table (agreement and time ratio ours/peer) and saves benchmarks/results/curvature.json and a
density plot. Needs ``bash scripts/install-peers.sh`` (PyHessian, hessian-eigenthings). Goal: λ_max within 1%,
trace within the standard error, at ≤ 1/3 of the faster peer's time.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import statistics
import sys
import time
import warnings
from pathlib import Path

import hessian_eigenthings as he
import numpy as np
import torch
from matplotlib.figure import Figure
from torch.func import grad, jvp

from infogeom.curvature import (
    adaptive_spectral_density,
    broaden,
    eigsh,
    hutchinson,
    hutchpp,
    js_distance,
    power_iteration,
    spectral_density,
    xtrace,
)
from infogeom.curvature.density import default_grid, default_sigma
from infogeom.data import prepare_data
from infogeom.geometry import FiniteDifferenceHessian, HessianOperator, SecondDifferences
from infogeom.geometry.functional import curvature_mode, loss_function
from infogeom.models import GPT, GPTConfig, lm_loss
from infogeom.operators import CountedOperator, unflatten

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the peer adapters live with the tests
from peers.eigenthings_compat import eigenthings_hessian  # noqa: E402
from peers.pyhessian_compat import pyhessian_session  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def trained_model(args: argparse.Namespace) -> tuple[GPT, tuple[torch.Tensor, torch.Tensor]]:
    torch.manual_seed(args.seed)
    data = prepare_data("pydoc", "char")
    cfg = GPTConfig(
        vocab_size=data.vocab_size,
        block_size=args.block,
        n_layer=args.layers,
        n_head=args.heads,
        n_embd=args.width,
        attention="math",
    )
    model = GPT(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(args.seed)
    for _ in range(args.train_steps):
        x, y = data.get_batch("train", 16, args.block, gen)
        opt.zero_grad()
        lm_loss(model(x), y).backward()
        opt.step()
    batch = data.get_batch("train", args.batch, args.block, torch.Generator().manual_seed(args.seed + 1))
    return model.eval(), batch


def eigenthings_lambda_max(model, batch, tol: float, seed: int) -> tuple[float, int]:
    """hessian-eigenthings' λ_max with the fewest Lanczos steps whose Ritz residual is ≤ tol·|λ| (its Lanczos
    runs a fixed number of steps); (λ, steps). Only the successful run's time counts in ``timed``."""
    op = eigenthings_hessian(model, batch)
    for steps in (4, 6, 8, 12, 16, 24, 32, 48):
        res = he.lanczos(op, k=1, max_iter=steps, tol=tol, seed=seed)
        if float(res.residuals[0]) <= tol * abs(float(res.eigenvalues[0])):
            break
    return float(res.eigenvalues[0]), steps


def product_costs(model, batch, repeats: int, k: int = 8) -> dict[str, float]:
    """Median seconds of one gradient and of one Hessian-vector product by each implementation (per column
    where k columns are done at once), over interleaved rounds of all implementations."""
    x, y = batch
    params = [p for p in model.parameters()]
    ops = {b: HessianOperator(model, batch, batched=b) for b in (False, True)}
    V = torch.randn(ops[False].dim, k, generator=torch.Generator().manual_seed(0))
    he_op = eigenthings_hessian(model, batch)
    fd = FiniteDifferenceHessian(model, batch)
    forms = SecondDifferences(model, batch, ops[False].names)
    named = {n: p.detach() for n, p in model.named_parameters()}
    tangent = dict(zip(named, unflatten(V[:, 0], [p.shape for p in named.values()])))
    with curvature_mode(model):
        g = grad(loss_function(model, batch, lm_loss))
        fns = {
            "gradient": lambda: torch.autograd.grad(lm_loss(model(x), y), params),
            "HVP, one column (stored graph)": lambda: ops[False].matmat(V[:, :1]),
            f"HVP, {k} columns one by one (per column)": lambda: ops[False].matmat(V),
            f"HVP, {k} columns vmapped (per column)": lambda: ops[True].matmat(V),
            "HVP, forward-over-reverse (jvp of grad)": lambda: jvp(g, (named,), (tangent,)),
            "HVP, central finite differences (2 gradients)": lambda: fd.matmat(V[:, :1]),
            f"sketch Hv, {k} columns by one-sided gradient differences (per column)": lambda: ops[False].sketch(V),
            "HVP, hessian-eigenthings (graph rebuilt)": lambda: he_op.matvec(V[:, 0].clone()),
            f"vᵀHv, {k} columns by second differences (float64 forwards; per column)": lambda: forms(V),
            f"vᵀHv, {k} columns one-sided (sign-symmetric probes; per column)": lambda: forms(V, one_sided=True),
        }
        for fn in fns.values():
            fn()  # warm-up
        times: dict[str, list[float]] = {name: [] for name in fns}
        for _ in range(max(repeats, 5)):  # interleaved rounds: a drifting machine speed hits every line alike
            for name, fn in fns.items():
                times[name].append(timed(fn, 1)[1])
    return {name: statistics.median(t) / (k if f"{k} columns" in name else 1) for name, t in times.items()}


def timed(fn, repeats: int):
    """(result of the last call, median seconds)."""
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return out, statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small model, one repeat (for CI / loaded machines)")
    p.add_argument("--tol", type=float, default=1e-3)
    p.add_argument("--probes", type=int, default=64, help="Hutchinson probes (both)")
    p.add_argument("--rtol", type=float, default=0.01, help="relative SE of the equal-accuracy trace (1%%)")
    p.add_argument("--max-products", type=int, default=512, help="budget of the adaptive XTrace")
    p.add_argument("--hutchpp-probes", type=int, default=24,
                   help="equal-accuracy Hutch++: a first sketch of a third of these products, grown as it pays")
    p.add_argument("--density-tol", type=float, default=0.0,
                   help="L1 tolerance of the adaptive density (default: the peers' measured L1)")
    p.add_argument("--slq-probes", type=int, default=4)
    p.add_argument("--slq-steps", type=int, default=48)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, help="timed repeats per measurement (default: 3, 1 with --quick)")
    args = p.parse_args()
    repeats = args.repeats
    warnings.filterwarnings("ignore", message="Using backward\\(\\) with create_graph=True")  # PyHessian's
    if args.threads:
        torch.set_num_threads(args.threads)
    size = (
        dict(layers=2, heads=2, width=32, block=32, batch=8, train_steps=60, repeats=1)
        if args.quick
        else dict(layers=4, heads=4, width=64, block=64, batch=16, train_steps=200, repeats=3)
    )
    for k, v in size.items():
        setattr(args, k, v)
    if repeats:
        args.repeats = repeats
    if args.quick:
        args.probes, args.slq_steps = min(args.probes, 32), min(args.slq_steps, 32)
    model, batch = trained_model(args)
    P = sum(p.numel() for p in model.parameters())
    print(
        f"model: {args.layers} layers × width {args.width}, {P:,} parameters; "
        f"batch {args.batch}×{args.block}; {torch.get_num_threads()} threads"
    )

    def op() -> HessianOperator:
        return HessianOperator(model, batch)

    products = product_costs(model, batch, args.repeats)

    ref = eigsh(op(), k=5, which="LM", tol=1e-8, max_basis=80, generator=torch.Generator().manual_seed(9))
    ref_vals = ref.values.double()
    rows, record = (
        [],
        {
            "model": {"parameters": P, **{k: getattr(args, k) for k in size}},
            "tol": args.tol,
            "threads": torch.get_num_threads(),
            "reference_top5": ref_vals.tolist(),
        },
    )

    ph_hvps = {"count": 0}
    ph_module = importlib.import_module("pyhessian.hessian")  # the module (the package re-exports a class)
    original_hvp = ph_module.hessian_vector_product

    def counting_hvp(*a, **kw):
        ph_hvps["count"] += 1
        return original_hvp(*a, **kw)

    ph_module.hessian_vector_product = counting_hvp  # counts PyHessian's Hessian-vector products

    def run_pyhessian(fn):
        def call():
            torch.manual_seed(args.seed)
            ph_hvps["count"] = 0
            with pyhessian_session(model, batch) as ph:
                return fn(ph)

        return call

    # --- λ_max ---------------------------------------------------------------------------------------------
    # ours: Krylov on the gradient-difference sketch, values as exact Rayleigh quotients (eigsh(sketch=True))
    ours, t_ours = timed(
        lambda: eigsh(
            op(),
            k=1,
            which="LM",
            tol=args.tol,
            residuals=False,
            generator=torch.Generator().manual_seed(args.seed),
            sketch=True,
        ),
        args.repeats,
    )
    exact, t_exact = timed(
        lambda: eigsh(op(), k=1, which="LM", tol=args.tol, residuals=False,
                      generator=torch.Generator().manual_seed(args.seed)),
        args.repeats,
    )
    (ph_vals, _), t_ph = timed(
        run_pyhessian(lambda ph: ph.eigenvalues(maxIter=100, tol=args.tol, top_n=1)), args.repeats
    )
    lam_ref = float(ref_vals[0])
    lam = {
        "ours": float(ours.values[0]),
        "pyhessian": float(ph_vals[0]),
        "reference": lam_ref,
        "ours_matvecs": ours.matvecs,
        "ours_error": abs(float(ours.values[0]) - lam_ref) / abs(lam_ref),
        "pyhessian_error": abs(ph_vals[0] - lam_ref) / abs(lam_ref),
        "time_ours": t_ours,
        "time_pyhessian": t_ph,
        "exact_products": {"value": float(exact.values[0]), "matvecs": exact.matvecs, "time": t_exact,
                           "error": abs(float(exact.values[0]) - lam_ref) / abs(lam_ref)},
    }
    lam["agreement"] = abs(lam["ours"] - lam["pyhessian"]) / abs(lam["pyhessian"])
    lam["pyhessian_matvecs"] = ph_hvps["count"]
    (he_lam, he_steps), t_he = timed(lambda: eigenthings_lambda_max(model, batch, args.tol, args.seed), args.repeats)
    lam.update(eigenthings=he_lam, eigenthings_matvecs=he_steps, time_eigenthings=t_he,
               eigenthings_error=abs(he_lam - lam_ref) / abs(lam_ref))
    record["lambda_max"] = lam
    rows.append(
        (
            "λ_max",
            f"{lam['ours']:.5g}",
            f"{lam['pyhessian']:.5g}",
            f"{he_lam:.5g}",
            f"{100 * lam['agreement']:.3f}%",
            f"{t_ours / t_ph:.2f}",
            f"{t_ours / t_he:.2f}",
            f"err vs ref: ours {lam['ours_error']:.1e}, PyHessian {lam['pyhessian_error']:.1e}, eigenthings "
            f"{lam['eigenthings_error']:.1e}; {ours.matvecs} sketch columns and HVPs vs "
            f"{lam['pyhessian_matvecs']} vs {he_steps} HVPs",
        )
    )
    rows.append(
        (
            "λ_max, exact-product Krylov",
            f"{float(exact.values[0]):.5g}",
            "",
            "",
            f"err {lam['exact_products']['error']:.1e}",
            f"{t_exact / t_ph:.2f}",
            f"{t_exact / t_he:.2f}",
            f"{exact.matvecs} HVPs (eigsh without sketch)",
        )
    )

    # equal accuracy: the loosest of our tolerances whose λ_max error is at most PyHessian's
    for tol in (1e-1, 3e-2, 1e-2, 3e-3, args.tol):
        res, t_res = timed(
            lambda tol=tol: eigsh(
                op(),
                k=1,
                which="LM",
                tol=tol,
                residuals=False,
                generator=torch.Generator().manual_seed(args.seed),
                sketch=True,
            ),
            args.repeats,
        )
        err = abs(float(res.values[0]) - lam_ref) / abs(lam_ref)
        if err <= lam["pyhessian_error"]:
            break
    lam["equal_accuracy"] = {"tol": tol, "error": err, "matvecs": res.matvecs, "time_ours": t_res}
    rows.append(
        (
            "λ_max, equal accuracy",
            f"{float(res.values[0]):.5g}",
            f"{lam['pyhessian']:.5g}",
            "",
            f"err {err:.1e} ≤ {lam['pyhessian_error']:.1e}",
            f"{t_res / t_ph:.2f}",
            "",
            f"our tol {tol:g}: {res.matvecs} sketch columns and HVPs",
        )
    )
    # the same operator with our power iteration (same residual test): Lanczos vs power iteration
    pw, t_pw = timed(
        lambda: power_iteration(
            op(), k=1, tol=args.tol, max_iter=500, generator=torch.Generator().manual_seed(args.seed)
        ),
        args.repeats,
    )
    lam["our_power_iteration"] = {
        "value": float(pw.values[0]),
        "matvecs": pw.matvecs,
        "time": t_pw,
        "error": abs(float(pw.values[0]) - lam_ref) / abs(lam_ref),
    }
    rows.append(
        (
            "λ_max, our power iteration",
            f"{float(pw.values[0]):.5g}",
            "",
            "",
            "same residual tol",
            f"{t_exact / t_pw:.2f}",
            "",
            f"Lanczos/power time; {pw.matvecs} HVPs, err {lam['our_power_iteration']['error']:.1e}",
        )
    )

    # --- top-5 ---------------------------------------------------------------------------------------------
    ours5, t_ours5 = timed(
        lambda: eigsh(
            op(),
            k=5,
            which="LM",
            tol=args.tol,
            residuals=False,
            generator=torch.Generator().manual_seed(args.seed),
            sketch=True,
        ),
        args.repeats,
    )
    (ph5, _), t_ph5 = timed(
        run_pyhessian(lambda ph: ph.eigenvalues(maxIter=100, tol=args.tol, top_n=5)), args.repeats
    )
    ph5 = sorted(ph5, key=abs, reverse=True)
    err_ours5 = max(abs(a - b) / abs(b) for a, b in zip(ours5.values.tolist(), ref_vals.tolist()))
    err_ph5 = max(abs(a - b) / abs(b) for a, b in zip(ph5, ref_vals.tolist()))
    record["top5"] = {
        "ours": ours5.values.tolist(),
        "pyhessian": ph5,
        "ours_max_error": err_ours5,
        "pyhessian_max_error": err_ph5,
        "time_ours": t_ours5,
        "time_pyhessian": t_ph5,
        "ours_matvecs": ours5.matvecs,
        "pyhessian_matvecs": ph_hvps["count"],
    }
    rows.append(
        (
            "top-5 eigenvalues",
            f"max err {err_ours5:.1e}",
            f"max err {err_ph5:.1e}",
            "",
            "vs reference",
            f"{t_ours5 / t_ph5:.2f}",
            "",
            f"{ours5.matvecs} sketch columns and HVPs vs {ph_hvps['count']} HVPs",
        )
    )

    # --- trace ---------------------------------------------------------------------------------------------
    tr, t_tr = timed(
        lambda: hutchinson(op(), args.probes, torch.Generator().manual_seed(args.seed)), args.repeats
    )
    # PyHessian's stopping test divides by the signed running mean: tol = −inf makes it use exactly N probes
    samples, t_ph_tr = timed(
        run_pyhessian(lambda ph: np.array(ph.trace(maxIter=args.probes, tol=-math.inf))), args.repeats
    )
    ph_tr, ph_se = float(samples.mean()), float(samples.std(ddof=1) / math.sqrt(len(samples)))
    he_tr, t_he_tr = timed(
        lambda: he.hutchinson(eigenthings_hessian(model, batch), num_samples=args.probes, seed=args.seed),
        args.repeats,
    )
    combined = math.hypot(tr.stderr, ph_se)
    record["trace"] = {
        "ours": tr.value,
        "ours_se": tr.stderr,
        "pyhessian": ph_tr,
        "pyhessian_se": ph_se,
        "difference_in_se": abs(tr.value - ph_tr) / combined,
        "probes": args.probes,
        "time_ours": t_tr,
        "time_pyhessian": t_ph_tr,
        "eigenthings": he_tr.estimate,
        "eigenthings_se": he_tr.stderr,
        "time_eigenthings": t_he_tr,
    }
    rows.append(
        (
            f"trace ({args.probes} probes)",
            f"{tr.value:.5g} ± {tr.stderr:.2g}",
            f"{ph_tr:.5g} ± {ph_se:.2g}",
            f"{he_tr.estimate:.5g} ± {he_tr.stderr:.2g}",
            f"{abs(tr.value - ph_tr) / combined:.2f} SE",
            f"{t_tr / t_ph_tr:.2f}",
            f"{t_tr / t_he_tr:.2f}",
            "same probes count",
        )
    )
    # equal accuracy: relative SE ``--rtol``. Ours: adaptive Hutch++ whose quadratic forms (low-rank part and
    # residual) are product-free second differences and whose sketch A S is gradient differences (one gradient
    # per column, only its span is used; timed); adaptive XTrace
    # (products only) beside it. PyHessian (Hutchinson): the probes its measured per-probe sd needs, at its
    # measured time per probe (projected). eigenthings: its Hutch++ with our count of products and forms
    # (timed), its time then scaled to the target SE by SE ∝ 1/m (the fastest Hutch++ rate, so the projection
    # favours the peer, up or down).
    counted: list[CountedOperator] = []  # the last timed run's counts of products and forms

    def counted_hutchpp():
        counted.append(CountedOperator(op()))
        return hutchpp(counted[-1], args.hutchpp_probes, torch.Generator().manual_seed(args.seed), rtol=args.rtol,
                       max_probes=4096)

    xt, t_xt = timed(counted_hutchpp, args.repeats)
    xtr, t_xtr = timed(lambda: xtrace(op(), 32, torch.Generator().manual_seed(args.seed), rtol=args.rtol,
                                      max_probes=args.max_products), args.repeats)
    target = args.rtol * abs(xt.value)
    ph_needed = math.ceil((float(samples.std(ddof=1)) / target) ** 2)
    t_ph_eq = ph_needed * t_ph_tr / args.probes
    hpp, t_hpp = timed(lambda: he.hutch_plus_plus(eigenthings_hessian(model, batch), num_matvecs=xt.num_probes,
                                                  seed=args.seed), args.repeats)
    he_scale = hpp.stderr / target
    # ours is sized from a 16-probe pilot, so its SE lands on either side of the target: above it, its time is
    # projected to the target by SE² ∝ 1/m (as Hutchinson's residual; conservative: the sketch part is counted too)
    ours_scale = max(1.0, (xt.stderr / target) ** 2)
    record["trace_equal_accuracy"] = {
        "rtol": args.rtol, "ours": xt.value, "ours_se": xt.stderr, "ours_products": xt.num_probes,
        "time_ours": t_xt, "pyhessian_probes_needed": ph_needed, "time_pyhessian_projected": t_ph_eq,
        "eigenthings_hutchpp": hpp.estimate, "eigenthings_hutchpp_se": hpp.stderr,
        "time_eigenthings_hutchpp": t_hpp, "time_eigenthings_projected": t_hpp * he_scale,
        "ours_projection": ours_scale, "ours_hvps": counted[-1].products, "ours_forms": counted[-1].forms,
        "ours_sketches": counted[-1].sketches,
        "xtrace": xtr.value, "xtrace_se": xtr.stderr,
        "xtrace_products": xtr.num_probes, "time_xtrace": t_xtr,
    }
    rows.append(
        (
            f"trace, {100 * args.rtol:g}% rel. SE",
            f"{xt.value:.5g} ± {xt.stderr:.2g}",
            f"{ph_needed} probes",
            f"{hpp.estimate:.5g} ± {hpp.stderr:.2g}",
            "equal accuracy",
            f"{t_xt * ours_scale / t_ph_eq:.2f}",
            f"{t_xt * ours_scale / (t_hpp * he_scale):.2f}",
            f"Hutch++ {counted[-1].sketches} sketch columns + {counted[-1].products} products + "
            f"{counted[-1].forms} forms"
            f"{' ×' + format(ours_scale, '.2f') + ' (to the target SE, SE² ∝ 1/m)' if ours_scale > 1 else ''}; "
            f"PyHessian projected from its per-probe sd and time; eigenthings Hutch++ at our count"
            f" ×{he_scale:.2f} (to the target SE, SE ∝ 1/m)",
        )
    )
    rows.append(
        (
            f"trace, {100 * args.rtol:g}% rel. SE, XTrace",
            f"{xtr.value:.5g} ± {xtr.stderr:.2g}",
            "",
            "",
            "products only",
            f"{t_xtr / t_ph_eq:.2f}",
            f"{t_xtr / (t_hpp * he_scale):.2f}",
            f"adaptive XTrace, {xtr.num_probes} products (the exact-product estimator)",
        )
    )

    # --- density -------------------------------------------------------------------------------------------
    sd, t_sd = timed(
        lambda: spectral_density(
            op(), args.slq_probes, args.slq_steps, generator=torch.Generator().manual_seed(args.seed)
        ),
        args.repeats,
    )
    (nodes_ph, weights_ph), t_ph_sd = timed(
        run_pyhessian(lambda ph: ph.density(iter=args.slq_steps, n_v=args.slq_probes)), args.repeats
    )
    he_sd, t_he_sd = timed(
        lambda: he.spectral_density(eigenthings_hessian(model, batch), num_runs=args.slq_probes,
                                    lanczos_steps=args.slq_steps, num_grid_points=64, seed=args.seed),
        args.repeats,
    )
    he_m = {k: float((he_sd.raw_weights * he_sd.raw_eigenvalues**k).sum(1).mean()) for k in (1, 2)}
    nodes_ph = torch.tensor(nodes_ph, dtype=torch.float64)
    weights_ph = torch.tensor(weights_ph, dtype=torch.float64)
    all_nodes = torch.cat([sd.nodes.reshape(-1), nodes_ph.reshape(-1)])
    sigma = default_sigma(all_nodes)
    grid = default_grid(all_nodes, sigma)
    dens_ours, dens_ph = (
        broaden(sd.nodes, sd.weights, grid, sigma),
        broaden(nodes_ph, weights_ph, grid, sigma),
    )
    moments = {k: (sd.moment(k), float((weights_ph * nodes_ph**k).sum(1).mean())) for k in (1, 2)}
    js = js_distance(dens_ours, dens_ph)
    record["density"] = {
        "probes": args.slq_probes,
        "steps": args.slq_steps,
        "moments": moments,
        "js_distance": js,
        "time_ours": t_sd,
        "time_pyhessian": t_ph_sd,
        "eigenthings_moments": he_m,
        "time_eigenthings": t_he_sd,
    }
    rows.append(
        (
            f"density ({args.slq_probes}×{args.slq_steps})",
            f"m1 {moments[1][0]:.3g}, m2 {moments[2][0]:.3g}",
            f"m1 {moments[1][1]:.3g}, m2 {moments[2][1]:.3g}",
            f"m1 {he_m[1]:.3g}, m2 {he_m[2]:.3g}",
            f"JS {js:.3f} (vs PyHessian)",
            f"{t_sd / t_ph_sd:.2f}",
            f"{t_sd / t_he_sd:.2f}",
            "moments = tr(H^k)/P estimates",
        )
    )

    # equal accuracy: each fixed n × m density's L1 distance to the pool of the *other* runs (one grid and σ)
    # measures its accuracy; our adaptive split then gets that L1 as its target (``--density-tol``, default:
    # the peers' median; the split stops when each error estimate is below half of it), budget 2 n m
    he_nodes = torch.as_tensor(he_sd.raw_eigenvalues, dtype=torch.float64)
    he_weights = torch.as_tensor(he_sd.raw_weights, dtype=torch.float64)
    runs = {"ours": (sd.nodes, sd.weights), "pyhessian": (nodes_ph, weights_ph), "eigenthings": (he_nodes, he_weights)}
    step = float(grid[1] - grid[0])

    def l1_to_others(nodes, weights, exclude):
        others = [v for k, v in runs.items() if k != exclude]
        pool = broaden(torch.cat([n for n, _ in others]), torch.cat([w for _, w in others]), grid, sigma)
        return float((broaden(nodes, weights, grid, sigma) - pool).abs().sum() * step)

    l1 = {k: l1_to_others(*v, exclude=k) for k, v in runs.items()}
    # the same n × m on the gradient-difference sketch (one gradient per step and probe), against the pool of
    # the three exact-product runs: a node bias from the sketch would show as a larger L1 than theirs
    sk, t_sk = timed(lambda: spectral_density(op(), args.slq_probes, args.slq_steps,
                                              generator=torch.Generator().manual_seed(args.seed), sketch=True),
                     args.repeats)
    l1["sketch"] = l1_to_others(sk.nodes, sk.weights, exclude=None)
    record["density"].update(time_sketch=t_sk, sketch_moments={k: sk.moment(k) for k in (1, 2)})
    rows.append(
        (
            f"density ({args.slq_probes}×{args.slq_steps}), sketch",
            f"m1 {sk.moment(1):.3g}, m2 {sk.moment(2):.3g}",
            f"L1 {l1['pyhessian']:.1e}",
            f"L1 {l1['eigenthings']:.1e}",
            f"L1 {l1['sketch']:.1e} (exact-product ours {l1['ours']:.1e})",
            f"{t_sk / t_ph_sd:.2f}",
            f"{t_sk / t_he_sd:.2f}",
            "Lanczos on gradient differences; L1 to the pool of the other (exact-product) runs",
        )
    )
    density_tol = args.density_tol or statistics.median([l1["pyhessian"], l1["eigenthings"]])
    ad, t_ad = timed(lambda: adaptive_spectral_density(op(), tol=density_tol,
                                                       max_products=2 * args.slq_probes * args.slq_steps,
                                                       generator=torch.Generator().manual_seed(args.seed),
                                                       sketch=True),
                     args.repeats)
    l1["adaptive"] = l1_to_others(ad.density.nodes, ad.density.weights, exclude=None)
    record["density_equal_accuracy"] = {
        "tol": density_tol, "products": ad.products, "depth": ad.density.nodes.shape[1],
        "probes": ad.density.nodes.shape[0], "quadrature_change": ad.quadrature_change,
        "probe_stderr": ad.probe_stderr, "l1_to_pool": l1, "time_ours": t_ad,
    }
    rows.append(
        (
            "density, adaptive split",
            f"{ad.density.nodes.shape[0]}×{ad.density.nodes.shape[1]}, L1 {l1['adaptive']:.1e}",
            f"L1 {l1['pyhessian']:.1e}",
            f"L1 {l1['eigenthings']:.1e}",
            f"ours {args.slq_probes}×{args.slq_steps}: L1 {l1['ours']:.1e}",
            f"{t_ad / t_ph_sd:.2f}",
            f"{t_ad / t_he_sd:.2f}",
            f"tol {density_tol:.1e}: {ad.products} sketch columns vs {args.slq_probes * args.slq_steps} "
            "products; L1 to the pool of the exact-product runs",
        )
    )

    total_ours = t_ours + t_tr + t_sd
    total_ph = t_ph + t_ph_tr + t_ph_sd
    total_he = t_he + t_he_tr + t_he_sd
    record["total"] = {"time_ours": total_ours, "time_pyhessian": total_ph, "ratio": total_ours / total_ph,
                       "time_eigenthings": total_he, "ratio_eigenthings": total_ours / total_he}
    record["products"] = products
    rows.append(
        (
            "total (λ_max + trace + density)",
            f"{total_ours:.2f}s",
            f"{total_ph:.2f}s",
            f"{total_he:.2f}s",
            "",
            f"{total_ours / total_ph:.2f}",
            f"{total_ours / total_he:.2f}",
            "",
        )
    )

    print("cost of one product (median seconds; ratio to one gradient):")
    for name, sec in products.items():
        print(f"  {name:<44} {sec:8.4f} s  {sec / products['gradient']:5.2f}×")
    header = ("quantity", "infogeom", "PyHessian", "eigenthings", "agreement", "÷ PyHessian", "÷ eigenthings",
              "notes")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)))
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "curvature_quick" if args.quick else "curvature"
    (RESULTS / f"{name}.json").write_text(json.dumps(record, indent=1))
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    floor = float(max(dens_ours.max(), dens_ph.max())) * 1e-7
    ax.semilogy(grid, dens_ours.clamp_min(floor), label="infogeom (SLQ)")
    ax.semilogy(grid, dens_ph.clamp_min(floor), "--", label="PyHessian (SLQ)")
    ax.set_xlabel("Hessian eigenvalue")
    ax.set_ylabel("density")
    ax.set_title(f"Hessian spectral density, {P:,} parameters")
    ax.legend()
    fig.savefig(RESULTS / f"{name}_density.png", dpi=120, bbox_inches="tight")
    print(f"saved {RESULTS / (name + '.json')} and {name}_density.png")


if __name__ == "__main__":
    main()
