"""PNG (+ SVG) plots and JSON files for curvature results (matplotlib's object API, no global pyplot state)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..plotting import curve_styles, new_figure, save_figure
from .blocks import BlockSpectra
from .density import SpectralDensity
from .landscape import LandscapeSlice


def save_json(obj: dict, path: str | Path) -> Path:
    """Write ``obj`` as JSON atomically (temporary file + rename, so an existing file is never
    half-written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=float))
    os.replace(tmp, path)
    return path


def _titled(title: str, what: str) -> str:
    return f"{title}\n{what}" if title else what


def plot_density(density: SpectralDensity, path: str | Path, title: str = "spectral density") -> Path:
    """SLQ density on a log scale (Hessian spectra span decades; values below 10⁻⁶ of the peak are not drawn),
    with every quadrature node (Ritz value) as a tick on the bottom edge. Also ``.svg``."""
    fig = new_figure(7, 4.2)
    ax = fig.add_subplot()
    dens = density.density.clone()
    peak = float(dens.max())
    dens[dens < peak * 1e-6] = float("nan")
    n, m = density.nodes.shape
    ax.semilogy(density.grid, dens, lw=1.5, color="C0",
                label=f"SLQ density, Gaussian broadening σ = {density.sigma:.3g}")
    ax.plot(density.nodes.reshape(-1), [0.02] * density.nodes.numel(), "|", color="k", alpha=0.5, ms=10,
            transform=ax.get_xaxis_transform(), label=f"Ritz values (quadrature nodes; {n} probes × {m} steps)")
    ax.set_ylim(peak * 1e-6, peak * 3)
    ax.set_xlabel("eigenvalue (nats/token per unit² of parameters)")
    ax.set_ylabel("spectral density (log scale)")
    ax.set_title(_titled(title, f"{density.dim:,} × {density.dim:,} operator"))
    ax.legend(loc="upper right")
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def plot_block_spectra(spectra: BlockSpectra, path: str | Path, title: str = "per-block spectra") -> Path:
    """Every block's density (distinct colour/line style each) and the pairwise Jensen–Shannon distance
    matrix on a colour scale fitted to its values. Also ``.svg``."""
    nb = len(spectra.names)
    fig = new_figure(13, 5.2)
    ax, ax_js = fig.subplots(1, 2, width_ratios=[1.3, 1])
    peak = float(spectra.densities.max())
    for name, dens, style in zip(spectra.names, spectra.densities, curve_styles(nb)):
        d = dens.clone()
        d[d < peak * 1e-6] = float("nan")
        ax.semilogy(spectra.grid, d, lw=1.2, label=name, **style)
    ax.set_ylim(peak * 1e-6, peak * 3)
    ax.set_xlabel("eigenvalue of the diagonal block (nats/token per unit²)")
    ax.set_ylabel("spectral density (log scale)")
    ax.set_title(f"densities, common σ = {spectra.sigma:.3g}")
    ax.legend(ncol=1 + nb // 14, loc="upper right", title="block")
    ax.grid(alpha=0.3)
    js = spectra.js.numpy()
    im = ax_js.imshow(js, vmin=0, vmax=max(float(js.max()), 1e-12), cmap="viridis")
    ticks = range(nb)
    ax_js.set_xticks(ticks, spectra.names, rotation=90, fontsize=8)
    ax_js.set_yticks(ticks, spectra.names, fontsize=8)
    if nb <= 12:
        for i in range(nb):
            for j in range(nb):
                ax_js.text(j, i, f"{js[i, j]:.2f}", ha="center", va="center", fontsize=8,
                           color="w" if js[i, j] < 0.6 * js.max() else "k")
    ax_js.set_title(f"Jensen–Shannon distance (mean {spectra.heterogeneity:.3f} = heterogeneity)")
    fig.colorbar(im, ax=ax_js, label="JS distance (base 2; 0 = same spectrum, 1 = disjoint)")
    fig.suptitle(title, fontsize=11)
    return save_figure(fig, path)


def plot_landscape(slice_: LandscapeSlice, path: str | Path, title: str = "") -> Path:
    """1-D slices/interpolations as a curve, 2-D slices as filled contours, losses in nats/token; the
    checkpoint's own parameters are marked. Also ``.svg``."""
    fig = new_figure(6.5, 5)
    ax = fig.add_subplot()
    if slice_.kind == "2d":
        A, B = torch.meshgrid(slice_.alphas, slice_.betas, indexing="ij")
        cs = ax.contourf(A.numpy(), B.numpy(), slice_.losses.numpy(), levels=30, cmap="viridis")
        ax.contour(A.numpy(), B.numpy(), slice_.losses.numpy(), levels=15, colors="k", linewidths=0.4)
        fig.colorbar(cs, ax=ax, label="loss on the probe batch (nats/token)")
        ax.plot([0], [0], "r*", ms=12, label=f"checkpoint θ (loss {slice_.center_loss:.4f})")
        ax.set_xlabel("α: step along random direction d₁")
        ax.set_ylabel("β: step along random direction d₂")
        what = "loss L(θ + α d₁ + β d₂); d₁, d₂ random, filter-normalized (Li et al. 2018)"
        ax.legend(loc="upper right")
    elif slice_.kind == "interpolation":
        ax.plot(slice_.alphas, slice_.losses, "-o", ms=3, label="L((1 − α) θ_a + α θ_b)")
        ends = [(a, float(slice_.losses[(slice_.alphas - a).abs().argmin()])) for a in (0.0, 1.0)]
        ax.plot(*zip(*ends), "r*", ms=12, label="the two checkpoints (α = 0, 1)")
        ax.set_xlabel("α (0 = this checkpoint, 1 = --compare checkpoint)")
        ax.set_ylabel("loss on the probe batch (nats/token)")
        what = "linear interpolation between checkpoints"
        ax.legend()
    else:
        ax.plot(slice_.alphas, slice_.losses, "-o", ms=3, label="L(θ + α d)")
        ax.plot([0], [slice_.center_loss], "r*", ms=12, label="checkpoint θ")
        ax.set_xlabel("α: step along a random filter-normalized direction d")
        ax.set_ylabel("loss on the probe batch (nats/token)")
        what = "loss along a random filter-normalized direction (Li et al. 2018)"
        ax.legend()
    ax.set_title(_titled(title, what))
    return save_figure(fig, path)


# Panels of the monitor figure: (title, y label, [(metric, its standard error or None, legend label)]).
MONITOR_PANELS = (
    ("top Hessian eigenvalue", "λ_max (nats/token per unit²)", [("lambda_max", None, "λ_max(H), Lanczos")]),
    ("traces", "trace (nats/token per unit²)", [("hessian_trace", "hessian_trace_se", "tr H (Hutchinson)"),
                                                 ("fisher_trace", "fisher_trace_se", "tr F (Hutchinson)")]),
    ("preconditioned sharpness", "λ_max(P⁻¹H)", [("precond_sharpness", None, "optimizer's λ_max(P⁻¹H)"),
                                                 ("eos_threshold", None, "edge-of-stability threshold")]),
    ("gradient noise scale", "batch size (sequences)", [("b_simple", None, "B_simple"), ("b_noise", None, "B_noise")]),
    ("generalization gap", "loss (nats/token)", [("gap", None, "val − train loss on the probe batches")]),
)


def plot_monitor(records: list[dict], path: str | Path, prefix: str = "curv/", title: str = "") -> Path:
    """The :class:`~infogeom.curvature.CurvatureMonitor` series of ``records`` (metrics.jsonl) against the
    step, one panel per family it logged; traces with ±2 SE error bars. Also ``.svg``."""
    panels = [(t, y, [c for c in curves if any(prefix + c[0] in r for r in records)])
              for t, y, curves in MONITOR_PANELS]
    panels = [p for p in panels if p[2]]
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig = new_figure(4.6 * cols, 3.6 * rows)
    axes = fig.subplots(rows, cols, squeeze=False).reshape(-1)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    for ax, (name, ylabel, curves) in zip(axes, panels):
        for (key, se_key, label), style in zip(curves, curve_styles(len(curves))):
            rows = [r for r in records if prefix + key in r]
            steps = [r["step"] for r in rows]
            values = torch.tensor([float(r[prefix + key]) for r in rows])
            if se_key is not None and all(prefix + se_key in r for r in rows):
                se = [2 * float(r[prefix + se_key]) for r in rows]
                ax.errorbar(steps, values, yerr=se, marker="o", ms=3, capsize=3, label=f"{label} ± 2 SE", **style)
            else:
                ax.plot(steps, values, marker="o", ms=3, label=label, **style)
        ax.set(title=name, xlabel="training step", ylabel=ylabel)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title, fontsize=11)
    return save_figure(fig, path)
