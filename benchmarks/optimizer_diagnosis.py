"""Diagnosis of the Kronecker-factored steps, in angles and loss decrease per step (no timing).

The default GPT is trained with AdamW (lr 8e-3, seed 0) for ``--warm-steps`` steps (the state ``--stale`` steps
earlier is kept too). At that point, for a layer ℓ (all other parameters fixed), with X the gradient of one
training batch (packed [∇W | ∇b]) and F the *exact* Fisher of the layer's block on ``--fisher-seqs`` sequences
(:class:`~infogeom.geometry.fisher.FisherOperator`, ``names`` = the layer's weight and bias), each candidate
direction d is scored by (``--grad-batches`` K: X the mean gradient of K batches, a momentum-like average)

- cos(d, d*): cosine with the exact damped natural gradient d* = (F + λI)⁻¹ X (conjugate gradient on F);
- q = (gᵀd)² / (2 dᵀF d): the decrease of the Fisher quadratic model at d's optimal scale α* = gᵀd / dᵀF d
  (scale-free: d* maximizes it when λ → 0);
- ΔL: the actual decrease of the mean loss on ``--eval-batches`` *other* training batches after θ_ℓ ← θ_ℓ − α* d,
  and ρ = ΔL / q (the Levenberg–Marquardt ratio at that step).

Candidates: SGD (d = X); Adam (X ⊘ √v, v the mean of X_b^{∘2} over the factor batches); Muon (U Vᵀ of X);
K-FAC (L ⊗ R + λI)⁻¹ X with true-Fisher (sampled-label) or empirical factors from ``--factor-batches`` batches;
EK-FAC as our optimizer (Adam's v in the eigenbasis of empirical factors) and as George et al. (the per-token
second moments of the true Fisher in the K-FAC eigenbasis, + λ); K-FAC with factors from ``--stale`` steps
earlier (staleness). λ = ``rel`` · ē_L ē_R (mean factor eigenvalues, i.e. ≈ the mean Fisher diagonal) over a
grid of ``rel``; the LM choice is the λ with ρ of the undamped-scale step (α = 1) closest to 1/2. The tied
embedding/head weight (AdamW in every optimizer today) is scored too: exact block, Adam, SGD, K-FAC of its
head use only and of both uses (head G⊗A plus embedding diag(counts)⊗G, solved by CG).

    python benchmarks/optimizer_diagnosis.py                   # ~15 min on 2 loaded cores
    python benchmarks/optimizer_diagnosis.py --layers blocks.1.mlp.c_fc --rels 1e-2

Prints a table per layer and writes ``benchmarks/results/optimizer_diagnosis.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from pathlib import Path

import torch
from optimizers import make_config  # benchmarks/optimizers.py
from tqdm import tqdm

from infogeom.data.cache import atomic_write
from infogeom.geometry.fisher import FisherOperator
from infogeom.geometry.kfac import ekfac_factors, kfac_factors
from infogeom.models.gpt import lm_loss
from infogeom.operators import from_eigenbasis, to_eigenbasis
from infogeom.operators.base import conjugate_gradient
from infogeom.operators.kronecker import pi_damped_grid
from infogeom.train.trainer import Trainer

RESULTS = Path(__file__).parent / "results"
TIED = "wte"


def warm_start(args) -> tuple[Trainer, dict]:
    """Train AdamW for ``warm_steps`` steps; returns the trainer and the model state ``stale`` steps earlier."""
    tmp = tempfile.mkdtemp(prefix="infogeom-diag-")
    cfg = make_config("adamw", 8e-3, "default", args.seed, tmp)
    cfg.max_steps, cfg.optim.warmup_steps = args.warm_steps, min(cfg.optim.warmup_steps, args.warm_steps)
    trainer = Trainer(cfg)
    stale = None
    for step in tqdm(range(args.warm_steps), desc="warm-up (AdamW)"):
        if step == args.warm_steps - args.stale:
            stale = {k: v.clone() for k, v in trainer.model.state_dict().items()}
        trainer.train_step()
    return trainer, stale


def batches(trainer: Trainer, n: int, seqs: int | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    cfg = trainer.config
    out = [trainer.data.get_batch("train", cfg.data.batch_size, cfg.data.block_size, trainer.data_generator)
           for _ in range(n)]
    return [(x[:seqs], y[:seqs]) for x, y in out] if seqs else out


class Layer:
    """One layer's parameters (weight [+ bias]) as a packed matrix X = [W | b] and a flat vector."""

    def __init__(self, model, name: str):
        self.model, self.name = model, name
        params = dict(model.named_parameters())
        self.wname = "wte.weight" if name == TIED else f"{name}.weight"
        self.bname = None if name == TIED else f"{name}.bias"
        self.params = [params[self.wname]] + ([params[self.bname]] if self.bname else [])
        self.names = [self.wname] + ([self.bname] if self.bname else [])

    def pack(self, parts: list[torch.Tensor]) -> torch.Tensor:
        return parts[0] if len(parts) == 1 else torch.cat([parts[0], parts[1][:, None]], 1)

    def unpack(self, X: torch.Tensor) -> list[torch.Tensor]:
        return [X] if not self.bname else [X[:, :-1], X[:, -1]]

    def grad(self, batch) -> torch.Tensor:
        loss = lm_loss(self.model(batch[0]), batch[1])
        return self.pack(list(torch.autograd.grad(loss, self.params)))

    @torch.no_grad()
    def loss_after(self, D: torch.Tensor, alpha: float, evals) -> float:
        saved = [p.clone() for p in self.params]
        for p, u in zip(self.params, self.unpack(D)):
            p.sub_(alpha * u)
        loss = sum(float(lm_loss(self.model(x), y)) for x, y in evals) / len(evals)
        for p, s in zip(self.params, saved):
            p.copy_(s)
        return loss


