"""E4 — sharpness and generalization (Keskar et al. 2017; Dinh et al. 2017; Jiang et al. 2020; Andriushchenko et
al. 2023).

Setting: a ladder GPT on the first ``chars`` characters of Shakespeare's training split (multi-epoch, so the
generalization gap val loss − train loss is real), trained at a constant lr (10-step warmup, grad clip 1) until
its train loss — on fixed batches of the subset, checked every ``check_every`` steps — is ≤ ``target`` (Jiang et
al.'s control: every model is compared at the same train loss) or ``max_steps`` (then ``reached`` is False and
the run is left out of the correlations). Grid: lr (3 per optimizer) × batch × weight decay × {AdamW, SGD with
momentum 0.9}; replicates (more seeds) on every k-th config (6 of 36 in full); all configs of a replicate share
one initialization. The full profile's target is 2.0 nats and its token cap 5M (a 2.5M cap left 29 of 48 runs
short of the target in the first full run, 2026-12-06; at 5M 20 of 48 stay short: SGD-m at batch 128, AdamW at
its largest lr, SGD-m at batch 8 with weight decay; E4 then took 13 of the full study's ≈ 55 min).

Measures, at the stopped model, on one fixed batch of the subset (the same for every run): λ_max(H) (Lanczos),
tr H and tr F (Hutchinson), SAM and ASAM ε-sharpness (ρ = 0.05 and 0.5, one ascent step), the Fisher–Rao norm
(:func:`fisher_rao_norm`, Liang et al. 2019: ‖θ‖²_FR = θᵀFθ with F the *exact* Fisher of the batch — one
Fisher-vector product, no damping, no solve), ‖θ − θ₀‖, the noise scale B_simple
(per-sequence gradients) and d_eff(λ) = tr F(F + λ)⁻¹ (SLQ, λ = 1e-3). Statistics: Kendall τ-b of each measure
against the gap over configs with BCa CIs, and Jiang's granulated Ψ with a BCa CI from resampling configs.

Dinh test: on one trained model (float64), the function-preserving rescalings of every attention block
W_q ← αW_q, W_k ← W_k/α (q·k unchanged) and W_v ← αW_v, W_o ← W_o/α (biases of q, k, v alike): the logits must
not change, λ_max(H) moves (the rescaling is linear, θ' = Sθ, so H ↦ S⁻¹HS⁻¹ exactly), while the Fisher–Rao
norm (F ↦ S⁻¹FS⁻¹ and θ ↦ Sθ, so θᵀFθ is exactly invariant) and ASAM with η = 0 (invariant to per-coordinate
scaling) should not.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

import numpy as np
import torch

from ...curvature import (
    eigsh,
    epsilon_sharpness,
    gradient_noise_scale,
    hutchinson,
    lanczos_quadrature,
)
from ...data import prepare_data
from ...geometry import FisherOperator, HessianOperator
from ...geometry.functional import select_parameters
from ...models.gpt import GPT, lm_loss
from ...operators import flatten, rademacher
from ...optim import build_optimizer
from .. import stats
from ..spec import Cell, Claim, Experiment, Section
from .common import savefig
from .e2 import _gpt
from .e6 import save_data

FN = "infogeom.study.experiments.e4:"
LRS = {"adamw": (3e-3, 1e-2, 3e-2), "sgd": (0.03, 0.1, 0.3)}
MEASURES = ("lambda_max", "tr_H", "tr_F", "sam", "asam", "fisher_rao", "dist_init", "noise_b_simple", "d_eff")
LABELS = {"lambda_max": "λ_max(H)", "tr_H": "tr H", "tr_F": "tr F", "sam": "SAM ε-sharpness",
          "asam": "ASAM ε-sharpness", "fisher_rao": "Fisher–Rao norm θᵀFθ", "dist_init": "‖θ − θ₀‖",
          "noise_b_simple": "noise scale B_simple", "d_eff": "d_eff(1e-3)"}
AXES = ("lr", "batch", "wd", "optimizer")
PROFILES = {
    "quick": {"size": "19.6k", "chars": 20_000, "block": 64, "target": 2.5, "max_steps": 800, "check_every": 20,
              "lr_idx": [1, 2], "batches": [8, 32], "wds": [0.0, 0.1], "optimizers": ["adamw", "sgd"],
              "replicated": 0, "seeds": 1, "measure_batch": 8, "probes": 4, "slq_steps": 12,
              "dinh_alphas": [1.0, 3.0, 10.0], "tokens_to_target": 4e5},
    "full": {"size": "114k", "chars": 200_000, "block": 64, "target": 2.0, "max_steps": 4000, "check_every": 50,
             "lr_idx": [0, 1, 2], "batches": [8, 32, 128], "wds": [0.0, 0.1], "optimizers": ["adamw", "sgd"],
             "replicated": 6, "seeds": 3, "measure_batch": 8, "probes": 8, "slq_steps": 24,
             "dinh_alphas": [1.0, 1.5, 3.0, 10.0, 30.0], "tokens_to_target": 1e6, "max_tokens": 5e6},
}
MEASURE_SEED = 12345
#: SGD's weight decay is coupled L2 (p ← p − η(g + λp)), amplified 1/(1 − β) = 10× by momentum 0.9 and applied at a
#: 10× larger lr than AdamW's decoupled decay: λ_SGD = 0.01·λ gives the same per-step shrink at the middle lrs
#: (measured: SGD at λ = 0.1 never reaches the quick target; at 0.001 it does, like λ = 0)
SGD_WD_SCALE = 0.01
#: estimated seconds per 1k training tokens (one thread, block 64) and per curvature product; ``tokens_to_target``:
#: the tokens a batch-32 run needs to reach the target (quick: ≈ 4e5 measured; full: AdamW lr 1e-2 wd 0.1 reached
#: 1.79 after 1.5M tokens in 192 s at load 6 ≈ 2.4× slowdown, so ≈ 1e6 at 2.0 is a guess); ``max_tokens`` caps
#: every run (max_steps = min(max_steps, max_tokens / (batch·block))): a run that misses the target by then is
#: dropped from the correlations and counted
STEP_S = {"19.6k": 0.02, "114k": 0.05}
MATVEC_S = {"19.6k": 0.03, "114k": 0.06}


def subset(chars: int):
    """Shakespeare (char level) with the training split cut to its first ``chars`` tokens."""
    data = prepare_data("shakespeare", "char")
    return dataclasses.replace(data, train=data.train[:chars])


def fixed_batches(data, split: str, n: int, batch: int, block: int, seed: int) -> list:
    g = torch.Generator().manual_seed(seed)
    return [data.get_batch(split, batch, block, g) for _ in range(n)]


@torch.no_grad()
def mean_loss(model: torch.nn.Module, batches: list) -> float:
    model.eval()
    out = float(np.mean([float(lm_loss(model(x), y)) for x, y in batches]))
    model.train()
    return out


def train_to_loss(params: dict, seed: int, data) -> tuple[torch.nn.Module, dict]:
    """Train until the subset's train loss (8 fixed batches of 16) is ≤ ``target`` or ``max_steps``."""
    model = _gpt(params["size"], seed)
    opt_name, lr = params["optimizer"], LRS[params["optimizer"]][params["lr_idx"]]
    sgd = opt_name == "sgd"
    opt = build_optimizer(opt_name, model, lr, params["wd"] * (SGD_WD_SCALE if sgd else 1.0),
                          **({"momentum": 0.9} if sgd else {}))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 10))
    train_eval = fixed_batches(data, "train", 8, 16, params["block"], MEASURE_SEED + 1)
    val_eval = fixed_batches(data, "val", 8, 16, params["block"], MEASURE_SEED + 2)
    g = torch.Generator().manual_seed(seed)
    steps, train_loss, curve = 0, math.inf, []
    while steps < params["max_steps"]:
        x, y = data.get_batch("train", params["batch"], params["block"], g)
        loss = lm_loss(model(x), y)
        if not math.isfinite(loss.item()):
            break
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        steps += 1
        if steps % params["check_every"] == 0:
            train_loss = mean_loss(model, train_eval)
            curve.append((steps, train_loss))
            if train_loss <= params["target"]:
                break
    val = mean_loss(model, val_eval)
    return model, {"steps": steps, "lr": lr, "train_loss": train_loss, "val_loss": val, "gap": val - train_loss,
                   "reached": train_loss <= params["target"], "curve": curve}


