"""Peak memory of one Fisher/GGN-vector product at a GPT-2 vocabulary, chunked over tokens or not, against one
gradient.

Model: a randomly initialised ``GPT2LMHeadModel`` from a config (nothing downloaded; ``HFCausalLM.from_gpt2``),
GPT-2-small widths (n_embd 768, 12 heads, vocabulary 50,257, tied head) with ``--layers`` blocks, float32, one
batch of ``--batch`` × ``--seq`` random tokens. Each configuration runs in a fresh process; its figure is the peak
resident memory (``ru_maxrss``) minus the resident size after building the model and batch:

- ``gradient``: ``lm_loss(model(x), y).backward()`` (eval mode, math attention: the baseline);
- ``KIND token_chunk=C``: construction of the operator (``FisherOperator(kind="exact")`` or ``GGNOperator``) and
  one product ``A v`` with a random flat v (counted too); ``C = none`` is the unchunked path.

Prints a table (peak MB and ratio to the gradient's) and saves ``benchmarks/results/hf_memory.json``. Memory only:
timings on a loaded machine are not conclusions.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from curvature_scaling import _rss_mb  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def measure(what: str, kind: str, chunk: str, args: argparse.Namespace) -> dict:
    """Extra peak resident memory (MB) of one gradient or one operator construction + product."""
    from infogeom.geometry import FisherOperator, GGNOperator
    from infogeom.geometry.functional import curvature_mode
    from infogeom.models import lm_loss
    from infogeom.models.hf import HFCausalLM

    torch.manual_seed(args.seed)
    model = HFCausalLM.from_gpt2(args.vocab, args.seq, args.layers, 12, 768, attention="math")
    g = torch.Generator().manual_seed(args.seed)
    x, y = (torch.randint(0, args.vocab, (args.batch, args.seq), generator=g) for _ in range(2))
    build_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    base = _rss_mb()
    start = time.perf_counter()
    if what == "gradient":
        with curvature_mode(model):
            lm_loss(model(x), y).backward()
        label = "gradient (loss.backward)"
    else:
        token_chunk = None if chunk == "none" else chunk if chunk == "auto" else int(chunk)
        op = (FisherOperator(model, (x, y), token_chunk=token_chunk) if kind == "fisher"
              else GGNOperator(model, (x, y), token_chunk=token_chunk))
        v = torch.randn(op.dim, generator=g)
        op.matvec(v)
        label = f"{kind} token_chunk={chunk}"
        what = repr(op)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"config": label, "operator": what, "peak_extra_mb": max(peak - base, 0.0), "base_mb": base,
            "build_peak_mb": build_peak, "seconds_loaded": seconds,
            "parameters": sum(p.numel() for p in model.parameters())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=2, help="transformer blocks (GPT-2 small has 12; default 2)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--vocab", type=int, default=50257)
    p.add_argument("--kinds", default="fisher,ggn")
    p.add_argument("--chunks", default="none,auto,1024,256,64", help="token_chunk values (none = unchunked)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--one", nargs=3, metavar=("WHAT", "KIND", "CHUNK"), help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.one:
        import warnings

        warnings.filterwarnings("ignore")
        print(json.dumps(measure(*args.one, args)))
        return
    common = [f"--{k}={getattr(args, k)}" for k in ("layers", "batch", "seq", "vocab", "threads", "seed")]
    runs = [("gradient", "-", "-")] + [("product", k, c) for k in args.kinds.split(",") for c in args.chunks.split(",")]
    records = []
    for what, kind, chunk in runs:
        out = subprocess.run([sys.executable, __file__, "--one", what, kind, chunk, *common], check=True,
                             capture_output=True, text=True).stdout.strip().splitlines()[-1]
        records.append(json.loads(out))
        print(f"{records[-1]['config']:<28} {records[-1]['peak_extra_mb']:9.0f} MB", flush=True)
    grad_mb = records[0]["peak_extra_mb"]
    for r in records:
        r["ratio_to_gradient"] = r["peak_extra_mb"] / grad_mb
    n = args.batch * args.seq
    print(f"\nGPT-2 widths, {args.layers} layers, {records[0]['parameters']:,} parameters, {args.batch}x{args.seq} = "
          f"{n:,} tokens, vocabulary {args.vocab:,}, float32 (one [tokens, V] block = {n * args.vocab * 4 / 2**20:.0f}"
          " MiB)")
    print(f"{'configuration':<28} {'peak MB':>9} {'× gradient':>11}  operator")
    for r in records:
        print(f"{r['config']:<28} {r['peak_extra_mb']:9.0f} {r['ratio_to_gradient']:11.2f}  "
              f"{r['operator'] if r['operator'] != 'gradient' else ''}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "hf_memory.json"
    path.write_text(json.dumps({"settings": {k: v for k, v in vars(args).items() if k != "one"},
                                "records": records}, indent=1))
    print(f"saved {path}")


if __name__ == "__main__":
    main()
