"""infogeom vs hessian-eigenthings v1 on Hugging Face causal LMs: the Hessian's λ_max, trace and spectral
density on the same model and batch, with agreement, time ratio and peak memory.

Models (``transformers`` checkpoints written with ``save_pretrained`` beside a byte-level BPE tokenizer, built
here from random weights by ``tests/hf_checkpoints.py``; nothing is downloaded), each trained ``--train-steps``
AdamW steps on the project's own documentation (so the Hessian is not the one at initialization) and loaded
back through ``hf:PATH`` (:func:`infogeom.models.hf.load_pretrained`, eager "math" attention):

- ``gpt2``: the GPT-2 test model (Conv1D, fused qkv, tied head; 256-token vocabulary);
- ``llama``: the Llama-style test model (RoPE, RMSNorm, grouped-query attention, SwiGLU, untied head);
- ``llama-large``: Llama-style, width 128 × 4 layers with a 4,096-token vocabulary (≈ 1.3M parameters).

One fixed batch (``--batch`` × 64 tokens) per model. Quantities, ours vs hessian-eigenthings (``he``):

- ``lambda_max``: largest-|λ| at residual ‖Hv − λv‖ ≤ ``--tol``·|λ|: our Lanczos (``eigsh``) vs the fewest
  fixed-step ``he.lanczos`` runs that meet the tolerance (see ``benchmarks/curvature.py``); error against our
  Lanczos at tol 1e-8 (untimed);
- ``hutchinson``: the Hutchinson trace with the same ``--probes`` Rademacher probes for both;
- ``trace``: equal accuracy — our adaptive Hutch++ (a first sketch of 8 products, grown as it pays; its forms
  product-free, by second differences of float64 loss values, one-sided for the sign-symmetric residual probes;
  the forms mode the operator's first-probe check chose is recorded) stopped at the relative standard error that
  ``he.hutchinson`` reached with ``--probes`` probes, against that ``he.hutchinson`` run; ``hutch++``:
  ``he.hutch_plus_plus`` (the peer's best trace estimator) with our count of products and forms;
- ``density``: SLQ with ``--slq-probes`` × ``--slq-steps`` for both (first two moments compared).

Each (model, library, quantity) runs in a fresh process so that its peak resident memory (``ru_maxrss`` minus
the resident size after loading the model and batch) is its own. Prints a table and saves
``benchmarks/results/hf_curvature.json``. Needs the test extras and ``bash scripts/install-peers.sh``.
Goal (issue 12): ≤ 0.5× hessian-eigenthings' time at equal accuracy.

    python benchmarks/hf_curvature.py                 # all three models (~5 min on 2 quiet cores)
    python benchmarks/hf_curvature.py --models gpt2   # one model
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

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
#: name -> (family, vocabulary, width, layers)
MODELS = {"gpt2": ("gpt2", 256, 32, 2), "llama": ("llama", 256, 32, 2), "llama-large": ("llama", 4096, 128, 4)}
LIBRARIES = ("infogeom", "eigenthings")
QUANTITIES = ("lambda_max", "hutchinson", "trace", "hutch++", "density")
BLOCK = 64


def text() -> str:
    """The local training text: README and the docs (≈ 170 kB)."""
    return "\n".join(p.read_text(encoding="utf-8") for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))])


def data(path: Path, tmp: Path):
    from infogeom.data import prepare_data

    corpus = tmp / "corpus.txt"
    if not corpus.exists():
        corpus.write_text(text(), encoding="utf-8")
    return prepare_data(str(corpus), f"hf:{path}", cache_dir=tmp / "cache")


def prepare(name: str, tmp: Path, steps: int, seed: int) -> Path:
    """The checkpoint of ``name`` in ``tmp/name``, trained ``steps`` AdamW steps (lr 3e-3, batch 16×64)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from hf_checkpoints import make_checkpoint

    from infogeom.models import lm_loss
    from infogeom.models.hf import inspect_checkpoint, load_pretrained

    family, vocab, width, layers = MODELS[name]
    path = make_checkpoint(tmp / name, family, seed, text(), vocab, width=width, layers=layers)
    tokens = data(path, tmp / name)
    model = load_pretrained(inspect_checkpoint(str(path)))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x, y = tokens.get_batch("train", 16, BLOCK, gen)
        opt.zero_grad()
        lm_loss(model(x), y).backward()
        opt.step()
    model.model.save_pretrained(path)
    return path