def measure(model: torch.nn.Module, batch, theta0: list[torch.Tensor] | None, params: dict,
            g: torch.Generator) -> dict:
    """Every sharpness/geometry measure of E4 (module doc) on ``batch``."""
    H, F = HessianOperator(model, batch), FisherOperator(model, batch)
    out = {"lambda_max": float(eigsh(H, k=1, tol=1e-3, generator=g, residuals=False).values[0]),
           "tr_H": hutchinson(H, params["probes"], g).value, "tr_F": hutchinson(F, params["probes"], g).value,
           "sam": epsilon_sharpness(model, batch, rho=0.05).value,
           "asam": epsilon_sharpness(model, batch, rho=0.5, adaptive=True).value}
    out["fisher_rao"] = fisher_rao_norm(model, batch)
    if theta0 is not None:
        out["dist_init"] = float(torch.sqrt(sum(((p.detach() - q) ** 2).sum() for p, q in
                                                zip(model.parameters(), theta0))))
    out["noise_b_simple"] = gradient_noise_scale(model, batch, with_hessian=False).b_simple
    probes = rademacher((F.dim, params["probes"]), F.dtype, F.device, g)
    nodes, weights = lanczos_quadrature(F, probes, params["slq_steps"], g)
    lam = nodes.clamp_min(0)
    out["d_eff"] = F.dim * float((weights * lam / (lam + 1e-3)).sum(1).mean())
    return out


