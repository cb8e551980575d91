"""Time budget of a curvature report: torch threads and per-item sizes chosen from measured costs.

Every item of :func:`~infogeom.curvature.analysis.analyze` costs (operator products) × (seconds per product)
or (loss evaluations) × (seconds per evaluation). :func:`calibrate` times one product at each candidate
thread count (all available cores, and one) and keeps the fastest: on a CPU shared with other jobs, intra-op
threads that wait for a busy core make every product many times slower (default 0.8M-parameter model,
batch 8×128, on the 2-core dev machine: 0.32 s per Hessian-vector product on 2 quiet threads, 0.52 s on 1;
with one core busy 1.65 s on 2 threads but 0.48 s on 1; at load ≈ 5, 17 s on 2 threads but 1.1 s on 1 — the
cause of the 10–13× slower curvature runs on a loaded machine), so the count is measured, not assumed.
:func:`plan` then splits the budget:
items with a fixed cost (``eig`` converges in ≈ ``EIG_PRODUCTS`` products, ``noise`` needs B + 1, ``sharpness``
≈ ``SHARPNESS_PRODUCTS``) are charged first, and the rest is shared by ``trace``, ``density``, ``blocks`` and
``landscape`` in proportion to :data:`WEIGHTS`, each with a floor below which its estimate would say
nothing (:data:`MINIMUM`). A trace share too small for both estimators' floors buys Hutch++ alone
(``probes = 0``: no Hutchinson row; the density's SLQ trace is a Hutchinson estimate on its own probes).
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

EIG_PRODUCTS = 30
SHARPNESS_PRODUCTS = 80
INTERPOLATE_POINTS = 31
WEIGHTS = {"trace": 1.0, "density": 1.2, "blocks": 1.5, "landscape": 0.4}
MINIMUM = {"probes": 16, "hutchpp_probes": 24, "lanczos_steps": 12, "density_probes": 2, "grid": 7}
MAXIMUM = {"probes": 512, "hutchpp_probes": 192, "lanczos_steps": 64}
MAX_FLOATS = 1e8  # 400 MB of float32 vectors per estimator


@dataclass
class Calibration:
    """Seconds per operator product (one column) and per loss evaluation, with the thread count chosen and
    the product time measured at each candidate count (``tried``)."""

    product_s: float
    forward_s: float
    threads: int
    tried: dict[int, float]

    def describe(self) -> str:
        alt = ", ".join(f"{t} thread{'s' * (t > 1)}: {s:.3g} s" for t, s in self.tried.items() if t != self.threads)
        return (f"one product {self.product_s:.3g} s on {self.threads} thread{'s' * (self.threads > 1)}"
                + (f" ({alt})" if alt else "") + f", one loss evaluation {self.forward_s:.3g} s")


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def idle_cores(interval: float = 0.25) -> float | None:
    """Cores left idle by all processes over the next ``interval`` seconds (from ``/proc/stat``'s idle and
    iowait ticks), or None where that file is absent. Instantaneous, unlike ``os.getloadavg``, whose 1-minute
    average stays high for a minute after other jobs have stopped (which made a quiet machine look busy)."""

    def ticks() -> tuple[int, int]:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        return values[3] + values[4], sum(values[:8])

    try:
        idle0, total0 = ticks()
        time.sleep(interval)
        idle1, total1 = ticks()
    except (OSError, ValueError, IndexError):
        return None
    return (idle1 - idle0) / max(total1 - total0, 1) * (os.cpu_count() or 1)


def _thread_candidates() -> list[int]:
    """All cores and 1 — but only 1 while other jobs leave no core idle (:func:`idle_cores`, else the
    load average): then a trial product on all cores would itself take many times longer (17 s instead of
    1.1 s measured)."""
    cores = available_cores()
    idle = idle_cores()
    if idle is None:
        try:
            idle = os.cpu_count() - os.getloadavg()[0]
        except (AttributeError, OSError, TypeError):  # pragma: no cover - not Unix
            idle = float(cores)
    return [cores, 1] if cores > 1 and min(idle, cores) >= cores - 0.5 else [1]


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def calibrate(
    product: Callable[[], object], forward: Callable[[], object], threads: int | None = None
) -> Calibration:
    """Time ``product`` (one operator product) at ``threads`` intra-op threads, or — when None — at all
    available cores and at one thread (one only on a busy machine), keeping the faster (the setting stays in
    effect); then time
    ``forward`` (one loss evaluation). One untimed product first absorbs one-off costs."""
    candidates = [threads] if threads else _thread_candidates()
    torch.set_num_threads(candidates[0])
    product()
    tried = {}
    for t in candidates:
        torch.set_num_threads(t)
        tried[t] = _timed(product)
    best = min(tried, key=tried.get)
    torch.set_num_threads(best)
    forward()
    return Calibration(tried[best], _timed(forward), best, tried)


def _odd(x: float) -> int:
    n = int(x)
    return n if n % 2 else n - 1


def plan(budget: float, cal: Calibration, what: Sequence[str], options, batch_size: int, n_blocks: int = 1,
         dim: int = 1):
    """``options`` (an :class:`~infogeom.curvature.analysis.AnalysisOptions`) with every size left None
    filled in from ``budget`` seconds, and the estimated seconds per item ``{item: s}``. Sizes are capped so
    that fast products never make an estimator hold more than ``MAX_FLOATS`` numbers of ``dim`` coordinates
    (Hutch++ keeps ≈ 4 blocks of m/3 vectors, SLQ probes × steps Krylov vectors) or run past
    ``MAXIMUM``."""
    t, f = cal.product_s, cal.forward_s
    vectors = max(1, int(MAX_FLOATS // max(dim, 1)))
    fixed = {"eig": EIG_PRODUCTS * t, "noise": (batch_size + 2) * t, "sharpness": SHARPNESS_PRODUCTS * t,
             "interpolate": INTERPOLATE_POINTS * f}
    shared = [i for i in what if i in WEIGHTS]
    rest = max(budget - sum(fixed[i] for i in what if i in fixed), 0.0)
    share = {i: rest * WEIGHTS[i] / sum(WEIGHTS[j] for j in shared) for i in shared}
    o = dataclasses.replace(options)
    trace_products = share.get("trace", 0) / t
    both = o.probes is not None or trace_products >= MINIMUM["probes"] + MINIMUM["hutchpp_probes"]
    if o.hutchpp_probes is None:  # Hutch++ first; Hutchinson, the cross-check, only where the share pays both
        k = min(MAXIMUM["hutchpp_probes"] // 3, vectors // 4, int(trace_products / (2 if both else 1) / 3))
        o.hutchpp_probes = max(MINIMUM["hutchpp_probes"], 3 * k)
    if o.probes is None:
        o.probes = max(MINIMUM["probes"], min(MAXIMUM["probes"], int(trace_products / 2))) if both else 0
    products = share.get("density", 0) / t
    if o.density_probes is None:
        o.density_probes = max(MINIMUM["density_probes"], min(8, int(products / 32)))
    if o.lanczos_steps is None:
        steps = min(MAXIMUM["lanczos_steps"], int(products / o.density_probes), vectors // o.density_probes)
        o.lanczos_steps = max(MINIMUM["lanczos_steps"], steps)
    if o.block_steps is None:  # one product of n_blocks·density_probes columns per step
        o.block_steps = min(32, max(8, int(share.get("blocks", 0) / t / (n_blocks * o.density_probes))))
    if o.grid is None:
        points = share.get("landscape", 0) / f
        side = points if o.dims == 1 else math.sqrt(points)
        o.grid = min(51 if o.dims == 1 else 21, max(MINIMUM["grid"], _odd(side)))
    cost = dict(fixed)
    cost.update(trace=(o.probes + 3 * (o.hutchpp_probes // 3)) * t,
                density=o.density_probes * o.lanczos_steps * t,
                blocks=o.block_steps * n_blocks * o.density_probes * t,
                landscape=o.grid ** o.dims * f)
    return o, {i: cost[i] for i in what}
