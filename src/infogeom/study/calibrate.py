"""Calibration probe: how much slower (or faster) this machine runs the study's kind of work than the reference.

The probe repeats, for ``seconds``, one unit of work on one torch thread: a forward and backward pass of a small
GPT (2 layers, width 48, batch 8 × 64 tokens, the 66.8k rung's shape) and a 256×256 float32 matmul chain. The
slowdown is ``REFERENCE_RATE / rate``: a cell's estimated time here is ``est_seconds × slowdown``. Rerun
``python -m infogeom.study.calibrate`` on the reference machine to refresh :data:`REFERENCE_RATE`.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch

from .cache import write_json

#: probe units per second that the cells' reference estimates correspond to. Checked against the cells' own
#: wall times on the 2-core development machine (2026-12-06; probe 157 units/s quiet, 88 beside a test run): the
#: quick profile's cells took 0.32× their reference estimates and the full profile's 0.3–0.45× (by experiment,
#: E6 0.11, E1 partly beside a test run 0.77), where the earlier rate of 25 predicted 0.16×, i.e. half the time
#: they took; 157 × 0.32 ≈ 50.
REFERENCE_RATE = 50.0
CALIBRATION = "calibration.json"


def _probe_unit():
    from ..models import GPT, GPTConfig

    g = torch.Generator().manual_seed(0)
    model = GPT(GPTConfig(vocab_size=84, block_size=64, n_layer=2, n_head=4, n_embd=48))
    x = torch.randint(0, 84, (8, 64), generator=g)
    a = torch.randn(256, 256, generator=g) / 16

    def unit() -> None:
        model.zero_grad(set_to_none=True)
        logits = model(x)
        logits = logits[0] if isinstance(logits, tuple) else logits
        torch.nn.functional.cross_entropy(logits.reshape(-1, 84), x.reshape(-1)).backward()
        b = a
        for _ in range(4):
            b = b @ a

    return unit


def measure_rate(seconds: float) -> float:
    """Probe units per second on one torch thread, measured for about ``seconds`` (after one warm-up unit)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        unit = _probe_unit()
        unit()
        n, t0 = 0, time.perf_counter()
        while True:
            unit()
            n += 1
            elapsed = time.perf_counter() - t0
            if elapsed >= seconds:
                return n / elapsed
    finally:
        torch.set_num_threads(threads)


def _machine() -> dict:
    return {"host": platform.node(), "cpus": os.cpu_count()}


def slowdown(seconds: float, cache: Path | None = None, max_age_s: float = 3600.0) -> tuple[float, bool]:
    """``(REFERENCE_RATE / rate, measured_now)``; ``seconds <= 0`` means 1.0 (no probe).

    A probe stored in ``cache`` on this machine less than ``max_age_s`` ago is reused (resuming a study does not
    pay for the probe again); a new measurement is stored there.
    """
    if seconds <= 0:
        return 1.0, False
    if cache is not None and cache.exists():
        try:
            old = json.loads(cache.read_text())
            if old["machine"] == _machine() and time.time() - old["time"] < max_age_s:
                return REFERENCE_RATE / old["rate"], False
        except (OSError, ValueError, KeyError, TypeError, ZeroDivisionError):
            pass  # a bad cache is just measured again
    rate = measure_rate(seconds)
    if cache is not None:
        write_json(cache, {"rate": rate, "seconds": seconds, "time": time.time(), "machine": _machine(),
                           "reference_rate": REFERENCE_RATE})
    return REFERENCE_RATE / rate, True


if __name__ == "__main__":  # pragma: no cover
    print(f"{measure_rate(20.0):.2f} probe units/s (REFERENCE_RATE = {REFERENCE_RATE})")