def fisher_rao_norm(model: torch.nn.Module, batch) -> float:
    """Liang et al. 2019's Fisher–Rao norm ‖θ‖²_FR = θᵀFθ = (1/N) Σ_n (J_nθ)ᵀ(diag p_n − p_n p_nᵀ)(J_nθ), F the exact
    Fisher of ``batch`` (:class:`FisherOperator`, normalized like the mean token loss) over every trainable
    parameter: one Fisher-vector product. Invariant under every function-preserving linear reparameterization
    θ' = Sθ (F' = S⁻ᵀFS⁻¹), e.g. the attention rescalings of the Dinh test."""
    F = FisherOperator(model, batch)
    theta = flatten([p.detach() for p in select_parameters(model).values()]).to(F.dtype)
    return float(theta @ F.matvec(theta))


def measure_batch(data, params: dict):
    return data.get_batch("train", params["measure_batch"], params["block"],
                          torch.Generator().manual_seed(MEASURE_SEED))


def save_model(model: torch.nn.Module, path: Path) -> None:
    """Atomic ``torch.save`` of the state dict."""
    tmp = path.with_suffix(".tmp")
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, path)


def run_config(params: dict, seed: int, workdir: Path, inputs: dict) -> dict:
    """Train one config to the target train loss, save ``model.pt``, measure everything."""
    data = subset(params["chars"])
    model, res = train_to_loss(params, seed, data)
    save_model(model, workdir / "model.pt")
    theta0 = [p.detach() for p in _gpt(params["size"], seed).parameters()]
    model.eval()
    res["measures"] = measure(model, measure_batch(data, params), theta0, params, torch.Generator().manual_seed(seed))
    return res


# --- the Dinh test ---------------------------------------------------------------------------------------------

@torch.no_grad()
def rescale_attention(model: GPT, alpha: float, kind: str) -> GPT:
    """Apply the function-preserving rescaling ``kind`` ∈ {"qk", "vo"} with factor α to every block in place:
    qk: W_q, b_q ×α and W_k, b_k ×1/α; vo: W_v, b_v ×α and the output projection's weight ×1/α."""
    if kind not in ("qk", "vo"):
        raise ValueError(f"kind must be 'qk' or 'vo', got {kind!r}")
    for block in model.blocks:
        attn = block.attn
        C = attn.c_proj.weight.shape[0]
        w, b = attn.c_attn.weight, attn.c_attn.bias
        first, second = (slice(0, C), slice(C, 2 * C)) if kind == "qk" else (slice(2 * C, 3 * C), None)
        w[first] *= alpha
        if b is not None:
            b[first] *= alpha
        if kind == "qk":
            w[second] /= alpha
            if b is not None:
                b[second] /= alpha
        else:
            attn.c_proj.weight /= alpha
    return model


