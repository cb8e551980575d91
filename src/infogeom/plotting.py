"""Figures shared by the commands: atomic PNG + SVG saving, curve styles that stay distinguishable for any
number of curves, and loss curves of training runs (``loss.png``, ``infogeom plot``).

Matplotlib's object API only (no global pyplot state), so figures can be drawn from any thread or process.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from matplotlib import colormaps
from matplotlib.figure import Figure

LINESTYLES = ("-", "--", "-.", ":")


def new_figure(width: float, height: float) -> Figure:
    """A figure laid out so labels never overlap (matplotlib's default 10-pt fonts; nothing here is smaller
    than 8 pt)."""
    return Figure(figsize=(width, height), layout="constrained")


def curve_styles(n: int) -> list[dict]:
    """``n`` distinct (colour, line style) pairs: tab10 colours, then the same colours dashed, dash-dotted,
    dotted (40 distinct styles), then colours sampled from a cyclic colour map."""
    if n <= 40:
        tab = colormaps["tab10"].colors
        return [{"color": tab[i % 10], "linestyle": LINESTYLES[i // 10]} for i in range(n)]
    cmap = colormaps["hsv"]
    return [{"color": cmap(i / n), "linestyle": LINESTYLES[i % 4]} for i in range(n)]


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` to ``path`` (PNG, 130 dpi) and a vector copy beside it (same name, ``.svg``), each via a
    temporary file and a rename so no reader sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for target in (path, path.with_suffix(".svg")):
        tmp = target.with_name(f".{target.stem}.tmp{target.suffix}")
        fig.savefig(tmp, dpi=130)
        os.replace(tmp, target)
    return path


def plot_loss_curves(runs: Sequence[tuple[str, Sequence[dict]]], path: str | Path, title: str) -> Path:
    """Training and validation loss of each ``(label, metrics records)`` run against optimizer steps (left)
    and training tokens (right); train loss solid, validation dashed with markers, one colour per run."""
    fig = new_figure(11, 4)
    axes = fig.subplots(1, 2, sharey=True)
    for (label, records), style in zip(runs, curve_styles(len(runs))):
        train = [r for r in records if "loss" in r and "val_loss" not in r]
        val = [r for r in records if "val_loss" in r]
        tokens_per_step = next((r["tokens"] / r["step"] for r in train if r.get("step") and "tokens" in r), None)
        for ax, x in zip(axes, ("step", "tokens")):
            scale = 1.0 if x == "step" else tokens_per_step
            if scale is None:
                continue
            ax.plot([r["step"] * scale for r in train], [r["loss"] for r in train], color=style["color"], lw=1.2,
                    label=f"{label}: train (mean over log interval)")
            ax.plot([r["step"] * scale for r in val], [r["val_loss"] for r in val], color=style["color"], lw=1.2,
                    ls="--", marker="o", ms=3, label=f"{label}: validation")
    axes[0].set_xlabel("optimizer step")
    axes[1].set_xlabel("training tokens")
    axes[0].set_ylabel("cross-entropy loss (nats/token)")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(loc="upper right")
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)
