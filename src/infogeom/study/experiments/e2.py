"""E2 — curvature tracks training dynamics.

Edge of stability (Cohen et al. 2021, 2022): a ladder GPT trained full-batch on one fixed batch at a constant lr.
A pilot cell measures λ_max(H) at initialization; GD arms use η with 2/η = c·λ_pilot, c ∈ {0.5, 1.5, 4}; GD with
heavy-ball momentum 0.9 uses the middle η; Adam (β = (0.9, 0.999), no weight decay) two η. Every ``every`` steps
the optimizer's sharpness is measured by :func:`sharpness_of` — λ_max(H) by warm-started Lanczos for GD (the
previous top eigenvector is v0), λ₁(P⁻¹H) for Adam — and divided by the optimizer's stability threshold (2/η,
(2+2β)/η, (2+2β₁)/((1−β₁)η)). Verdict per arm: the median ratio over the second half of training in [0.9, 1.2].

Training phases: one training cell (through the trainer) checkpoints at 0, 1, 3, 10, 30, 100% of its steps; one
measurement cell per checkpoint computes tr F, tr of the empirical Fisher, the K-FAC trace (Linear/Embedding
weights), λ_max of H and F, d_eff(λ) = Σ λᵢ/(λᵢ+λ) = tr F(F+λ)⁻¹ by SLQ, the damped condition number
(λ₁+λ)/(λ_min+λ) (SLQ's smallest node, clamped at 0), and the fraction ‖V_kᵀg‖²/‖g‖² of the gradient in the
top-k eigenspace of H.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from ...curvature import eigsh, hutchinson, lanczos_quadrature, optimizer_sharpness
from ...data import prepare_data
from ...geometry import FisherOperator, HessianOperator, KFACOperator
from ...models.gpt import lm_loss
from ...operators import rademacher
from ...optim import build_optimizer
from ...train.checkpoint import checkpoint_path
from ...train.modeling import build_model, load_model
from .. import stats
from ..spec import Cell, Claim, Experiment, Section
from .common import LADDER, SaveAtSteps, lm_config, load_checkpoint_model, model_data, on_model, run_training, savefig

FN = "infogeom.study.experiments.e2:"
C_GD = (0.5, 1.5, 4.0)
PASS = (0.9, 1.2)
FRACTIONS = (0.0, 0.01, 0.03, 0.1, 0.3, 1.0)
PROFILES = {
    "quick": {"size": "19.6k", "batch": 4, "block": 32, "steps": 80, "every": 8, "seeds": 2,
              "phase_steps": 60, "k_top": 4, "probes": 4, "slq_steps": 16},
    "full": {"size": "66.8k", "batch": 8, "block": 64, "steps": 150, "every": 10, "seeds": 2,
             "phase_steps": 600, "k_top": 10, "probes": 8, "slq_steps": 32},
}
ADAM_LRS = (1e-3, 3e-3)


def _gpt(size: str, seed: int, model: dict | None = None) -> torch.nn.Module:
    """Ladder GPT ``size`` initialized with ``seed``, or (``model``, a ``study --model`` spec) the pretrained
    checkpoint as it is (``seed`` unused)."""
    from ...train import load_config

    if model is not None:
        return load_model(f"hf:{model['path']}")[0]
    cfg = load_config(None, validate=False)
    cfg.model.n_layer, cfg.model.n_embd, cfg.model.n_head = *LADDER[size], 4
    data = prepare_data("shakespeare", "char")
    torch.manual_seed(seed)
    return build_model(cfg.model, data.vocab_size)


def fixed_batch(batch: int, block: int, seed: int, model: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The full batch: ``batch`` windows of the training split, drawn with ``seed`` (tokenized by ``model``'s
    tokenizer, windows cut to its context, with a ``study --model`` spec)."""
    block = min(block, int(model["context"])) if model else block
    return model_data(model).get_batch("train", batch, block, torch.Generator().manual_seed(seed))