def run_dinh(params: dict, seed: int, workdir: Path, inputs: dict) -> dict:
    """λ_max, Fisher–Rao, SAM and ASAM (η = 0) of the trained model under each rescaling (module doc)."""
    src = next(iter(inputs.values()))
    data = subset(params["chars"])
    batch = measure_batch(data, params)
    rows = []
    for kind in ("qk", "vo"):
        for alpha in params["alphas"]:
            model = _gpt(params["size"], 0).double()
            model.load_state_dict({k: v.double() for k, v in torch.load(Path(src["dir"]) / "model.pt",
                                                                          weights_only=True).items()})
            model.eval()
            with torch.no_grad():
                ref = model(batch[0])
            rescale_attention(model, alpha, kind)
            with torch.no_grad():
                logit_err = float((model(batch[0]) - ref).abs().max() / ref.abs().max())
            g = torch.Generator().manual_seed(seed)
            H = HessianOperator(model, batch)
            rows.append({"kind": kind, "alpha": alpha, "logit_rel_err": logit_err,
                         "lambda_max": float(eigsh(H, k=1, tol=1e-4, generator=g, residuals=False).values[0]),
                         "fisher_rao": fisher_rao_norm(model, batch),
                         "sam": epsilon_sharpness(model, batch, rho=0.05).value,
                         "asam_eta0": epsilon_sharpness(model, batch, rho=0.5, adaptive=True, eta=0.0).value})
    return {"rows": rows}


# --- plan -----------------------------------------------------------------------------------------------------

def config_name(c: dict) -> str:
    return f"{c['optimizer']}/lr{c['lr_idx']}/b{c['batch']}/wd{c['wd']:g}"


def grid(profile: str) -> list[dict]:
    p = PROFILES[profile]
    return [{"optimizer": o, "lr_idx": i, "batch": b, "wd": w} for o in p["optimizers"] for i in p["lr_idx"]
            for b in p["batches"] for w in p["wds"]]


