"""PNG plots and JSON files for curvature results (matplotlib's object API, no global pyplot state)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from matplotlib.figure import Figure

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


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    os.replace(tmp, path)
    return path


def plot_density(density: SpectralDensity, path: str | Path, title: str = "Spectral density (SLQ)") -> Path:
    """Density on a log scale (Hessian spectra span decades) with the quadrature nodes as a rug."""
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    floor = float(density.density.max()) * 1e-8
    ax.semilogy(density.grid, density.density.clamp_min(floor), lw=1.5)
    ax.plot(density.nodes.reshape(-1), [floor] * density.nodes.numel(), "|", color="k", alpha=0.4)
    ax.set_xlabel("eigenvalue")
    ax.set_ylabel("density")
    ax.set_title(f"{title}, σ = {density.sigma:.3g}")
    return _save(fig, path)


def plot_block_spectra(spectra: BlockSpectra, path: str | Path, max_blocks: int = 12) -> Path:
    """Block densities (up to ``max_blocks`` curves) and the pairwise JS-distance matrix."""
    fig = Figure(figsize=(11, 4))
    ax, ax_js = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    floor = float(spectra.densities.max()) * 1e-8
    for name, dens in list(zip(spectra.names, spectra.densities))[:max_blocks]:
        ax.semilogy(spectra.grid, dens.clamp_min(floor), lw=1, label=name)
    ax.set_xlabel("eigenvalue")
    ax.set_ylabel("density")
    ax.set_title(f"Per-block spectra (heterogeneity {spectra.heterogeneity:.3f})")
    ax.legend(fontsize=6)
    im = ax_js.imshow(spectra.js.numpy(), vmin=0, vmax=1, cmap="viridis")
    ax_js.set_title("JS distance between blocks")
    ticks = range(len(spectra.names))
    ax_js.set_xticks(ticks, spectra.names, rotation=90, fontsize=5)
    ax_js.set_yticks(ticks, spectra.names, fontsize=5)
    fig.colorbar(im, ax=ax_js)
    return _save(fig, path)


def plot_landscape(slice_: LandscapeSlice, path: str | Path, title: str | None = None) -> Path:
    """1-D slices/interpolations as a curve, 2-D slices as a filled contour plot."""
    fig = Figure(figsize=(6, 4.5))
    ax = fig.add_subplot()
    if slice_.kind == "2d":
        A, B = torch.meshgrid(slice_.alphas, slice_.betas, indexing="ij")
        cs = ax.contourf(A.numpy(), B.numpy(), slice_.losses.numpy(), levels=30, cmap="viridis")
        ax.contour(A.numpy(), B.numpy(), slice_.losses.numpy(), levels=15, colors="k", linewidths=0.4)
        fig.colorbar(cs, ax=ax, label="loss")
        ax.plot([0], [0], "r*")
        ax.set_xlabel("α (direction 1)")
        ax.set_ylabel("β (direction 2)")
    else:
        ax.plot(slice_.alphas, slice_.losses, "-o", ms=3)
        ax.set_xlabel("α (0 = first, 1 = second parameter set)" if slice_.kind == "interpolation" else "α")
        ax.set_ylabel("loss")
    ax.set_title(title or f"Loss landscape ({slice_.kind})")
    return _save(fig, path)