def sharpness_of(model: torch.nn.Module, batch, optimizer: torch.optim.Optimizer, v0: torch.Tensor | None,
                 tol: float = 1e-3) -> tuple[dict, torch.Tensor | None]:
    """The optimizer's sharpness and threshold (``{'sharpness', 'threshold', 'ratio', 'kind'}``) and the new warm
    start: λ₁(P⁻¹H) with P = the optimizer's own preconditioner (I for GD/heavy ball, Adam's diagonal, …) by the
    generalized Lanczos solver started from ``v0``, the one place E2 asks an optimizer for its sharpness."""
    H = HessianOperator(model, batch)
    info = optimizer_sharpness(H, optimizer, model, tol=tol, v0=v0, residuals=False, return_vector=True)
    return info, info.pop("vector")


def run_pilot(params: dict, seed: int, workdir: Path, inputs: dict) -> dict:
    """λ_max(H) of the freshly initialized model on the fixed batch."""
    model = _gpt(params["size"], seed, params.get("model"))
    batch = fixed_batch(params["batch"], params["block"], seed, params.get("model"))
    res = eigsh(HessianOperator(model, batch), k=1, tol=1e-4)
    return {"lambda_max": float(res.values[0]), "loss": float(lm_loss(model(batch[0]), batch[1]).detach())}


def arm_lr(arm: str, c: float | None, lam: float) -> float:
    """η of an arm: GD 2/(c λ), momentum (2+2·0.9)/(c λ), Adam its fixed η."""
    if arm == "gd":
        return 2.0 / (c * lam)
    if arm == "gdm":
        return 3.8 / (c * lam)
    raise ValueError(arm)


def run_eos(params: dict, seed: int, workdir: Path, inputs: dict) -> dict:
    """Full-batch training at constant lr with the sharpness/threshold ratio every ``every`` steps."""
    lam = next(iter(inputs.values()))["result"]["lambda_max"] if inputs else math.nan
    arm = params["arm"]
    model = _gpt(params["size"], seed, params.get("model"))
    batch = fixed_batch(params["batch"], params["block"], seed, params.get("model"))
    if arm == "adam":
        lr = params["lr"]
        opt = build_optimizer("adamw", model, lr, 0.0, betas=(0.9, 0.999))
    else:
        lr = arm_lr(arm, params["c"], lam)
        opt = build_optimizer("sgd", model, lr, 0.0, momentum=0.9 if arm == "gdm" else 0.0)
    v0, losses, records, diverged = None, [], [], False
    for step in range(params["steps"] + 1):
        if step % params["every"] == 0 and step > 0:
            info, v0 = sharpness_of(model, batch, opt, v0)
            records.append({"step": step, **{k: info[k] for k in ("sharpness", "threshold", "ratio")}})
        if step == params["steps"]:
            break
        model.train(not params.get("model"))  # a pretrained model's own dropout would make full-batch GD noisy
        loss = lm_loss(model(batch[0]), batch[1])
        value = loss.item()
        if not math.isfinite(value):
            diverged = True
            break
        losses.append(value)
        opt.zero_grad()
        loss.backward()
        opt.step()
    half = [r["ratio"] for r in records if r["step"] > params["steps"] / 2]
    return {"lr": lr, "lambda_pilot": lam, "losses": losses, "records": records, "diverged": diverged,
            "median_ratio_second_half": float(np.median(half)) if half else math.nan}


def phase_steps(total: int) -> list[int]:
    return sorted({int(round(f * total)) for f in FRACTIONS})