def measure(name: str, library: str, quantity: str, args: argparse.Namespace) -> dict:
    """Time, extra peak memory and value of one quantity by one library (run in its own process)."""
    sys.path.insert(0, str(ROOT / "tests"))
    import hessian_eigenthings as he
    from curvature import eigenthings_lambda_max  # benchmarks/curvature.py
    from curvature_scaling import _rss_mb
    from peers.eigenthings_compat import eigenthings_hessian

    from infogeom.curvature import eigsh, hutchinson, hutchpp, spectral_density
    from infogeom.geometry import HessianOperator
    from infogeom.models.hf import inspect_checkpoint, load_pretrained

    path = Path(args.path)
    model = load_pretrained(inspect_checkpoint(str(path))).eval()
    batch = data(path, path.parent).get_batch("train", args.batch, BLOCK, torch.Generator().manual_seed(args.seed + 1))
    gen = torch.Generator().manual_seed(args.seed)
    out: dict = {}
    base = _rss_mb()
    start = time.perf_counter()
    if library == "infogeom":
        op = HessianOperator(model, batch)
        if quantity == "lambda_max":
            res = eigsh(op, k=1, which="LM", tol=args.tol, residuals=False, generator=gen)
            out.update(value=float(res.values[0]), products=res.matvecs)
        elif quantity == "hutchinson":
            est = hutchinson(op, args.probes, gen)
            out.update(value=est.value, stderr=est.stderr, products=est.num_probes)
        elif quantity == "trace":
            est = hutchpp(op, 24, gen, rtol=args.rtol, max_probes=args.max_probes)
            out.update(value=est.value, stderr=est.stderr, products=est.num_probes, forms=op.forms)
        else:
            sd = spectral_density(op, args.slq_probes, args.slq_steps, generator=gen)
            out.update(value=sd.moment(1), moment2=sd.moment(2), products=args.slq_probes * args.slq_steps)
    else:
        if quantity == "lambda_max":
            value, steps = eigenthings_lambda_max(model, batch, args.tol, args.seed)
            out.update(value=value, products=steps)
        elif quantity == "hutchinson":  # also the equal-accuracy reference of our "trace"
            est = he.hutchinson(eigenthings_hessian(model, batch), num_samples=args.probes, seed=args.seed)
            out.update(value=est.estimate, stderr=est.stderr, products=args.probes)
        elif quantity == "hutch++":  # at our count of products and forms (passed as --probes)
            est = he.hutch_plus_plus(eigenthings_hessian(model, batch), num_matvecs=args.probes, seed=args.seed)
            out.update(value=est.estimate, stderr=est.stderr, products=args.probes)
        else:
            sd = he.spectral_density(eigenthings_hessian(model, batch), num_runs=args.slq_probes,
                                     lanczos_steps=args.slq_steps, num_grid_points=64, seed=args.seed)
            moments = [float((sd.raw_weights * sd.raw_eigenvalues**k).sum(1).mean()) for k in (1, 2)]
            out.update(value=moments[0], moment2=moments[1], products=args.slq_probes * args.slq_steps)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if library == "infogeom" and quantity == "lambda_max":  # the reference eigenvalue (untimed)
        ref = eigsh(HessianOperator(model, batch), k=1, which="LM", tol=1e-8, max_basis=80,
                    generator=torch.Generator().manual_seed(9))
        out["reference"] = float(ref.values[0])
    return {"model": name, "library": library, "quantity": quantity, "parameters": sum(p.numel() for p in
            model.parameters()), "tokens": batch[0].numel(), "seconds": seconds,
            "peak_extra_mb": max(peak - base, 0.0), **out}


