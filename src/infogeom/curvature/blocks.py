"""Per-block spectra and block heterogeneity (in the spirit of Zhang et al. 2024, "Why Transformers Need
Adam: A Hessian Perspective", arXiv 2402.16788).

A *block* is a set S of flat parameter coordinates; its spectrum is that of the principal sub-block A_SS
(the curvature seen by a per-block optimizer). Partitions of an operator's parameters (``granularity``):

- ``tensor``   — each parameter tensor;
- ``module``   — each module (weight and bias together, e.g. ``blocks.0.attn.c_attn``);
- ``sublayer`` — per transformer layer i: ``layer{i}.attn``, ``layer{i}.mlp``, ``layer{i}.ln_1`` …;
  parameters outside the layers (embeddings, final norm, head) are grouped by module;
- ``layer``    — per transformer layer (``blocks.i`` / ``h.i`` / ``layers.i``), others by module;
- ``head``     — per attention head h of each layer: the rows of c_attn (and its bias) producing q, k, v of
  head h plus the columns of c_proj consuming head h's output (nn.Linear layout [out, in] as in infogeom's
  GPT, or Hugging Face Conv1D layout [in, out], detected from c_attn's shape). Other parameters are not in
  any block.

Block densities come from SLQ with all blocks advanced together: probes live on their block's coordinates
and products are masked, (M ⊙ A V), so one ``matmat`` per Lanczos step serves every block.

Heterogeneity. With ρ_b the block densities on one common grid (common σ), discretized and normalized to
probability vectors p_b, the Jensen–Shannon distance is

    d_JS(p, q) = sqrt( ½ KL(p ‖ m) + ½ KL(q ‖ m) ),  m = (p + q)/2,  logs base 2, so d_JS ∈ [0, 1],

and the block heterogeneity is the mean of d_JS over all pairs of blocks: 0 when every block has the same
spectral density, near 1 when their spectra do not overlap (Zhang et al. report larger JS distances between
the blocks of transformers than of CNNs, and link that to SGD's failure on transformers).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ..errors import InfogeomError
from ..operators import CurvatureOperator, rademacher
from .density import broaden, default_grid, default_sigma
from .lanczos import lanczos_quadrature

GRANULARITIES = ("tensor", "module", "sublayer", "layer", "head")
_LAYER = re.compile(r"(?:^|\.)(?:blocks|h|layers|layer)\.(\d+)\.([^.]+)")


def _module(name: str) -> str:
    return name.rsplit(".", 1)[0] if name.endswith((".weight", ".bias")) else name


def _group_key(name: str, granularity: str) -> str:
    if granularity == "tensor":
        return name
    match = _LAYER.search(name)
    if granularity == "module" or match is None:
        return _module(name)
    layer, part = match.groups()
    return f"layer{layer}" if granularity == "layer" else f"layer{layer}.{part}"


def _head_blocks(
    names: Sequence[str], shapes: Sequence[torch.Size], offsets: Sequence[int], n_head: int
) -> dict[str, torch.Tensor]:
    ids = {n: o + torch.arange(torch.Size(s).numel()).reshape(s) for n, s, o in zip(names, shapes, offsets)}
    blocks: dict[str, list[torch.Tensor]] = {}
    for name in names:
        if not name.endswith("attn.c_attn.weight"):
            continue
        prefix = name[: -len("c_attn.weight")]
        match = _LAYER.search(name)
        layer = match.group(1) if match else prefix.rstrip(".")
        w = ids[name]
        linear = w.shape[0] == 3 * w.shape[1]  # nn.Linear [3C, C]; HF Conv1D is [C, 3C]
        C = w.shape[1] if linear else w.shape[0]
        if C % n_head:
            raise InfogeomError(f"{name}: width {C} is not divisible by n_head={n_head}")
        d = C // n_head
        for h in range(n_head):
            parts = [w.view(3, n_head, d, C)[:, h] if linear else w.view(C, 3, n_head, d)[:, :, h]]
            if prefix + "c_attn.bias" in ids:
                parts.append(ids[prefix + "c_attn.bias"].view(3, n_head, d)[:, h])
            if prefix + "c_proj.weight" in ids:
                p = ids[prefix + "c_proj.weight"]
                parts.append(p.view(C, n_head, d)[:, h] if linear else p.view(n_head, d, C)[h])
            blocks[f"layer{layer}.head{h}"] = [t.reshape(-1) for t in parts]
    if not blocks:
        raise InfogeomError("granularity 'head' needs attention parameters named '...attn.c_attn.weight'")
    return {k: torch.cat(v) for k, v in blocks.items()}


def parameter_blocks(
    op: CurvatureOperator, granularity: str = "tensor", n_head: int | None = None
) -> dict[str, torch.Tensor]:
    """Partition ``op``'s flat coordinates into named blocks (``granularity`` as in the module doc); returns
    ``{block name: flat index [p]}`` in parameter order. ``n_head`` is required for 'head'."""
    if granularity not in GRANULARITIES:
        raise InfogeomError(f"unknown granularity {granularity!r}; choose one of {', '.join(GRANULARITIES)}")
    sizes = [torch.Size(s).numel() for s in op.shapes]
    offsets = [sum(sizes[:i]) for i in range(len(sizes))]
    if granularity == "head":
        if not n_head or n_head < 1:
            raise InfogeomError("granularity 'head' needs the number of attention heads (n_head)")
        return _head_blocks(op.names, op.shapes, offsets, int(n_head))
    groups: dict[str, list[torch.Tensor]] = {}
    for name, size, off in zip(op.names, sizes, offsets):
        groups.setdefault(_group_key(name, granularity), []).append(torch.arange(off, off + size))
    return {k: torch.cat(v) for k, v in groups.items()}


def js_distance(p: torch.Tensor, q: torch.Tensor) -> float:
    """Jensen–Shannon distance (base 2, in [0, 1]) between two non-negative vectors, normalized to sum 1."""
    p, q = (t.to(torch.float64).clamp_min(0) for t in (p, q))
    p, q = p / p.sum(), q / q.sum()
    p, q = (torch.where(t < 1e-300, torch.zeros_like(t), t) for t in (p, q))  # no denormals: a/m stays finite
    m = (p + q) / 2

    def kl(a: torch.Tensor) -> torch.Tensor:
        nz = a > 0
        return (a[nz] * torch.log2(a[nz] / m[nz])).sum()

    return math.sqrt(max(float(0.5 * kl(p) + 0.5 * kl(q)), 0.0))


@dataclass
class BlockSpectra:
    """Per-block SLQ spectra on a common ``grid``: ``densities [nb, G]``, quadrature ``nodes``/``weights``
    ``[nb, n, m]``, block ``sizes``, the pairwise ``js`` distance matrix ``[nb, nb]`` and ``heterogeneity``
    (mean pairwise JS distance)."""

    names: list[str]
    sizes: list[int]
    grid: torch.Tensor
    densities: torch.Tensor
    nodes: torch.Tensor
    weights: torch.Tensor
    sigma: float
    js: torch.Tensor
    heterogeneity: float
    summary: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "names": self.names,
            "sizes": self.sizes,
            "grid": self.grid.tolist(),
            "densities": self.densities.tolist(),
            "sigma": self.sigma,
            "js_distance": self.js.tolist(),
            "heterogeneity": self.heterogeneity,
            "blocks": self.summary,
        }


def block_spectra(
    op: CurvatureOperator,
    blocks: dict[str, torch.Tensor],
    num_probes: int = 2,
    steps: int = 32,
    sigma_rel: float = 0.01,
    num_points: int = 512,
    generator: torch.Generator | None = None,
) -> BlockSpectra:
    """SLQ densities of the diagonal blocks A_SS for ``blocks`` (from :func:`parameter_blocks`) and their
    heterogeneity. Cost: ``steps`` products of [P, nb·num_probes] masked vectors (all blocks at once).
    Per-block summary: size, λ_max and λ_min estimates (extreme Ritz values), trace estimate size·∫tρ."""
    if not blocks:
        raise InfogeomError("no blocks to analyse")
    names = list(blocks)
    nb, n = len(names), int(num_probes)
    mask = torch.zeros(op.dim, nb * n, dtype=op.dtype, device=op.device)
    for b, name in enumerate(names):
        mask[blocks[name].to(op.device), b * n : (b + 1) * n] = 1
    probes = rademacher((op.dim, nb * n), op.dtype, op.device, generator) * mask
    m = min(int(steps), max(int(v.numel()) for v in blocks.values()))
    nodes, weights = lanczos_quadrature(lambda V: mask * op.matmat(V), probes, m, generator, support=mask)
    nodes = nodes.to("cpu", torch.float64).reshape(nb, n, -1)
    weights = weights.to("cpu", torch.float64).reshape(nb, n, -1)
    live = weights > 1e-12  # exhausted Krylov directions of small blocks carry (numerically) zero weight
    sigma = default_sigma(nodes[live], sigma_rel)
    grid = default_grid(nodes[live], sigma, num_points)
    densities = torch.stack([broaden(nodes[b], weights[b], grid, sigma) for b in range(nb)])
    js = torch.zeros(nb, nb, dtype=torch.float64)
    for i in range(nb):
        for j in range(i + 1, nb):
            js[i, j] = js[j, i] = js_distance(densities[i], densities[j])
    pairs = nb * (nb - 1) / 2
    heterogeneity = float(js.triu(1).sum() / pairs) if pairs else 0.0
    sizes = [int(blocks[k].numel()) for k in names]
    summary = {}
    for b, name in enumerate(names):
        lv = nodes[b][live[b]]
        summary[name] = {
            "size": sizes[b],
            "lambda_max": float(lv.max()),
            "lambda_min": float(lv.min()),
            "trace": sizes[b] * float((weights[b] * nodes[b]).sum(1).mean()),
        }
    return BlockSpectra(names, sizes, grid, densities, nodes, weights, sigma, js, heterogeneity, summary)