def flat(layer: Layer, X: torch.Tensor) -> torch.Tensor:
    return torch.cat([u.reshape(-1) for u in layer.unpack(X)])


def matrix(layer: Layer, v: torch.Tensor) -> torch.Tensor:
    parts, start = [], 0
    for p in layer.params:
        parts.append(v[start:start + p.numel()].reshape(p.shape))
        start += p.numel()
    return layer.pack(parts)


def kron_solve(L: torch.Tensor, R: torch.Tensor, X: torch.Tensor, lam: float) -> torch.Tensor:
    """(L ⊗ R + λI)⁻¹ X, i.e. the solution of L D R + λ D = X (L a vector: diagonal)."""
    eL, QL = (L, None) if L.ndim == 1 else torch.linalg.eigh(L)
    eR, QR = torch.linalg.eigh(R)
    eL, eR = eL.clamp_min(0), eR.clamp_min(0)
    return from_eigenbasis(to_eigenbasis(X, QL, QR) / (eL[:, None] * eR[None, :] + lam), QL, QR)


def pi_damped(L: torch.Tensor, R: torch.Tensor, X: torch.Tensor, damping: float) -> torch.Tensor:
    """The KFAC optimizer's direction (``damping_mode="pi"``): Q_L[(Q_Lᵀ X Q_R) ⊘ (e_L + √λ/π)(e_R + π√λ)]Q_Rᵀ."""
    eL, QL = (L, None) if L.ndim == 1 else torch.linalg.eigh(L)
    eR, QR = torch.linalg.eigh(R)
    grid = pi_damped_grid(eL.clamp_min(0), eR.clamp_min(0), damping)
    return from_eigenbasis(to_eigenbasis(X, QL, QR) / grid, QL, QR)


def mean_eig(L: torch.Tensor) -> float:
    return float(L.mean() if L.ndim == 1 else L.diagonal().mean())


