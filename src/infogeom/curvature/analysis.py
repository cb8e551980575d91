"""One-shot curvature report of a model on a batch: the computations behind ``infogeom curvature``.

Each item of ``what`` computes one family of diagnostics, writes ``<item>.json`` (and a PNG where a plot
helps) into ``out_dir`` and returns table rows ``(quantity, value, detail)``:

- ``eig``: top-k eigenvalues of the operator (Lanczos) with residuals;
- ``trace``: Hutchinson and Hutch++ traces with standard errors (±2 SE ≈ 95%);
- ``density``: SLQ spectral density (``density.png``);
- ``blocks``: per-block spectra and the block heterogeneity (``blocks.png``);
- ``sharpness``: λ_max(H), SAM and ASAM ε-sharpness, and (with an optimizer) λ_max(P⁻¹H) vs its EoS
  threshold;
- ``noise``: gradient noise scale B_simple, B_noise;
- ``landscape``: filter-normalized 2-D (or 1-D) loss slice (``landscape.png``);
- ``interpolate``: loss along the line to a second parameter set (``interpolation.png``).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from ..errors import InfogeomError
from ..geometry import HessianOperator, per_example_gradients
from ..geometry.functional import Batch
from ..models.gpt import lm_loss
from .blocks import block_spectra, parameter_blocks
from .budget import calibrate, plan
from .density import spectral_density
from .lanczos import eigsh
from .landscape import interpolate_models, loss_landscape
from .noise import noise_scale
from .operators import CountedOperator, build_operator
from .plots import plot_block_spectra, plot_density, plot_landscape, save_json
from .sharpness import epsilon_sharpness, optimizer_sharpness
from .trace import hutchinson, hutchpp

ITEMS = ("eig", "trace", "density", "blocks", "sharpness", "noise", "landscape", "interpolate")
Row = tuple[str, str, str]
# Sizes used when neither the caller nor a budget sets them.
DEFAULT_SIZES = {"probes": 32, "hutchpp_probes": 48, "lanczos_steps": 64, "density_probes": 4, "block_steps": 32,
                 "grid": 21}


@dataclass
class AnalysisOptions:
    """Knobs of :func:`analyze`. Sizes left None come from ``budget`` (seconds for all items, see
    :mod:`.budget`) or, without a budget, from :data:`DEFAULT_SIZES`. ``threads``: torch threads (None:
    the faster of all cores and one, measured when budgeting). ``title``: what the figures name (model,
    checkpoint step)."""

    operator: str = "hessian"
    k: int = 3
    tol: float = 1e-4
    probes: int | None = None
    hutchpp_probes: int | None = None
    lanczos_steps: int | None = None
    density_probes: int | None = None
    block_steps: int | None = None
    granularity: str = "sublayer"
    n_head: int | None = None
    rho: float = 0.05
    dims: int = 2
    grid: int | None = None
    span: float = 1.0
    seed: int = 0
    progress: bool = False
    budget: float | None = None
    threads: int | None = None
    title: str = ""
    token_chunk: int | str | None = "auto"  # GGN/Fisher tokens per [tokens, V] block (OutputCurvatureOperator)


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


def _pm(value: float, se: float) -> str:
    rel = f", {100 * se / abs(value):.2g}%" if value else ""
    return f"± {se:.3g} (2 SE ≈ 95%{rel})"


def analyze(
    model: nn.Module,
    batch: Batch,
    what: Sequence[str],
    out_dir: str | Path,
    options: AnalysisOptions | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    compare: Mapping[str, torch.Tensor] | None = None,
) -> list[Row]:
    """All rows of :func:`iter_analysis` (see the module doc) as one list."""
    return [row for _, rows in iter_analysis(model, batch, what, out_dir, options, optimizer, compare) for row in rows]


def iter_analysis(
    model: nn.Module,
    batch: Batch,
    what: Sequence[str],
    out_dir: str | Path,
    options: AnalysisOptions | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    compare: Mapping[str, torch.Tensor] | None = None,
) -> Iterator[tuple[str, list[Row]]]:
    """Run the items ``what`` on ``model`` and ``batch``, yielding ``(item, rows)`` as each finishes (first
    ``("plan", rows)`` when budgeted). Each item's ``<item>.json`` (and PNG) is written when it finishes and
    ``summary.json`` (settings and all rows so far) after every item, so an interrupted run keeps what it
    finished."""
    o = dataclasses.replace(options or AnalysisOptions())
    out = Path(out_dir)
    if "interpolate" in what and compare is None:
        raise InfogeomError("--what interpolate needs a second checkpoint (--compare)")
    gen = torch.Generator().manual_seed(o.seed)
    needs_op = {"eig", "trace", "density", "blocks"} & set(what) or (o.operator == "hessian" and "noise" in what)
    op = build_operator(o.operator, model, batch, generator=gen, token_chunk=o.token_chunk) if needs_op else None
    blocks = parameter_blocks(op, o.granularity, o.n_head) if "blocks" in what else {}
    done: list[Row] = []
    summary = {"items": list(what), "title": o.title, "rows": done}
    if o.budget is not None:
        def forward() -> None:
            with torch.no_grad():
                lm_loss(model(batch[0]), batch[1])

        product = forward  # only loss evaluations (landscape, interpolate): time those
        if set(what) - {"landscape", "interpolate"}:
            cal_op = op if op is not None else HessianOperator(model, batch)
            probe = torch.ones(cal_op.dim, 1, dtype=cal_op.dtype, device=cal_op.device)

            def product() -> None:
                cal_op.matmat(probe)

        cal = calibrate(product, forward, o.threads)
        dim = op.dim if op is not None else sum(p.numel() for p in model.parameters() if p.requires_grad)
        o, cost = plan(o.budget, cal, what, o, len(batch[0]), max(len(blocks), 1), dim)
        total = sum(cost.values())
        parts = ", ".join(f"{i} {c:.0f}s" for i, c in cost.items())
        rows = [("budget", f"{o.budget:g} s", f"planned {total:.0f} s: {parts}"),
                ("calibration", f"{cal.product_s:.3g} s/product", cal.describe())]
        summary["calibration"] = dataclasses.asdict(cal)
        done += rows
        yield "plan", rows
    elif o.threads:
        torch.set_num_threads(o.threads)
    for key, value in DEFAULT_SIZES.items():
        if getattr(o, key) is None:
            setattr(o, key, value)
    summary["options"] = dataclasses.asdict(o)
    label = f"{o.title}: " if o.title else ""
    for item in what:
        start = time.perf_counter()
        rows = _ITEM[item](model, batch, op, o, gen, out, label, blocks, optimizer, compare)
        rows.append((f"  ({item} time)", f"{time.perf_counter() - start:.2f}s", ""))
        done += rows
        save_json(summary, out / "summary.json")
        yield item, rows


def _bar(o: AnalysisOptions, item: str, total: int | None) -> tqdm:
    return tqdm(total=total, desc=item, unit="product", disable=not o.progress, leave=False, dynamic_ncols=True)


def _eig(model, batch, op, o, gen, out, label, blocks, optimizer, compare) -> list[Row]:
    res = eigsh(op, k=o.k, tol=o.tol, generator=gen, progress=o.progress)
    save_json({"operator": o.operator, **res.to_dict()}, out / "eig.json")
    rows = [(f"{o.operator} λ_{i}", _g(v), f"residual {r:.2e} (tol {o.tol:g}·|λ|)")
            for i, (v, r) in enumerate(zip(res.values.tolist(), res.residuals.tolist()), 1)]
    return rows + [("lanczos", f"{res.matvecs} products", "converged" if res.converged else "NOT converged")]


def _trace(model, batch, op, o, gen, out, label, blocks, optimizer, compare) -> list[Row]:
    """Hutch++ and, unless ``o.probes`` is 0 (a budget too small for both), Hutchinson as a cross-check."""
    hpp_n = max(6, o.hutchpp_probes)
    with _bar(o, "trace", o.probes + 3 * (hpp_n // 3)) as bar:
        counted = CountedOperator(op, bar)
        hpp = hutchpp(counted, hpp_n, gen)
        h = hutchinson(counted, o.probes, gen) if o.probes else None
    result = {"operator": o.operator, "hutchpp": hpp.to_dict()}
    rows = [(f"{o.operator} trace (Hutch++)", _g(hpp.value),
             f"{_pm(hpp.value, hpp.stderr)}; {counted.sketches} sketch columns, {counted.products} products, "
             f"{counted.forms} forms")]
    if h is not None:
        result["hutchinson"] = h.to_dict()
        rows.append((f"{o.operator} trace (Hutchinson)", _g(h.value),
                     f"{_pm(h.value, h.stderr)}; {h.num_probes} probes"))
    save_json(result, out / "trace.json")
    return rows


def _density(model, batch, op, o, gen, out, label, blocks, optimizer, compare) -> list[Row]:
    with _bar(o, "density", o.density_probes * min(o.lanczos_steps, op.dim)) as bar:
        sd = spectral_density(CountedOperator(op, bar), o.density_probes, o.lanczos_steps, generator=gen)
    save_json({"operator": o.operator, **sd.to_dict()}, out / "density.json")
    plot_density(sd, out / "density.png", f"{label}{o.operator} spectral density")
    m, trace = sd.nodes.shape[1], sd.dim * sd.moment(1)
    return [("density", f"[{_g(float(sd.nodes.min()))}, {_g(float(sd.nodes.max()))}]",
             f"Ritz range; {sd.nodes.shape[0]} probes × {m} steps (moments exact to degree {2 * m - 1})"),
            ("density trace (SLQ)", _g(trace), _pm(trace, sd.dim * sd.moment_stderr(1)))]


def _blocks(model, batch, op, o, gen, out, label, blocks, optimizer, compare) -> list[Row]:
    n = o.density_probes
    m = min(o.block_steps, max(int(v.numel()) for v in blocks.values()))
    with _bar(o, "blocks", m * n * len(blocks)) as bar:
        bs = block_spectra(CountedOperator(op, bar), blocks, n, m, generator=gen)
    save_json({"operator": o.operator, "granularity": o.granularity, **bs.to_dict()}, out / "blocks.json")
    plot_block_spectra(bs, out / "blocks.png", f"{label}{o.operator}, {o.granularity} blocks")
    top = max(bs.summary.items(), key=lambda kv: kv[1]["lambda_max"])
    return [(f"block heterogeneity ({o.granularity})", _g(bs.heterogeneity),
             f"mean JS distance over {len(bs.names)} blocks; {n} probes × {m} steps each → blocks.png"),
            ("sharpest block", top[0], f"λ_max ≈ {_g(top[1]['lambda_max'])}")]


def _sharpness(model, batch, op, o, gen, out, label, blocks, optimizer, compare) -> list[Row]:
    H = HessianOperator(model, batch)
    lam = eigsh(H, k=1, tol=o.tol, generator=gen, progress=o.progress)
    sam = epsilon_sharpness(model, batch, rho=o.rho)
    asam = epsilon_sharpness(model, batch, rho=o.rho, adaptive=True)
    result = {"lambda_max": float(lam.values[0]), "sam": sam.to_dict(), "asam": asam.to_dict()}
    rows = [("Hessian λ_max", _g(result["lambda_max"]), f"residual {float(lam.residuals[0]):.2e}"),
            (f"SAM ε-sharpness (ρ={o.rho})", _g(sam.value), f"loss {sam.loss:.4f}"),
            (f"ASAM ε-sharpness (ρ={o.rho})", _g(asam.value), "adaptive |w|-scaled ball")]
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
    return rows


def _noise(model, batch, op, o, gen, out, label, blocks, optimizer, compare) -> list[Row]:
    H = op if o.operator == "hessian" else HessianOperator(model, batch)
    with _bar(o, "noise", len(batch[0]) + 1) as bar:
        ns = noise_scale(per_example_gradients(model, batch), CountedOperator(H, bar), chunk=1)
    save_json(ns.to_dict(), out / "noise.json")
    return [("B_simple", _g(ns.b_simple), f"tr Σ {ns.trace_sigma:.4g}, |G|² {ns.grad_norm_sq:.4g}"),
            ("B_noise", _g(ns.b_noise), f"{ns.batch_size} sequences (per-example gradients)")]


def _landscape(model, batch, op, o, gen, out, label, blocks, optimizer, compare) -> list[Row]:
    sl = loss_landscape(model, batch, dims=o.dims, num_points=o.grid, span=o.span, generator=gen, progress=o.progress)
    save_json(sl.to_dict(), out / "landscape.json")
    plot_landscape(sl, out / "landscape.png", label.rstrip(": "))
    grid = "×".join([str(o.grid)] * o.dims)
    return [(f"landscape ({o.dims}-D, ±{o.span})", f"min {float(sl.losses.min()):.4f}",
             f"center {sl.center_loss:.4f}, max {float(sl.losses.max()):.4f} nats/token; grid {grid} → landscape.png")]


def _interpolate(model, batch, op, o, gen, out, label, blocks, optimizer, compare) -> list[Row]:
    sl = interpolate_models(model, compare, batch, progress=o.progress)
    save_json(sl.to_dict(), out / "interpolation.json")
    plot_landscape(sl, out / "interpolation.png", label.rstrip(": "))
    ends = [float(sl.losses[(sl.alphas - a).abs().argmin()]) for a in (0.0, 1.0)]
    barrier = float(sl.losses[(sl.alphas >= -1e-9) & (sl.alphas <= 1 + 1e-9)].max()) - max(ends)
    return [("interpolation barrier", _g(barrier), f"‖θ_b − θ_a‖ = {sl.meta['distance']:.4g} → interpolation.png")]


_ITEM = {"eig": _eig, "trace": _trace, "density": _density, "blocks": _blocks, "sharpness": _sharpness,
         "noise": _noise, "landscape": _landscape, "interpolate": _interpolate}


def format_table(rows: Sequence[Row], widths: tuple[int, int] | None = None) -> str:
    """Rows as an aligned three-column text table (columns ``widths`` wide, default: the widest entry)."""
    w0, w1 = widths or (max(len(r[0]) for r in rows), max(len(r[1]) for r in rows))
    return "\n".join(f"{a:<{w0}}  {b:>{w1}}  {c}".rstrip() for a, b, c in rows)