def run_phase_train(params: dict, seed: int, workdir: Path, inputs: dict) -> dict:
    """AdamW training through the trainer with checkpoints at the phase fractions (resumable)."""
    steps = params["steps"]
    cfg = lm_config(workdir, size=params["size"], optimizer="adamw", lr=1e-2, steps=steps, seed=seed,
                    batch=16, block=64, warmup=max(1, steps // 20), eval_every=max(1, steps // 5),
                    keep_last=len(FRACTIONS) + 2, model=params.get("model"))
    res = run_training(cfg, [SaveAtSteps(phase_steps(steps))])
    res.pop("train_losses", None)
    return res


def run_phase_measure(params: dict, seed: int, workdir: Path, inputs: dict) -> dict:
    """Curvature scalars of one checkpoint of the phase training cell (module doc)."""
    src = next(iter(inputs.values()))
    model, ckpt = load_checkpoint_model(checkpoint_path(Path(src["dir"]) / "run", params["step"]))
    batch = fixed_batch(params["batch"], params["block"], seed, params.get("model"))
    g = torch.Generator().manual_seed(seed)
    F, EF, H = FisherOperator(model, batch), FisherOperator(model, batch, kind="empirical"), HessianOperator(model,
                                                                                                            batch)
    K = KFACOperator(model, batch, fisher="mc", generator=g)
    lam = params["damping"]
    top_h = eigsh(H, k=params["k_top"], tol=1e-2, generator=g)
    top_f = eigsh(F, k=1, tol=1e-3, generator=g)
    probes = rademacher((F.dim, params["probes"]), F.dtype, F.device, g)
    nodes, weights = lanczos_quadrature(F, probes, params["slq_steps"], g)
    d_eff = F.dim * float((weights * nodes.clamp_min(0) / (nodes.clamp_min(0) + lam)).sum(1).mean())
    lmin = max(0.0, float(nodes.min()))
    grad = H.gradient
    overlap = float((top_h.vectors.T @ grad).pow(2).sum() / grad.pow(2).sum())
    return {
        "step": params["step"], "fraction": params["fraction"], "loss": float(H.loss.detach()), "params": F.dim,
        "tr_F": hutchinson(F, params["probes"], g).value, "tr_EF": hutchinson(EF, params["probes"], g).value,
        "tr_KFAC": float(K.trace()), "lambda_max_H": float(top_h.values[0]), "lambda_max_F": float(top_f.values[0]),
        "d_eff": d_eff, "damping": lam, "cond_damped": (float(top_f.values[0]) + lam) / (lmin + lam),
        "grad_overlap_topk": overlap, "k_top": params["k_top"],
    }


def plan(profile: str) -> list[Cell]:
    p = PROFILES[profile]
    shared = {k: p[k] for k in ("size", "batch", "block")}
    cells = []
    per_measure = 0.25 if profile == "quick" else 1.0  # measured: one warm-started λ_max on the quick batch
    eos_est = 1.0 + (p["steps"] // p["every"]) * per_measure + p["steps"] * 0.01
    for r in range(p["seeds"]):
        pk = {"pair_key": "e2/eos"}
        pilot = f"e2/pilot/r{r}"
        cells.append(Cell("E2", pilot, FN + "run_pilot", {**shared, **pk}, replicate=r,
                          est_seconds=2.0 if profile == "quick" else 4.0))
        arms = [("gd", {"c": c}) for c in C_GD] + [("gdm", {"c": C_GD[1]})] + [("adam", {"lr": lr})
                                                                               for lr in ADAM_LRS]
        for arm, extra in arms:
            label = f"c={extra['c']:g}" if "c" in extra else f"lr={extra['lr']:g}"
            cells.append(Cell("E2", f"e2/eos/{arm}/{label}/r{r}", FN + "run_eos",
                              {**shared, **pk, **extra, "arm": arm, "steps": p["steps"], "every": p["every"]},
                              replicate=r, priority=1 if r < 2 else 3,
                              est_seconds=eos_est * (1.2 if arm == "adam" else 1.0),
                              needs=(pilot,) if arm != "adam" else ()))
    train = "e2/phases/train"
    cells.append(Cell("E2", train, FN + "run_phase_train", {"size": p["size"], "steps": p["phase_steps"]},
                      priority=2, est_seconds=2.0 + 0.015 * p["phase_steps"] * (1 if profile == "quick" else 4)))
    for f, s in zip(FRACTIONS, [int(round(f * p["phase_steps"])) for f in FRACTIONS]):
        cells.append(Cell("E2", f"e2/phases/measure/{f:g}", FN + "run_phase_measure",
                          {**shared, "step": s, "fraction": f, "damping": 1e-3, "k_top": p["k_top"],
                           "probes": p["probes"], "slq_steps": p["slq_steps"], "pair_key": "e2/phases"},
                          priority=2, est_seconds=2.0 if profile == "quick" else 30.0, needs=(train,)))
    return cells


def _ratio_claim(cid: str, text: str, arms: dict[str, list[float]], prediction: str, citation: str) -> Claim:
    cis = {a: stats.mean_ci(v) for a, v in arms.items()}
    inside = all(PASS[0] <= np.mean(v) <= PASS[1] for v in arms.values())
    outside = all(ci.hi < PASS[0] or ci.lo > PASS[1] for ci in cis.values())
    measured = "; ".join(f"{a}: {stats.fmt(ci)}" for a, ci in cis.items())
    return Claim(cid, text, "consistent" if inside and arms else "inconsistent" if outside and arms else
                 "inconclusive", measured or "no runs", prediction, citation,
                 f"consistent if every arm's mean (over seeds) second-half median sharpness/threshold is in "
                 f"[{PASS[0]}, {PASS[1]}]; inconsistent if every arm's CI lies outside it")


def analyze(results: list[tuple[Cell, dict]], figdir: Path) -> Section:
    import matplotlib.pyplot as plt

    eos = [(c, r) for c, r in results if c.fn.endswith("run_eos")]
    phases = sorted([r for c, r in results if c.fn.endswith("run_phase_measure")], key=lambda r: r["step"])
    numbers: dict = {"eos": {}, "phases": phases}
    claims, figures, tables = [], [], []
    arms: dict[str, list[float]] = {}
    if eos:
        fig, ax = plt.subplots(figsize=(7, 4))
        labels: list[str] = []
        order = sorted({" ".join(x.name.split("/")[2:4]) for x, _ in eos})
        for c, r in eos:
            arm = c.name.split("/")[2] + " " + c.name.split("/")[3]
            if not r["diverged"]:
                arms.setdefault(arm, []).append(r["median_ratio_second_half"])
            if r["records"]:
                color = f"C{order.index(arm)}"
                ax.plot([x["step"] for x in r["records"]], [x["ratio"] for x in r["records"]], marker=".",
                        color=color, label=arm if arm not in labels else None, alpha=0.8)
                labels.append(arm)
        ax.axhspan(*PASS, color="green", alpha=0.1, label="pass band")
        ax.axhline(1.0, color="k", lw=0.8, ls=":")
        ax.set(yscale="log", xlabel="step", ylabel="sharpness / stability threshold",
               title="E2: λ_max·η/2 (GD), λ₁(P⁻¹H)/threshold (Adam) vs step")
        ax.legend(fontsize=7, ncol=2)
        figures.append((savefig(fig, figdir, "e2_eos_ratio.png"),
                        "Sharpness divided by each optimizer's stability threshold during full-batch training "
                        "(one line per seed; green: the pass band [0.9, 1.2])."))
        tables.append(("Edge of stability: second-half median ratio per arm (mean over seeds, CI)",
                       ["arm", "ratio", "seeds"], [[a, stats.fmt(stats.mean_ci(v)), str(len(v))]
                                                   for a, v in sorted(arms.items())]))
        numbers["eos"] = {a: v for a, v in arms.items()}
        gd = {a: v for a, v in arms.items() if a.startswith("gd c=")}
        claims.append(_ratio_claim("E2.1", "Full-batch GD trains at the edge of stability (λ_max ≈ 2/η)", gd,
                                   "progressive sharpening, then λ_max at or just above 2/η", "Cohen et al. 2021"))
        claims.append(_ratio_claim("E2.2", "GD with momentum 0.9 stabilizes at λ_max ≈ (2+2β)/η",
                                   {a: v for a, v in arms.items() if a.startswith("gdm")}, "λ_max ≈ 3.8/η",
                                   "Cohen et al. 2021"))
        claims.append(_ratio_claim("E2.3", "Adam's preconditioned sharpness λ₁(P⁻¹H) sits at 38/η",
                                   {a: v for a, v in arms.items() if a.startswith("adam")},
                                   "adaptive edge of stability at (2+2β₁)/((1−β₁)η) = 38/η", "Cohen et al. 2022"))
    if phases:
        keys = ["tr_F", "tr_EF", "tr_KFAC", "lambda_max_H", "lambda_max_F", "d_eff", "cond_damped",
                "grad_overlap_topk"]
        fig, axes = plt.subplots(2, 4, figsize=(13, 5.5))
        x = [max(r["fraction"], 3e-3) for r in phases]
        for ax, k in zip(axes.flat, keys):
            ax.plot(x, [r[k] for r in phases], marker="o")
            ax.set(xscale="log", yscale="log" if k != "grad_overlap_topk" else "linear",
                   xlabel="fraction of training", ylabel=k, title=k)
        fig.suptitle("E2: curvature scalars vs training phase (fraction 0 plotted at 0.003)")
        figures.append((savefig(fig, figdir, "e2_phases.png"), "Fisher/Hessian scalars at fixed fractions of one "
                        "AdamW training run (damping λ = 1e-3 for d_eff and the condition number)."))
        tables.append(("Training phases", ["fraction", "loss"] + keys,
                       [[f"{r['fraction']:g}", f"{r['loss']:.3f}"] + [f"{r[k]:.3g}" for k in keys] for r in phases]))
        late = [r["grad_overlap_topk"] for r in phases if r["fraction"] >= 0.1]
        ci = stats.mean_ci(late)
        claims.append(Claim("E2.4", f"The gradient lies in the top-{phases[0]['k_top']} Hessian eigenspace",
                            "consistent" if ci.value >= 0.5 else "inconsistent" if ci.hi < 0.2 else "inconclusive",
                            f"fraction ‖V_kᵀg‖²/‖g‖² {stats.fmt(ci)} over the checkpoints at ≥10% of training",
                            "after a short training the gradient lives in a subspace about the size of the number "
                            "of classes", "Gur-Ari et al. 2018",
                            "consistent if the mean fraction over checkpoints ≥ 10% of training is ≥ 0.5; "
                            "inconsistent if its CI upper bound is < 0.2 (k below V makes this a strict test)"))
        final = phases[-1]["lambda_max_H"]
        early = [r["lambda_max_H"] for r in phases if 0 < r["fraction"] <= 0.1]
        frac = max(early) / final if early and final > 0 else math.nan
        numbers["outlier_early_fraction"] = frac
        claims.append(Claim("E2.5", "Hessian outliers appear early in training",
                            "consistent" if frac >= 0.5 else "inconsistent" if frac < 0.1 else "inconclusive",
                            f"max λ_max(H) within the first 10% / final λ_max(H) = {frac:.2f} (one run)",
                            "outliers separate from the bulk early", "Ghorbani et al. 2019",
                            "consistent if λ_max(H) within the first 10% of training reaches ≥ 0.5× its final "
                            "value; inconsistent if < 0.1×"))
    return Section("E2", EXPERIMENT.title, claims, figures, tables, numbers,
                   "Edge-of-stability runs use one fixed batch (full-batch GD on it) and a constant lr; Adam's "
                   "λ₁(P⁻¹H) is not warm-started (the project's optimizer_sharpness has no v0).")


EXPERIMENT = Experiment(
    id="E2", title="Curvature tracks training dynamics", claim="Curvature explains training dynamics", plan=plan,
    analyze=analyze,
    on_model=lambda cells, model: on_model(cells, model, ("run_pilot", "run_eos", "run_phase_train",
                                                          "run_phase_measure")),
    model_note="every cell on the model: the pilot's λ_max and the full-batch arms start from its pretrained "
               "weights (dropout off), the phases fine-tune it with AdamW; windows cut to its context")