def oriented(f, tied_embedding: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(L, R) with F X ≈ L X R for the packed X of this script (G, A for a Linear; diag(counts), G for a lookup)."""
    return (f.A, f.G) if tied_embedding else (f.G, f.A)


def score(layer: Layer, d: torch.Tensor, g: torch.Tensor, F: FisherOperator, d_star: torch.Tensor, evals,
          base_loss: float) -> dict:
    """cos with d*, quadratic-model decrease q at α*, held-out decrease ΔL and ρ at α*, ρ at α = 1."""
    v, gv = flat(layer, d), flat(layer, g)
    Fv = F.matvec(v)
    gd, dFd = float(gv @ v), float(v @ Fv)
    alpha = gd / dFd if dFd > 0 else 0.0
    q = gd * gd / (2 * dFd) if dFd > 0 else 0.0
    dl = base_loss - layer.loss_after(d, alpha, evals)
    q1 = gd - 0.5 * dFd  # model decrease of the unit step
    dl1 = base_loss - layer.loss_after(d, 1.0, evals)
    cos = float(v @ flat(layer, d_star) / (v.norm() * flat(layer, d_star).norm()))
    return {"cos": cos, "alpha": alpha, "q": q, "dL": dl, "rho": dl / q if q else math.nan,
            "q_unit": q1, "dL_unit": dl1, "rho_unit": dl1 / q1 if q1 else math.nan}


def exact_ng(layer: Layer, F: FisherOperator, g: torch.Tensor, lam: float, maxiter: int,
             x0: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
    """d* = (F + λI)⁻¹ X by CG to a relative residual 1e-4 (warm start ``x0``)."""
    x, it = conjugate_gradient(lambda v: F.matvec(v) + lam * v, flat(layer, g),
                               None if x0 is None else flat(layer, x0), tol=1e-4, maxiter=maxiter)
    return matrix(layer, x), it


def msign(X: torch.Tensor) -> torch.Tensor:
    U, _, Vh = torch.linalg.svd(X, full_matrices=False)
    return U @ Vh


def diagnose_layer(model, name: str, data: dict, stale_model, args) -> dict:
    layer = Layer(model, name)
    tied = name == TIED
    g = torch.stack([layer.grad(b) for b in data["grad"]]).mean(0)
    grads = [layer.grad(b) for b in data["factor"]]
    v = torch.stack(grads).square().mean(0)
    F = FisherOperator(model, data["fisher"], "exact", names=layer.names)
    gen = torch.Generator().manual_seed(args.seed)
    modules = ["lm_head"] if tied else [name]
    mc = kfac_factors(model, data["factor"], "reduce", "mc", generator=gen, modules=modules)["lm_head" if tied
                                                                                              else name]
    emp = kfac_factors(model, data["factor"], "reduce", "empirical", modules=modules)["lm_head" if tied else name]
    old_f = kfac_factors(stale_model, data["factor"], "reduce", "mc", generator=gen, modules=modules)
    old_f = old_f["lm_head" if tied else name]
    L, R = oriented(mc)
    scale = mean_eig(L) * mean_eig(R)
    with torch.no_grad():
        base = sum(float(lm_loss(model(x), y)) for x, y in data["eval"]) / len(data["eval"])
    out = {"layer": name, "params": sum(p.numel() for p in layer.params), "fisher_scale": scale, "rels": {}}
    eL_emp, QL_emp = torch.linalg.eigh(emp.G)
    eR_emp, QR_emp = torch.linalg.eigh(emp.A)
    vq = torch.stack([to_eigenbasis(x, QL_emp, QR_emp) for x in grads]).square().mean(0)
    if tied:
        emb = kfac_factors(model, data["factor"], "expand", "mc", generator=gen, modules=[TIED])[TIED]
    else:
        ek = ekfac_factors(model, data["factor"], "expand", "mc", generator=gen, modules=[name])[name]
    d_star = None
    for rel in sorted(args.rels, reverse=True):  # large λ first: each CG warm-starts from the previous
        lam = rel * scale
        d_star, iters = exact_ng(layer, F, g, lam, args.cg_iters, d_star)
        cands = {"exact NG": d_star, "SGD": g, "Adam": g / (v.sqrt() + 1e-8),
                 "K-FAC (true)": kron_solve(*oriented(mc), g, lam),
                 "K-FAC (optimizer: π-damped 1e-3)": pi_damped(*oriented(mc), g, 1e-3),
                 "K-FAC (empirical)": kron_solve(*oriented(emp), g, lam),
                 "K-FAC (true, stale)": kron_solve(*oriented(old_f), g, lam)}
        if tied:  # both uses of the tied weight: head G_h ⊗ A_h plus embedding diag(counts) ⊗ G_e, by CG
            Lh, Rh = oriented(mc)
            Le, Re = emb.A, emb.G

            def both(y, Lh=Lh, Rh=Rh, Le=Le, Re=Re, lam=lam):
                Y = matrix(layer, y)
                return flat(layer, Lh @ Y @ Rh + Le[:, None] * (Y @ Re) + lam * Y)

            x, _ = conjugate_gradient(both, flat(layer, g), tol=1e-4, maxiter=500)
            cands["K-FAC head+embedding"] = matrix(layer, x)
        else:
            cands["Muon"] = msign(g)
            cands["EK-FAC (ours: Adam v in emp. basis)"] = from_eigenbasis(
                to_eigenbasis(g, QL_emp, QR_emp) / (vq.sqrt() + 1e-8), QL_emp, QR_emp)
            QA, QG = ek.eigenbasis
            cands["EK-FAC (George: true moments)"] = from_eigenbasis(
                to_eigenbasis(g, QG, QA) / (ek.moments + lam), QG, QA)
        rows = {k: score(layer, d, g, F, d_star, data["eval"], base) for k, d in cands.items()}
        out["rels"][f"{rel:g}"] = {"lambda": lam, "cg_iters": iters, "rows": rows}
        print(f"\n{name} ({out['params']} params), λ = {rel:g}·ē_Lē_R = {lam:.3g}, CG {iters} it; "
              f"base loss {base:.4f}")
        print(f"{'direction':38s} {'cos(d,d*)':>9s} {'q(α*)':>10s} {'ΔL(α*)':>10s} {'ρ(α*)':>7s} "
              f"{'ΔL(α=1)':>10s} {'ρ(α=1)':>8s}")
        for k, r in rows.items():
            print(f"{k:38s} {r['cos']:9.3f} {r['q']:10.3e} {r['dL']:10.3e} {r['rho']:7.2f} {r['dL_unit']:10.3e} "
                  f"{r['rho_unit']:8.2f}")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--warm-steps", type=int, default=150)
    p.add_argument("--stale", type=int, default=20, help="K-FAC factors this many steps old (staleness)")
    p.add_argument("--layers", default="blocks.1.mlp.c_fc,blocks.1.attn.c_attn,wte",
                   help=f"comma-separated Linear module names; {TIED!r} = the tied embedding/head")
    p.add_argument("--rels", default="1e-2,1,10,100,1000", help="damping λ in units of ē_L ē_R")
    p.add_argument("--factor-batches", type=int, default=4)
    p.add_argument("--grad-batches", type=int, default=1, help="X = the mean gradient of this many batches")
    p.add_argument("--fisher-seqs", type=int, default=16, help="sequences in the exact-Fisher batch")
    p.add_argument("--eval-batches", type=int, default=4)
    p.add_argument("--cg-iters", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--out", type=Path, default=RESULTS / "optimizer_diagnosis.json")
    args = p.parse_args(argv)
    args.rels = [float(x) for x in args.rels.split(",")]
    if args.threads:
        torch.set_num_threads(args.threads)
    trainer, stale_state = warm_start(args)
    model = trainer.model
    model.eval()
    stale_model = make_stale(trainer, stale_state)
    data = {"grad": batches(trainer, args.grad_batches), "factor": batches(trainer, args.factor_batches),
            "fisher": batches(trainer, 1, args.fisher_seqs)[0], "eval": batches(trainer, args.eval_batches)}
    results = []
    for name in args.layers.split(","):  # saved after every layer
        results.append(diagnose_layer(model, name, data, stale_model, args))
        payload = json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "layers": results}, indent=1)
        atomic_write(args.out, lambda f, payload=payload: f.write(payload.encode()))
    trainer.close()
    print(f"wrote {args.out}")
    return 0


def make_stale(trainer: Trainer, state: dict):
    import copy

    stale = copy.deepcopy(trainer.model)
    stale.load_state_dict(state)
    stale.eval()
    return stale


if __name__ == "__main__":
    raise SystemExit(main())