def run(name: str, library: str, quantity: str, path: Path, args: argparse.Namespace, rtol: float,
        probes: int | None = None) -> dict:
    settings = [f"--{k.replace('_', '-')}={getattr(args, k)}" for k in
                ("tol", "max_probes", "slq_probes", "slq_steps", "batch", "threads", "seed")]
    settings.append(f"--probes={probes or args.probes}")
    cmd = [sys.executable, __file__, "--one", name, library, quantity, f"--path={path}", f"--rtol={rtol}", *settings]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{name} {library} {quantity} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def rows_of(records: list[dict]) -> list[tuple]:
    """One table row per (model, quantity): values, agreement, time ratio and peak memory of ours / peer's."""
    rows = []
    for name in dict.fromkeys(r["model"] for r in records):
        for q in QUANTITIES:
            got = {r["library"]: r for r in records if r["model"] == name and r["quantity"] == q}
            if len(got) < 2:
                continue
            a, b = got["infogeom"], got["eigenthings"]
            if q == "lambda_max":
                ref = a["reference"]
                vals = f"{a['value']:.5g} / {b['value']:.5g}"
                agree = f"err {abs(a['value'] - ref) / abs(ref):.1e} / {abs(b['value'] - ref) / abs(ref):.1e}"
            elif q == "density":
                vals = f"m1 {a['value']:.4g}, m2 {a['moment2']:.4g} / m1 {b['value']:.4g}, m2 {b['moment2']:.4g}"
                agree = f"m2 {abs(a['moment2'] - b['moment2']) / abs(b['moment2']):.1%}"
            else:
                vals = f"{a['value']:.5g} ± {a['stderr']:.2g} / {b['value']:.5g} ± {b['stderr']:.2g}"
                agree = f"{abs(a['value'] - b['value']) / math.hypot(a['stderr'], b['stderr']):.2f} SE"
            rows.append((name, f"{a['parameters']:,}", q, vals, agree, f"{a['products']} / {b['products']}",
                         f"{a['seconds']:.2f} / {b['seconds']:.2f}", f"{a['seconds'] / b['seconds']:.2f}",
                         f"{a['peak_extra_mb']:.0f} / {b['peak_extra_mb']:.0f}"))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of " + ", ".join(MODELS))
    p.add_argument("--tol", type=float, default=1e-3, help="λ_max relative residual tolerance (both)")
    p.add_argument("--probes", type=int, default=64, help="Hutchinson probes (both)")
    p.add_argument("--max-probes", type=int, default=1024, help="cap of our adaptive Hutch++ (products and forms)")
    p.add_argument("--slq-probes", type=int, default=4)
    p.add_argument("--slq-steps", type=int, default=32)
    p.add_argument("--batch", type=int, default=8, help="sequences of 64 tokens in the fixed batch")
    p.add_argument("--train-steps", type=int, default=100)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=RESULTS / "hf_curvature.json")
    p.add_argument("--path", help=argparse.SUPPRESS)  # the checkpoint, for the --one runs
    p.add_argument("--rtol", type=float, default=0.0, help=argparse.SUPPRESS)  # our trace's stopping rule
    p.add_argument("--one", nargs=3, metavar=("MODEL", "LIBRARY", "QUANTITY"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import warnings

    warnings.filterwarnings("ignore")
    if args.one:
        print(json.dumps(measure(*args.one, args)))
        return
    names = [n for n in args.models.split(",") if n]
    if unknown := [n for n in names if n not in MODELS]:
        p.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    started, records = time.time(), []
    with tempfile.TemporaryDirectory(prefix="hf-curvature-") as tmp:
        for name in names:
            path = prepare(name, Path(tmp), args.train_steps, args.seed)
            peer_rse, our_count = 0.0, 0
            for q in QUANTITIES:
                # the peer first: its trace SE is our target; its Hutch++ gets our count of products and forms
                for lib in ("eigenthings", "infogeom") if q != "hutch++" else ("infogeom", "eigenthings"):
                    if lib == "eigenthings" and q == "trace":  # the same run as its Hutchinson
                        r = {**next(r for r in records if r["model"] == name and r["library"] == lib
                                    and r["quantity"] == "hutchinson"), "quantity": q}
                    elif lib == "infogeom" and q == "hutch++":  # our Hutch++ run again, set beside its Hutch++
                        r = {**next(r for r in records if r["model"] == name and r["library"] == lib
                                    and r["quantity"] == "trace"), "quantity": q}
                    else:
                        r = run(name, lib, q, path, args, peer_rse, our_count if q == "hutch++" else None)
                    if lib == "infogeom" and q == "trace":
                        our_count = r["products"]
                    if lib == "eigenthings" and q == "hutchinson":
                        peer_rse = r["stderr"] / abs(r["value"])
                    records.append(r)
                    print(f"{name:<12} {q:<10} {lib:<12} {r['seconds']:7.2f} s {r['peak_extra_mb']:7.0f} MB "
                          f"value {r['value']:.5g} products {r['products']}", flush=True)
    header = ("model", "parameters", "quantity", "infogeom / eigenthings", "agreement", "products", "seconds",
              "time ratio", "peak MB")
    rows = rows_of(records)
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    print(f"\n{torch.get_num_threads()} threads; batch {args.batch}×{BLOCK}; λ_max tol {args.tol:g}; "
          f"Hutchinson {args.probes} probes; SLQ {args.slq_probes}×{args.slq_steps}")
    for r in [header, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                if k not in ("one", "path", "rtol")}
    args.out.write_text(json.dumps({"settings": settings, "threads": torch.get_num_threads(),
                                    "wall_s": time.time() - started, "records": records,
                                    "table": [dict(zip(header, r)) for r in rows]}, indent=1))
    print(f"saved {args.out} ({time.time() - started:.0f} s)")


if __name__ == "__main__":
    main()
