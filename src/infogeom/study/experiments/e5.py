"""E5 — spectra, and what is specific to transformers (Sagun et al. 2017; Karakida et al. 2019; Kunstner et al.
2019; Zhang et al. 2024).

Spectra: ladder GPTs trained with AdamW (through the trainer); on each final checkpoint and one fixed batch, SLQ
densities (:func:`~infogeom.curvature.spectral_density`) of H, F, the empirical Fisher, K-FAC and EK-FAC; the
negative mass of H (quadrature weight on negative nodes); outliers vs bulk (λ_max over the 90% spectral quantile);
per-head and per-sublayer block spectra of H (:func:`~infogeom.curvature.block_spectra`) with their mean
pairwise Jensen–Shannon distance (heterogeneity).

Control ("why transformers need Adam", Zhang et al. 2024): an MLP-only LM (:class:`~infogeom.models.toy.MLPLM`,
no attention, an MLP over a fixed context window) of about the GPT's size, and the GPT, each trained with SGD
(momentum 0.9) and AdamW in the same small loop; the SGD–AdamW final-validation-loss gap of each architecture,
and the block heterogeneity of each. The hypothesis: the transformer's gap and heterogeneity are the larger.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from ...curvature import block_spectra, parameter_blocks, spectral_density
from ...data import prepare_data
from ...errors import InfogeomError
from ...geometry import EKFACOperator, FisherOperator, HessianOperator, KFACOperator
from ...models.gpt import lm_loss
from ...models.toy import MLPLM
from ...optim import build_optimizer
from ...train.checkpoint import list_checkpoints
from ...train.evaluation import eval_batches
from .. import stats
from ..spec import Cell, Claim, Experiment, Section
from .common import lm_config, load_checkpoint_model, on_model, run_training, savefig
from .e2 import _gpt, fixed_batch

FN = "infogeom.study.experiments.e5:"
OPERATORS = ("H", "F", "EF", "KFAC", "EKFAC")
PROFILES = {
    "quick": {"sizes": ["19.6k"], "steps": 60, "probes": 2, "slq_steps": 24, "batch": 4, "block": 64,
              "control": {"size": "19.6k", "steps": 150, "seeds": 2, "batch": 16, "block": 64}},
    "full": {"sizes": ["114k", "356k", "820k"], "steps": 400, "probes": 4, "slq_steps": 64, "batch": 8,
             "block": 64, "control": {"size": "114k", "steps": 400, "seeds": 3, "batch": 16, "block": 64}},
}
CONTROL_LRS = {"adamw": 1e-2, "sgd": 0.3}
#: estimated seconds per training step (1k tokens) and per curvature product (512 tokens), quiet 2-core CPU
STEP_S = {"19.6k": 0.015, "66.8k": 0.02, "114k": 0.025, "356k": 0.04, "820k": 0.1}
MATVEC_S = {"19.6k": 0.02, "66.8k": 0.03, "114k": 0.04, "356k": 0.06, "820k": 0.1}


def run_train(params: dict, seed: int, workdir: Path, inputs: dict) -> dict:
    cfg = lm_config(workdir, size=params["size"], optimizer="adamw", lr=1e-2, steps=params["steps"], seed=seed,
                    batch=16, block=64, warmup=max(1, params["steps"] // 20), eval_every=params["steps"],
                    model=params.get("model"))
    res = run_training(cfg)
    res.pop("train_losses", None)
    return res


def _operator(kind: str, model, batch, g: torch.Generator):
    if kind == "H":
        return HessianOperator(model, batch)
    if kind == "F":
        return FisherOperator(model, batch)
    if kind == "EF":
        return FisherOperator(model, batch, kind="empirical")
    if kind == "KFAC":
        return KFACOperator(model, batch, fisher="mc", generator=g)
    return EKFACOperator(model, batch, fisher="mc", generator=g)


def density_summary(nodes: torch.Tensor, weights: torch.Tensor) -> dict:
    """Negative mass, λ_max, 90% quantile and the outlier ratio λ_max / q90 of a quadrature [n, m]."""
    w = (weights / weights.shape[0]).reshape(-1).numpy()
    x = nodes.reshape(-1).numpy()
    order = np.argsort(x)
    cdf = np.cumsum(w[order])
    q90 = float(x[order][min(np.searchsorted(cdf, 0.9), x.size - 1)])
    lmax = float(x.max())
    return {"negative_mass": float(w[x < 0].sum()), "lambda_max": lmax, "q90": q90,
            "outlier_ratio": lmax / abs(q90) if q90 != 0 else math.inf}


def run_spectra(params: dict, seed: int, workdir: Path, inputs: dict) -> dict:
    """SLQ densities of the five operators and H's per-head/per-sublayer block spectra on one checkpoint."""
    src = next(iter(inputs.values()))
    model, ckpt = load_checkpoint_model(list_checkpoints(Path(src["dir"]) / "run")[-1])
    spec = params.get("model")
    batch = fixed_batch(params["batch"], params["block"], seed, spec)
    g = torch.Generator().manual_seed(seed)
    out: dict = {"size": f"hf:{Path(spec['path']).name}" if spec else params["size"],
                 "params": sum(p.numel() for p in model.parameters()), "densities": {}}
    for kind in OPERATORS:
        op = _operator(kind, model, batch, g)
        d = spectral_density(op, num_probes=params["probes"], steps=params["slq_steps"], generator=g,
                             num_points=256)
        out["densities"][kind] = {"grid": d.grid.tolist(), "density": d.density.tolist(), "dim": d.dim,
                                  **density_summary(d.nodes, d.weights)}
    H = HessianOperator(model, batch)
    for gran in ("head", "sublayer"):
        try:
            blocks = parameter_blocks(H, gran, n_head=ckpt["config"]["model"]["n_head"])
        except InfogeomError as exc:  # per-head blocks need GPT-2-style fused c_attn (a --model of another family)
            if gran != "head" or not spec:
                raise
            out[f"blocks_{gran}"] = {"skipped": str(exc)}
            continue
        bs = block_spectra(H, blocks, num_probes=1, steps=params["slq_steps"] // 2, generator=g, num_points=256)
        out[f"blocks_{gran}"] = {"heterogeneity": bs.heterogeneity, "names": bs.names,
                                 "lambda_max": [bs.summary[n]["lambda_max"] for n in bs.names]}
    return out


def _model(arch: str, size: str, vocab: int, seed: int) -> torch.nn.Module:
    if arch == "gpt":
        return _gpt(size, seed)
    gpt = sum(p.numel() for p in _gpt(size, seed).parameters())
    torch.manual_seed(seed)
    return MLPLM.matching(vocab, gpt)


def run_control(params: dict, seed: int, workdir: Path, inputs: dict) -> dict:
    """Train ``arch`` with ``optimizer`` (constant lr after a 10% warmup) and measure H's sublayer heterogeneity."""
    data = prepare_data("shakespeare", "char")
    model = _model(params["arch"], params["size"], data.vocab_size, seed)
    opt_name = params["optimizer"]
    opt = build_optimizer(opt_name, model, CONTROL_LRS[opt_name], 0.1 if opt_name == "adamw" else 0.0,
                          **({"momentum": 0.9} if opt_name == "sgd" else {}))
    warm = max(1, params["steps"] // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm))
    gen = torch.Generator().manual_seed(seed)
    for _ in range(params["steps"]):
        x, y = data.get_batch("train", params["batch"], params["block"], gen)
        loss = lm_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
    model.eval()
    with torch.no_grad():
        val = float(np.mean([float(lm_loss(model(x), y)) for x, y in
                             eval_batches(data, "val", 4, params["batch"], params["block"], seed)]))
    out = {"val_loss": val, "params": sum(p.numel() for p in model.parameters())}
    if opt_name == "adamw":
        H = HessianOperator(model, fixed_batch(4, params["block"], seed))
        bs = block_spectra(H, parameter_blocks(H, "sublayer"), num_probes=1, steps=12,
                           generator=torch.Generator().manual_seed(seed), num_points=256)
        out["heterogeneity"] = bs.heterogeneity
    return out


def plan(profile: str) -> list[Cell]:
    p = PROFILES[profile]
    cells = []
    for size in p["sizes"]:
        train = f"e5/train/{size}"
        cells.append(Cell("E5", train, FN + "run_train", {"size": size, "steps": p["steps"]}, priority=1,
                          est_seconds=3.0 + STEP_S[size] * p["steps"]))
        cells.append(Cell("E5", f"e5/spectra/{size}", FN + "run_spectra",
                          {"size": size, "probes": p["probes"], "slq_steps": p["slq_steps"], "batch": p["batch"],
                           "block": p["block"], "pair_key": "e5/spectra"}, priority=1,
                          est_seconds=2.0 + MATVEC_S[size] * p["slq_steps"] * (5 * p["probes"] + 4),
                          needs=(train,)))
    c = p["control"]
    for r in range(c["seeds"]):
        for arch in ("gpt", "mlp"):
            for opt in CONTROL_LRS:
                cells.append(Cell("E5", f"e5/control/{arch}/{opt}/r{r}", FN + "run_control",
                                  {**c, "arch": arch, "optimizer": opt, "pair_key": "e5/control"}, replicate=r,
                                  priority=2, est_seconds=1.5 + STEP_S[c["size"]] * c["steps"] + (
                                      3.0 if opt == "adamw" else 0)))
    return cells


def analyze(results: list[tuple[Cell, dict]], figdir: Path) -> Section:
    import matplotlib.pyplot as plt

    spectra = [r for c, r in results if c.fn.endswith("run_spectra")]
    control = [(c, r) for c, r in results if c.fn.endswith("run_control")]
    numbers: dict = {"spectra": {}, "control": {}}
    claims, figures, tables = [], [], []
    if spectra:
        fig, axes = plt.subplots(1, len(spectra), figsize=(5.5 * len(spectra), 4), squeeze=False)
        rows = []
        for ax, s in zip(axes[0], spectra):
            for kind, d in s["densities"].items():
                ax.plot(d["grid"], np.maximum(d["density"], 1e-8), label=kind, lw=1)
                rows.append([s["size"], kind, f"{d['lambda_max']:.3g}", f"{d['q90']:.3g}",
                             f"{d['outlier_ratio']:.3g}", f"{d['negative_mass']:.3f}"])
            ax.set(yscale="log", xlabel="eigenvalue λ", ylabel="spectral density (per unit λ)",
                   title=f"SLQ densities, {'' if s['size'].startswith('hf:') else 'GPT '}{s['size']} "
                         f"({s['params']:,} params)")
            ax.legend(fontsize=7)
            numbers["spectra"][s["size"]] = {k: {kk: vv for kk, vv in d.items() if kk not in ("grid", "density")}
                                             for k, d in s["densities"].items()}
            numbers["spectra"][s["size"]]["heterogeneity"] = {g: s[f"blocks_{g}"].get("heterogeneity", math.nan)
                                                              for g in ("head", "sublayer")}
        figures.append((savefig(fig, figdir, "e5_densities.png"),
                        "SLQ spectral densities of the Hessian, Fisher, empirical Fisher, K-FAC and EK-FAC."))
        tables.append(("Spectra: λ_max, 90% quantile, outlier ratio and negative mass per operator",
                       ["model", "operator", "λ_max", "q90", "λ_max/q90", "negative mass"], rows))
        tables.append(("Block spectra of H: heterogeneity (mean pairwise JS distance) and the blocks' λ_max range",
                       ["model", "granularity", "blocks", "heterogeneity", "λ_max min … max"],
                       [[s["size"], g, str(len(s[f"blocks_{g}"]["names"])), f"{s[f'blocks_{g}']['heterogeneity']:.3f}",
                         f"{min(s[f'blocks_{g}']['lambda_max']):.3g} … {max(s[f'blocks_{g}']['lambda_max']):.3g}"]
                        for s in spectra for g in ("head", "sublayer") if "names" in s[f"blocks_{g}"]]))
        ratio = [s["densities"]["H"]["outlier_ratio"] for s in spectra]
        neg = [s["densities"]["H"]["negative_mass"] for s in spectra]
        claims.append(Claim("E5.1", "The Hessian spectrum is a bulk near zero plus outliers",
                            "consistent" if min(ratio) >= 10 else "inconsistent" if max(ratio) < 3 else
                            "inconclusive", f"λ_max/q90(H) = {', '.join(f'{x:.3g}' for x in ratio)}; negative "
                            f"mass {', '.join(f'{x:.3f}' for x in neg)}", "bulk near zero plus outliers",
                            "Sagun et al. 2017",
                            "consistent if λ_max is ≥ 10× the 90% spectral quantile on every checkpoint; "
                            "inconsistent if < 3× on every one"))
        ef = [abs(math.log(s["densities"]["EF"]["lambda_max"] / s["densities"]["F"]["lambda_max"]))
              for s in spectra]
        claims.append(Claim("E5.2", "The empirical Fisher differs from the Fisher",
                            "consistent" if min(ef) > math.log(1.5) else "inconsistent" if max(ef) < math.log(1.1)
                            else "inconclusive", "λ_max(EF)/λ_max(F) = " + ", ".join(
                                f"{s['densities']['EF']['lambda_max'] / s['densities']['F']['lambda_max']:.3g}"
                                for s in spectra), "EF ≠ F away from the optimum", "Kunstner et al. 2019",
                            "consistent if λ_max(EF)/λ_max(F) is outside [1/1.5, 1.5] on every checkpoint; "
                            "inconsistent if inside [1/1.1, 1.1] on every one"))
    if control:
        val: dict[tuple[str, str], dict[int, float]] = {}
        het: dict[str, list[float]] = {}
        for c, r in control:
            val.setdefault((c.params["arch"], c.params["optimizer"]), {})[c.replicate] = r["val_loss"]
            if "heterogeneity" in r:
                het.setdefault(c.params["arch"], []).append(r["heterogeneity"])
        gaps = {a: [val[(a, "sgd")][k] - val[(a, "adamw")][k] for k in val.get((a, "sgd"), {})
                    if k in val.get((a, "adamw"), {})] for a in ("gpt", "mlp")}
        diff = stats.paired_difference(gaps["gpt"], gaps["mlp"])
        numbers["control"] = {"gaps": gaps, "heterogeneity": het, "gap_difference": diff.to_dict()}
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.6))
        for i, a in enumerate(("gpt", "mlp")):
            a1.bar(i, np.mean(gaps[a]), color=f"C{i}")
            a1.scatter([i] * len(gaps[a]), gaps[a], color="k", s=10, zorder=3)
            a2.bar(i, np.mean(het.get(a, [math.nan])), color=f"C{i}")
            a2.scatter([i] * len(het.get(a, [])), het.get(a, []), color="k", s=10, zorder=3)
        for ax, lab in ((a1, "val loss(SGD) − val loss(AdamW) (nats/token)"),
                        (a2, "H sublayer heterogeneity (mean pairwise JS)")):
            ax.set_xticks([0, 1], ["GPT", "MLP-LM"])
            ax.set(ylabel=lab)
        a1.set_title("SGD–AdamW gap")
        a2.set_title("Block-spectrum heterogeneity")
        figures.append((savefig(fig, figdir, "e5_control.png"),
                        "Equal-size GPT vs MLP-only LM: the SGD–AdamW gap and the Hessian's block heterogeneity."))
        hg, hm = np.mean(het.get("gpt", [math.nan])), np.mean(het.get("mlp", [math.nan]))
        ci = diff.interval
        verdict = ("consistent" if ci.lo > 0 and hg > hm else "inconsistent" if ci.hi < 0 or
                   (diff.n >= 2 and ci.method != "degenerate" and hg < hm and ci.hi < 0) else "inconclusive")
        if diff.n == 1:
            verdict = "consistent" if ci.value > 0 and hg > hm else "inconclusive"
        claims.append(Claim("E5.3", "Transformers need Adam more than an equal-size MLP LM does", verdict,
                            f"gap(GPT) − gap(MLP) = {stats.fmt(ci)} nats; heterogeneity GPT {hg:.3f} vs MLP "
                            f"{hm:.3f}", "the SGD–Adam gap is larger for transformers, whose Hessian blocks are "
                            "heterogeneous", "Zhang et al. 2024",
                            "consistent if the CI of the paired gap difference is above 0 and the GPT's "
                            "heterogeneity exceeds the MLP's; inconsistent if the CI is below 0; a single seed "
                            "gives at most 'consistent' on the point estimates"))
    return Section("E5", EXPERIMENT.title, claims, figures, tables, numbers,
                   "Quick profile: one small checkpoint and one control seed (labelled smoke test).")


EXPERIMENT = Experiment(
    id="E5", title="Spectra, and what is specific to transformers", claim="Spectra; what is specific to transformers",
    plan=plan, analyze=analyze,
    on_model=lambda cells, model: on_model(cells, model, ("run_train", "run_spectra"), drop=("run_control",)),
    model_note="the spectra are of the model fine-tuned with AdamW (per-head blocks only for GPT-2-style fused "
               "attention); the transformer-vs-equal-size-MLP control (E5.3) compares ladder sizes and is left out")
