"""Fisher approximation quality at initialization and after training, and the cost of curvature products.

1. Approximation report (:func:`infogeom.geometry.approximation_report`): a GPT small enough for a dense exact
   Fisher (float64), at initialization and after ``--steps`` AdamW steps on the char-level corpus.
2. Timing on the default small model (``GPTConfig`` defaults, vocab of the char tokenizer): one gradient, one
   Fisher-vector product (``FisherOperator``: jvp + vjp) and one Hessian-vector product (``HessianOperator``:
   double backward), each as the median of repeated runs, measured side by side; ratios are per gradient.

    python benchmarks/fisher.py [--quick] [--steps N] [--device cpu|cuda] [--out
    benchmarks/results/fisher.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from tqdm import tqdm

from infogeom.errors import InfogeomError
from infogeom.geometry import (
    FisherOperator,
    HessianOperator,
    approximation_report,
    curvature_mode,
    format_report,
)
from infogeom.models import GPT, GPTConfig, lm_loss


def load_tokens(corpus: str) -> tuple[torch.Tensor, int, str]:
    """Token ids of ``corpus`` (char tokenizer) and the vocabulary size; falls back to pydoc, then random."""
    try:
        from infogeom.data import prepare_data
        for name in (corpus, "pydoc"):
            try:
                data = prepare_data(name, "char")
                return torch.from_numpy(data.train[:].astype("int64")), data.vocab_size, name
            except (InfogeomError, OSError):
                continue
    except ImportError:
        pass
    return torch.randint(0, 65, (200_000,), generator=torch.Generator().manual_seed(0)), 65, "random"


def get_batch(tokens: torch.Tensor, B: int, T: int, gen: torch.Generator, device: str):
    i = torch.randint(0, tokens.numel() - T - 1, (B,), generator=gen)
    x = torch.stack([tokens[j:j + T] for j in i.tolist()])
    y = torch.stack([tokens[j + 1:j + T + 1] for j in i.tolist()])
    return x.to(device), y.to(device)


def train(model: GPT, tokens: torch.Tensor, steps: int, B: int, T: int, gen: torch.Generator,
          device: str) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    model.train()
    loss = torch.tensor(float("nan"))
    for _ in tqdm(range(steps), desc="AdamW", leave=False):
        x, y = get_batch(tokens, B, T, gen, device)
        loss = lm_loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()
    return loss.item()


def interleaved_medians(fns: dict, reps: int, device: str) -> dict:
    """Median seconds of each function, timed round-robin (one call of each per round, after one warm-up
    round) so that background load affects all of them alike."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(reps + 1):
        for k, fn in fns.items():
            if device == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            fn()
            if device == "cuda":
                torch.cuda.synchronize()
            if r:
                times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def time_products(model: GPT, batch, reps: int, device: str) -> dict:
    """Seconds of one gradient (sdpa and math attention), FVP and HVP (setup and per product) on ``batch``."""
    params = [p for p in model.parameters() if p.requires_grad]
    v = torch.randn(sum(p.numel() for p in params), generator=torch.Generator().manual_seed(1)).to(device)

    def gradient():
        torch.autograd.grad(lm_loss(model(batch[0]), batch[1]), params)

    def gradient_math():
        with curvature_mode(model):
            gradient()

    fisher = FisherOperator(model, batch)
    hess = HessianOperator(model, batch)
    return interleaved_medians({
        "gradient_sdpa": gradient, "gradient_math": gradient_math,
        "fvp": lambda: fisher.matvec(v), "fvp_setup": lambda: FisherOperator(model, batch),
        "hvp": lambda: hess.matvec(v), "hvp_setup": lambda: HessianOperator(model, batch),
    }, reps, device)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller report model, fewer steps and repetitions")
    ap.add_argument("--steps", type=int, default=None, help="AdamW steps between the two reports")
    ap.add_argument("--corpus", default="shakespeare")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/results/fisher.json")
    args = ap.parse_args(argv)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    tokens, vocab, corpus = load_tokens(args.corpus)
    # report model: the exact Fisher is dense (float64), so it must stay at a few thousand parameters
    n_layer, T, B = (1, 16, 4) if args.quick else (2, 32, 8)
    steps = args.steps if args.steps is not None else (100 if args.quick else 600)
    cfg = GPTConfig(vocab_size=vocab, block_size=T, n_layer=n_layer, n_head=2, n_embd=16, attention="math")
    model = GPT(cfg).to(args.device)
    batch = get_batch(tokens, B, T, torch.Generator().manual_seed(args.seed + 1), args.device)
    results = {"corpus": corpus, "vocab_size": vocab,
               "report_model": vars(cfg) | {"params": model.num_parameters()},
               "report_batch": [B, T], "adamw_steps": steps, "machine": platform.platform(),
               "torch": torch.__version__, "device": args.device, "reports": {}}
    print(f"report model: {model.num_parameters()} parameters ({n_layer} layer(s), width 16, context {T}), "
          f"{corpus} char corpus, vocab {vocab}, report batch {B}x{T}")
    for stage in ("init", "trained"):
        if stage == "trained":
            last = train(model, tokens, steps, 16, T, gen, args.device)
            print(f"\nafter {steps} AdamW steps (lr 3e-3, batch 16x{T}): train loss {last:.3f}")
        rep = approximation_report(model.to(torch.float64), batch, rank=50, verbose=False)
        model.to(torch.float32)
        print(format_report(rep))
        results["reports"][stage] = rep
    # timing on the default small model
    tcfg = GPTConfig(vocab_size=vocab)
    tmodel = GPT(tcfg).to(args.device).eval()
    tB, tT, reps = (8, 64, 7) if args.quick else (16, tcfg.block_size, 11)
    tbatch = get_batch(tokens, tB, tT, torch.Generator().manual_seed(args.seed + 2), args.device)
    times = time_products(tmodel, tbatch, reps, args.device)
    results["timing_model"] = vars(tcfg) | {"params": tmodel.num_parameters(), "batch": [tB, tT],
                                            "reps": reps}
    results["timing_seconds"] = times
    g = times["gradient_sdpa"]
    print(f"\ntiming: default GPTConfig model ({tmodel.num_parameters()} parameters), batch {tB}x{tT}, "
          f"{args.device}, median of {reps} interleaved rounds")
    print("| product | seconds | × one gradient (sdpa) |\n|---|---:|---:|")
    labels = {"gradient_sdpa": "gradient (sdpa attention)", "gradient_math": "gradient (math attention)",
              "fvp": "Fisher-vector product", "fvp_setup": "FisherOperator setup (forward + vjp graph)",
              "hvp": "Hessian-vector product", "hvp_setup": "HessianOperator setup (grad with graph)"}
    for k, label in labels.items():
        print(f"| {label} | {times[k]:.4f} | {times[k] / g:.2f} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(f"\nsaved {out}")


if __name__ == "__main__":
    main()