def plan(profile: str) -> list[Cell]:
    p = PROFILES[profile]
    shared = {k: p[k] for k in ("size", "chars", "block", "target", "max_steps", "check_every", "measure_batch",
                                "probes", "slq_steps")}
    measure_s = MATVEC_S[p["size"]] * (42 + 3 * p["probes"] + p["slq_steps"] * p["probes"])
    cells = []
    configs = grid(profile)
    k = p["replicated"]
    replicated = {round(j * (len(configs) - 1) / max(1, k - 1)) for j in range(k)}  # spread over the grid
    for i, c in enumerate(configs):
        seeds = p["seeds"] if i in replicated else 1
        steps = min(p["max_steps"], int(p.get("max_tokens", 1e12) // (c["batch"] * p["block"])))
        for r in range(seeds):
            tokens = min(steps * c["batch"] * p["block"], p["tokens_to_target"] * max(1.0, c["batch"] / 32))
            est = 2.0 + measure_s + STEP_S[p["size"]] * tokens / 1000
            cells.append(Cell("E4", f"e4/train/{config_name(c)}/r{r}", FN + "run_config",
                              {**shared, **c, "max_steps": steps, "pair_key": "e4/train"}, replicate=r,
                              priority=1 if r == 0 else 3,
                              est_seconds=est))
    src = f"e4/train/{config_name(configs[0])}/r0"
    cells.append(Cell("E4", "e4/dinh", FN + "run_dinh", {**shared, "alphas": p["dinh_alphas"]}, priority=2,
                      needs=(src,), est_seconds=2.0 + 2 * len(p["dinh_alphas"]) * 2 * MATVEC_S[p["size"]] * 45))
    return cells


# --- analysis -------------------------------------------------------------------------------------------------

def _bounds(ci: stats.Interval) -> tuple[float, float]:
    """(lo, hi), with a degenerate interval (every resample equal, e.g. τ = ±1) read as [value, value]."""
    return (ci.lo, ci.hi) if ci.method != "degenerate" else (ci.value, ci.value)


def granulated_ci(configs: list[dict], m: list[float], t: list[float]) -> tuple[dict, stats.Interval]:
    res = stats.granulated_kendall(configs, m, t, AXES)
    return res, stats.granulated_kendall_ci(configs, m, t, AXES, n_resamples=1000)


def config_table(results: list[tuple[Cell, dict]]) -> tuple[list[dict], dict[str, list[float]], list[float],
                                                              list[float], int]:
    """Per config (replicates averaged; runs that missed the target dropped): axes, measures, gaps, val losses."""
    by: dict[str, list[dict]] = {}
    axes: dict[str, dict] = {}
    dropped = 0
    for c, r in results:
        if not r["reached"]:
            dropped += 1
            continue
        key = config_name(c.params)
        by.setdefault(key, []).append(r)
        axes[key] = {"lr": c.params["lr_idx"], "batch": c.params["batch"], "wd": c.params["wd"],
                     "optimizer": c.params["optimizer"]}
    keys = sorted(by)
    meas = {m: [float(np.mean([r["measures"][m] for r in by[k]])) for k in keys] for m in MEASURES}
    gap = [float(np.mean([r["gap"] for r in by[k]])) for k in keys]
    val = [float(np.mean([r["val_loss"] for r in by[k]])) for k in keys]
    return [axes[k] for k in keys], meas, gap, val, dropped


def analyze(results: list[tuple[Cell, dict]], figdir: Path) -> Section:
    import matplotlib.pyplot as plt

    cfg_runs = [(c, r) for c, r in results if c.fn.endswith("run_config")]
    dinh = [r for c, r in results if c.fn.endswith("run_dinh")]
    claims, figures, tables, numbers = [], [], [], {}
    configs, meas, gap, val, dropped = config_table(cfg_runs)
    numbers["configs"] = len(configs)
    numbers["dropped_not_reaching_target"] = dropped
    taus, psis = {}, {}
    if len(configs) >= 3:
        rows = []
        for m in MEASURES:
            taus[m] = stats.kendall_ci(meas[m], gap)
            res, psis[m] = granulated_ci(configs, meas[m], gap)
            tv = stats.kendall_ci(meas[m], val)
            rows.append([LABELS[m], stats.fmt(taus[m]), stats.fmt(psis[m]),
                         ", ".join(f"{a} {v:+.2f}" for a, v in res["per_axis"].items()), stats.fmt(tv)])
        numbers["tau_gap"] = {m: t.to_dict() for m, t in taus.items()}
        numbers["psi_gap"] = {m: p.to_dict() for m, p in psis.items()}
        tables.append((f"Measures vs the generalization gap over {len(configs)} configs at a common train loss "
                       "(Kendall τ-b and granulated Ψ, BCa CIs over configs)",
                       ["measure", "τ(gap)", "Ψ(gap)", "ψ per axis", "τ(val loss)"], rows))
        fig, ax = plt.subplots(figsize=(9, 4))
        x = np.arange(len(MEASURES))
        for off, (name, d) in ((-0.2, ("Kendall τ", taus)), (0.2, ("granulated Ψ", psis))):
            v = [d[m].value for m in MEASURES]
            lo = [max(0.0, d[m].value - d[m].lo) if math.isfinite(d[m].lo) else 0 for m in MEASURES]
            hi = [max(0.0, d[m].hi - d[m].value) if math.isfinite(d[m].hi) else 0 for m in MEASURES]
            ax.bar(x + off, v, 0.4, yerr=[lo, hi], capsize=2, label=f"{name} (95% BCa CI over configs)")
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xticks(x, [LABELS[m] for m in MEASURES], rotation=30, ha="right", fontsize=8)
        ax.set(ylabel="rank correlation with the gap (dimensionless)",
               title=f"E4: sharpness measures vs generalization gap ({len(configs)} configs)")
        ax.legend(fontsize=8)
        figures.append((savefig(fig, figdir, "e4_tau_psi.png"),
                        "Kendall τ and granulated Ψ of each measure against the gap, with CIs. Data: " + save_data(
                            figdir, "e4_tau_psi.json", {"configs": configs, "measures": meas, "gap": gap,
                                                        "val_loss": val})))
        lam = taus["lambda_max"]
        claims.append(Claim(
            "E4.1", "Flat minima generalize: λ_max(H) ranks the generalization gap",
            "consistent" if _bounds(lam)[0] > 0 else "inconsistent" if _bounds(lam)[1] < 0.2 else "inconclusive",
            f"τ(λ_max, gap) = {stats.fmt(lam)}; Ψ = {stats.fmt(psis['lambda_max'])}",
            "raw sharpness correlates poorly in transformers; spectral measures can correlate negatively",
            "Keskar et al. 2017; Jiang et al. 2020; Andriushchenko et al. 2023",
            "consistent if the CI of τ(λ_max, gap) is above 0; inconsistent if its upper end is below 0.2"))
        sharp = ("lambda_max", "sam", "asam", "fisher_rao")
        best = max(sharp, key=lambda m: psis[m].value if math.isfinite(psis[m].value) else -math.inf)
        claims.append(Claim(
            "E4.2", "Magnitude-aware sharpness (ASAM) ranks the gap better than raw sharpness",
            "consistent" if best == "asam" and _bounds(psis["asam"])[0] > 0 else
            "inconsistent" if psis["asam"].value < min(psis["lambda_max"].value, psis["sam"].value) else
            "inconclusive",
            "Ψ(gap): " + ", ".join(f"{LABELS[m]} {psis[m].value:+.2f}" for m in sharp),
            "magnitude-aware and PAC-Bayes sharpness rank best", "Jiang et al. 2020; Kwon et al. 2021",
            "consistent if ASAM has the largest Ψ among λ_max, SAM, ASAM, Fisher–Rao and its CI is above 0; "
            "inconsistent if its Ψ is below both λ_max's and SAM's"))
        lr_tau = stats.granulated_kendall(configs, meas["lambda_max"], [c["lr"] for c in configs], AXES)
        psi_lr = lr_tau["per_axis"].get("lr", math.nan)
        numbers["psi_lambda_max_vs_lr"] = psi_lr
        claims.append(Claim(
            "E4.3", "In transformers sharpness tracks the learning rate more than the gap",
            "consistent" if abs(psi_lr) > abs(lam.value) and _bounds(lam)[0] <= 0 <= _bounds(lam)[1] else
            "inconsistent" if abs(psi_lr) < abs(lam.value) else "inconclusive",
            f"ψ_lr(λ_max vs lr) = {psi_lr:+.2f}; τ(λ_max, gap) = {stats.fmt(lam)}",
            "λ_max falls with lr (edge of stability); weak correlation with the gap", "Andriushchenko et al. 2023",
            "consistent if |ψ_lr(λ_max, lr)| > |τ(λ_max, gap)| and the CI of τ(λ_max, gap) contains 0; "
            "inconsistent if |ψ_lr| < |τ|"))
        pairs = _batch_pairs(configs, meas["lambda_max"], gap)
        if pairs:
            dl = stats.paired_ratio([a for a, _, _, _ in pairs], [b for _, b, _, _ in pairs])
            dg = stats.paired_difference([c for _, _, c, _ in pairs], [d for _, _, _, d in pairs])
            numbers["keskar"] = {"lambda_ratio": dl.to_dict(), "gap_difference": dg.to_dict()}
            claims.append(Claim(
                "E4.4", "Large batches find sharper minima with a larger gap",
                "consistent" if _bounds(dl.interval)[0] > 1 and _bounds(dg.interval)[0] > 0 else
                "inconsistent" if _bounds(dl.interval)[1] < 1 or _bounds(dg.interval)[1] < 0 else "inconclusive",
                f"largest vs smallest batch, matched on the other axes ({dl.n} pairs): λ_max ratio "
                f"{stats.fmt(dl.interval)}, gap difference {stats.fmt(dg.interval)} nats",
                "large batch → sharper minima, larger gap", "Keskar et al. 2017",
                "consistent if the λ_max ratio CI is above 1 and the gap-difference CI above 0; inconsistent if "
                "either lies below (1 or 0)"))
    if dinh:
        _dinh_section(dinh[0], figdir, claims, figures, tables, numbers)
    quick = any(c.params.get("size") == PROFILES["quick"]["size"] for c, _ in cfg_runs)
    text = (("Quick profile (smoke test): a 19.6k GPT on 20k characters, 16 configs (AdamW and SGD-m), 1 seed; "
             "the τ/Ψ CIs are wide at this size." if quick else "Full profile: a 114k GPT on 200k characters, 36 "
             "configs, 3 seeds on 6 of them.") + f" Runs that missed the target train loss: {dropped} (left out).")
    return Section("E4", EXPERIMENT.title, claims, figures, tables, numbers, text)


def _batch_pairs(configs, lam, gap):
    """(λ_max large batch, λ_max small batch, gap large, gap small) for configs equal but for the batch."""
    bs = sorted({c["batch"] for c in configs})
    if len(bs) < 2:
        return []
    index = {tuple(sorted(c.items())): i for i, c in enumerate(configs)}
    out = []
    for i, c in enumerate(configs):
        if c["batch"] == bs[-1]:
            j = index.get(tuple(sorted({**c, "batch": bs[0]}.items())))
            if j is not None:
                out.append((lam[i], lam[j], gap[i], gap[j]))
    return out


def _dinh_section(r: dict, figdir: Path, claims, figures, tables, numbers) -> None:
    import matplotlib.pyplot as plt

    rows = r["rows"]
    numbers["dinh"] = rows
    tables.append(("Dinh test: function-preserving rescalings of attention (float64)",
                   ["rescaling", "α", "max rel. logit change", "λ_max(H)", "Fisher–Rao", "SAM", "ASAM (η = 0)"],
                   [[x["kind"], f"{x['alpha']:g}", f"{x['logit_rel_err']:.1e}", f"{x['lambda_max']:.4g}",
                     f"{x['fisher_rao']:.4g}", f"{x['sam']:.3g}", f"{x['asam_eta0']:.3g}"] for x in rows]))

    def spread(key):
        """max over kinds of max/min over α of the measure (1 = unchanged)."""
        out = 1.0
        for kind in ("qk", "vo"):
            v = [abs(x[key]) for x in rows if x["kind"] == kind]
            out = max(out, max(v) / max(min(v), 1e-300))
        return out

    lam, fr, asam = spread("lambda_max"), spread("fisher_rao"), spread("asam_eta0")
    err = max(x["logit_rel_err"] for x in rows)
    numbers["dinh_spread"] = {"lambda_max": lam, "fisher_rao": fr, "asam_eta0": asam, "logit_rel_err": err}
    claims.append(Claim(
        "E4.5", "Raw sharpness is reparameterizable; the Fisher–Rao norm is not (Dinh test, measured)",
        "consistent" if err <= 1e-9 and lam >= 2 and fr <= 1.05 else
        "inconsistent" if err <= 1e-9 and (lam < 1.05 or fr >= lam) else "inconclusive",
        f"max/min over α: λ_max {lam:.3g}×, Fisher–Rao {fr:.3g}×, ASAM(η=0) {asam:.3g}×; logits change ≤ {err:.1e}",
        "λ_max moves under function-preserving rescalings; the Fisher–Rao norm does not", "Dinh et al. 2017",
        "consistent if logits change ≤ 1e-9 (relative), λ_max moves ≥ 2× and Fisher–Rao ≤ 5%; inconsistent if "
        "λ_max does not move (< 5%) or Fisher–Rao moves as much"))
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, kind in enumerate(("qk", "vo")):
        sub = [x for x in rows if x["kind"] == kind]
        al = [x["alpha"] for x in sub]
        for key, ls in (("lambda_max", "-"), ("fisher_rao", "--"), ("asam_eta0", ":")):
            v = np.array([x[key] for x in sub])
            ax.loglog(al, v / v[0], ls, marker="o", color=f"C{i}", label=f"{kind}: {key}")
    ax.set(xlabel="rescaling factor α", ylabel="measure / measure at α = 1",
           title="Dinh test (one trained model, float64)")
    ax.legend(fontsize=7)
    figures.append((savefig(fig, figdir, "e4_dinh.png"), "Function-preserving attention rescalings: λ_max moves, "
                    "the invariant measures should not. Data: " + save_data(figdir, "e4_dinh.json", {"rows": rows})))


EXPERIMENT = Experiment(id="E4", title="Sharpness and generalization", claim="Flat minima generalize", plan=plan,
                        analyze=analyze,
                        model_note="its grid trains ladder GPTs from one seeded initialization on a character "
                                   "subset sized to their generalization gap")
