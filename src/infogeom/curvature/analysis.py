"""One-shot curvature report of a model on a batch: the computations behind ``infogeom curvature``.

Each item of ``what`` computes one family of diagnostics, writes ``<item>.json`` (and a PNG where a plot
helps) into ``out_dir`` and returns table rows ``(quantity, value, detail)``:

- ``eig``: top-k eigenvalues of the operator (Lanczos) with residuals;
- ``trace``: Hutchinson and Hutch++ traces with standard errors;
- ``density``: SLQ spectral density (``density.png``);
- ``blocks``: per-block spectra and the block heterogeneity (``blocks.png``);
- ``sharpness``: λ_max(H), SAM and ASAM ε-sharpness, and (with an optimizer) λ_max(P⁻¹H) vs its EoS
  threshold;
- ``noise``: gradient noise scale B_simple, B_noise;
- ``landscape``: filter-normalized 2-D (or 1-D) loss slice (``landscape.png``);
- ``interpolate``: loss along the line to a second parameter set (``interpolation.png``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from ..errors import InfogeomError
from ..geometry import HessianOperator
from ..geometry.functional import Batch
from .blocks import block_spectra, parameter_blocks
from .density import spectral_density
from .lanczos import eigsh
from .landscape import interpolate_models, loss_landscape
from .noise import gradient_noise_scale
from .operators import build_operator
from .plots import plot_block_spectra, plot_density, plot_landscape, save_json
from .sharpness import epsilon_sharpness, optimizer_sharpness
from .trace import hutchinson, hutchpp

ITEMS = ("eig", "trace", "density", "blocks", "sharpness", "noise", "landscape", "interpolate")
Row = tuple[str, str, str]


@dataclass
class AnalysisOptions:
    """Knobs of :func:`analyze` (defaults suit a CPU and a model of up to a few million parameters)."""

    operator: str = "hessian"
    k: int = 3
    tol: float = 1e-4
    probes: int = 32
    lanczos_steps: int = 64
    density_probes: int = 4
    granularity: str = "sublayer"
    n_head: int | None = None
    rho: float = 0.05
    dims: int = 2
    grid: int = 21
    span: float = 1.0
    seed: int = 0
    progress: bool = False


def parse_items(spec: str) -> list[str]:
    """``"eig,trace"`` -> ``["eig", "trace"]``; unknown or empty items raise a one-line error."""
    items = [s.strip() for s in spec.split(",") if s.strip()]
    if not items:
        raise InfogeomError(f"--what is empty; choose from {', '.join(ITEMS)}")
    bad = [s for s in items if s not in ITEMS]
    if bad:
        raise InfogeomError(f"unknown --what item {bad[0]!r}; choose from {', '.join(ITEMS)}")
    return list(dict.fromkeys(items))


def _g(x: float) -> str:
    return f"{x:.6g}"


def analyze(
    model: nn.Module,
    batch: Batch,
    what: Sequence[str],
    out_dir: str | Path,
    options: AnalysisOptions | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    compare: Mapping[str, torch.Tensor] | None = None,
) -> list[Row]:
    """Run the items ``what`` (see module doc) on ``model`` and ``batch``; files go to ``out_dir``."""
    o = options or AnalysisOptions()
    out = Path(out_dir)
    if "interpolate" in what and compare is None:
        raise InfogeomError("--what interpolate needs a second checkpoint (--compare)")
    gen = torch.Generator().manual_seed(o.seed)
    needs_op = {"eig", "trace", "density", "blocks"} & set(what)
    op = build_operator(o.operator, model, batch, generator=gen) if needs_op else None
    rows: list[Row] = []
    for item in what:
        start = time.perf_counter()
        if item == "eig":
            res = eigsh(op, k=o.k, tol=o.tol, generator=gen, progress=o.progress)
            save_json({"operator": o.operator, **res.to_dict()}, out / "eig.json")
            for i, (v, r) in enumerate(zip(res.values.tolist(), res.residuals.tolist()), 1):
                rows.append((f"{o.operator} λ_{i}", _g(v), f"residual {r:.2e}"))
            rows.append(
                ("lanczos", f"{res.matvecs} products", "converged" if res.converged else "NOT converged")
            )
        elif item == "trace":
            h, hpp = hutchinson(op, o.probes, gen), hutchpp(op, max(6, o.probes), gen)
            save_json(
                {"operator": o.operator, "hutchinson": h.to_dict(), "hutchpp": hpp.to_dict()},
                out / "trace.json",
            )
            rows.append(
                (f"{o.operator} trace (Hutchinson)", _g(h.value), f"± {h.stderr:.3g} ({h.num_probes} probes)")
            )
            rows.append(
                (
                    f"{o.operator} trace (Hutch++)",
                    _g(hpp.value),
                    f"± {hpp.stderr:.3g} ({hpp.num_probes} probes)",
                )
            )
        elif item == "density":
            sd = spectral_density(op, o.density_probes, o.lanczos_steps, generator=gen)
            save_json({"operator": o.operator, **sd.to_dict()}, out / "density.json")
            plot_density(sd, out / "density.png", f"{o.operator} spectral density")
            rows.append(
                (
                    "density",
                    f"[{_g(float(sd.nodes.min()))}, {_g(float(sd.nodes.max()))}]",
                    f"Ritz range; {sd.nodes.shape[0]}×{sd.nodes.shape[1]} nodes → density.png",
                )
            )
        elif item == "blocks":
            bs = block_spectra(
                op,
                parameter_blocks(op, o.granularity, o.n_head),
                o.density_probes,
                min(o.lanczos_steps, 32),
                generator=gen,
            )
            save_json(
                {"operator": o.operator, "granularity": o.granularity, **bs.to_dict()}, out / "blocks.json"
            )
            plot_block_spectra(bs, out / "blocks.png")
            rows.append(
                (
                    f"block heterogeneity ({o.granularity})",
                    _g(bs.heterogeneity),
                    f"mean JS distance over {len(bs.names)} blocks → blocks.png",
                )
            )
            top = max(bs.summary.items(), key=lambda kv: kv[1]["lambda_max"])
            rows.append(("sharpest block", top[0], f"λ_max ≈ {_g(top[1]['lambda_max'])}"))
        elif item == "sharpness":
            H = HessianOperator(model, batch)
            lam = eigsh(H, k=1, tol=o.tol, generator=gen)
            sam = epsilon_sharpness(model, batch, rho=o.rho)
            asam = epsilon_sharpness(model, batch, rho=o.rho, adaptive=True)
            result = {"lambda_max": float(lam.values[0]), "sam": sam.to_dict(), "asam": asam.to_dict()}
            rows.append(
                ("Hessian λ_max", _g(result["lambda_max"]), f"residual {float(lam.residuals[0]):.2e}")
            )
            rows.append((f"SAM ε-sharpness (ρ={o.rho})", _g(sam.value), f"loss {sam.loss:.4f}"))
            rows.append((f"ASAM ε-sharpness (ρ={o.rho})", _g(asam.value), "adaptive |w|-scaled ball"))
            if optimizer is not None:
                try:
                    info = optimizer_sharpness(H, optimizer, model, tol=o.tol, generator=gen, batch=batch)
                except InfogeomError as exc:
                    rows.append(("preconditioned sharpness", "n/a", str(exc)))
                else:
                    result["optimizer"] = info
                    label = "λ_max(H)" if info["kind"] == "sgd" and len(info["parts"]) == 1 else "λ_max(P⁻¹H)"
                    detail = (
                        f"EoS threshold {_g(info['threshold'])} (ratio {info['ratio']:.3f}); "
                        f"2/η = {_g(info['gd_threshold'])}"
                        if info["lr"] > 0
                        else "lr = 0 at this checkpoint: no EoS threshold"
                    )
                    rows.append((f"{info['kind']} {label}", _g(info["sharpness"]), detail))
            save_json(result, out / "sharpness.json")
        elif item == "noise":
            ns = gradient_noise_scale(model, batch)
            save_json(ns.to_dict(), out / "noise.json")
            rows.append(
                ("B_simple", _g(ns.b_simple), f"tr Σ {ns.trace_sigma:.4g}, |G|² {ns.grad_norm_sq:.4g}")
            )
            rows.append(("B_noise", _g(ns.b_noise), f"{ns.batch_size} sequences (per-example gradients)"))
        elif item == "landscape":
            sl = loss_landscape(
                model, batch, dims=o.dims, num_points=o.grid, span=o.span, generator=gen, progress=o.progress
            )
            save_json(sl.to_dict(), out / "landscape.json")
            plot_landscape(sl, out / "landscape.png")
            rows.append(
                (
                    f"landscape ({o.dims}-D, ±{o.span})",
                    f"min {float(sl.losses.min()):.4f}",
                    f"center {sl.center_loss:.4f}, max {float(sl.losses.max()):.4f} → landscape.png",
                )
            )
        elif item == "interpolate":
            sl = interpolate_models(model, compare, batch, progress=o.progress)
            save_json(sl.to_dict(), out / "interpolation.json")
            plot_landscape(sl, out / "interpolation.png", "Linear interpolation between checkpoints")
            ends = [float(sl.losses[(sl.alphas - a).abs().argmin()]) for a in (0.0, 1.0)]
            barrier = float(sl.losses[(sl.alphas >= -1e-9) & (sl.alphas <= 1 + 1e-9)].max()) - max(ends)
            rows.append(
                (
                    "interpolation barrier",
                    _g(barrier),
                    f"‖θ_b − θ_a‖ = {sl.meta['distance']:.4g} → interpolation.png",
                )
            )
        rows.append((f"  ({item} time)", f"{time.perf_counter() - start:.2f}s", ""))
    return rows


def format_table(rows: Sequence[Row]) -> str:
    """Rows as an aligned three-column text table."""
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    return "\n".join(f"{a:<{w0}}  {b:>{w1}}  {c}".rstrip() for a, b, c in rows)
