"""Curvature measured while a model trains, within a time budget.

:class:`CurvatureMonitor` is a trainer :class:`~infogeom.train.Callback`. At the start it draws fixed probe
batches (train and validation, from its own seeded generator, so every measurement sees the same data);
every ``every`` steps it computes the configured quantities on them and adds them to the step's metrics
under ``curv/<name>`` (so they land in metrics.jsonl and TensorBoard):

- ``lambda_max``: top Hessian eigenvalue (Lanczos, relative residual ``tol``), and ``lambda_max_matvecs``;
- ``hessian_trace``: Hutchinson trace of the Hessian (``probes`` probes) and its ``hessian_trace_se``;
- ``fisher_trace``: Hutchinson trace of the exact Fisher (= GGN for softmax cross-entropy) and its SE;
- ``noise_scale``: ``b_simple`` and ``b_noise`` from per-sequence gradients of the probe batch;
- ``gap``: validation loss − training loss on the two probe batches (and both losses);
- ``precond_sharpness``: the optimizer's own λ_max(P⁻¹H) (P = ``optimizer.preconditioner()``, any registered
  optimizer or torch's own; λ_max(H) for plain SGD), its ``eos_threshold`` and ``eos_ratio`` = sharpness /
  threshold (≈ 1 at the edge of stability).

Time budget: the trainer's ``train_time`` includes callback time, so the monitor's overhead is ``spent /
(train_time − spent)``. A due measurement is skipped when spent + (duration of the previous measurement)
would exceed ``budget`` × (train_time − spent); skipped steps are counted, so measurements thin out
automatically when they are expensive. The first measurement always runs (its cost is unknown until then).
At the end the overhead is printed and written to ``<out_dir>/curvature_monitor.json``, and the logged series
are plotted in ``<out_dir>/curvature.png`` (+ ``.svg``), beside the trainer's ``loss.png``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..errors import InfogeomError
from ..geometry import FisherOperator, HessianOperator
from ..models.gpt import lm_loss
from ..operators import suspend_captures
from ..train.callbacks import Callback
from ..train.metrics import METRICS_FILE, read_metrics
from .lanczos import eigsh
from .noise import gradient_noise_scale
from .plots import plot_monitor, save_json
from .sharpness import optimizer_sharpness
from .trace import hutchinson

MONITOR_QUANTITIES = (
    "lambda_max",
    "hessian_trace",
    "fisher_trace",
    "noise_scale",
    "gap",
    "precond_sharpness",
)
_NEEDS_HESSIAN = {"lambda_max", "hessian_trace", "precond_sharpness"}


class CurvatureMonitor(Callback):
    """Measure ``quantities`` (subset of :data:`MONITOR_QUANTITIES`) every ``every`` steps on a probe batch
    of ``batch_size`` sequences (``block_size`` tokens, default the training block size), within ``budget``
    (fraction of training time). ``probes``: Hutchinson probes; ``tol``: Lanczos residual tolerance;
    ``names``: parameter subset (default all); ``prefix``: metric-name prefix."""

    def __init__(
        self,
        every: int = 100,
        quantities: Sequence[str] = ("lambda_max", "hessian_trace", "gap"),
        batch_size: int = 8,
        block_size: int | None = None,
        budget: float = 0.10,
        probes: int = 16,
        tol: float = 1e-3,
        seed: int = 0,
        names: Sequence[str] | None = None,
        prefix: str = "curv/",
    ):
        unknown = [q for q in quantities if q not in MONITOR_QUANTITIES]
        if unknown:
            raise InfogeomError(
                f"unknown monitor quantity {unknown[0]!r}; choose from {', '.join(MONITOR_QUANTITIES)}"
            )
        if int(every) < 1 or not 0 < budget <= 1:
            raise InfogeomError(f"need every >= 1 and 0 < budget <= 1, got every={every}, budget={budget}")
        self.every, self.quantities, self.batch_size = int(every), tuple(quantities), int(batch_size)
        self.block_size, self.budget, self.probes, self.tol = (
            block_size,
            float(budget),
            int(probes),
            float(tol),
        )
        self.seed, self.names, self.prefix = int(seed), names, prefix
        self.spent, self.last_cost = 0.0, 0.0
        self.measured, self.skipped = 0, 0
        self.train_batch = self.val_batch = None
        self._precond_failed = False

    # --- callback hooks ------------------------------------------------------------------------------------
    def on_train_start(self, trainer) -> None:
        block = self.block_size or trainer.config.data.block_size
        gen = torch.Generator().manual_seed(self.seed)
        self.train_batch = trainer.data.get_batch("train", self.batch_size, block, gen, device=trainer.device)
        if "gap" in self.quantities:
            self.val_batch = trainer.data.get_batch("val", self.batch_size, block, gen, device=trainer.device)

    def on_step_end(self, trainer, metrics: dict) -> None:
        if trainer.step % self.every or not trainer.is_main or self.train_batch is None:
            return
        base = max(trainer.train_time - self.spent, 0.0)
        if self.measured and self.spent + self.last_cost > self.budget * base:
            self.skipped += 1
            return
        start = time.perf_counter()
        values = self.measure(trainer.model, trainer.optimizer)
        self.last_cost = time.perf_counter() - start
        self.spent += self.last_cost
        self.measured += 1
        values["time"] = self.last_cost
        values["overhead"] = self.spent / max(base, 1e-9)
        metrics.update({self.prefix + k: v for k, v in values.items()})

    def on_train_end(self, trainer) -> None:
        if not trainer.is_main:
            return
        report = self.report(trainer.train_time)
        if trainer.out_dir:
            save_json(report, Path(trainer.out_dir) / "curvature_monitor.json")
            records = read_metrics(Path(trainer.out_dir) / METRICS_FILE)
            if any(k.startswith(self.prefix) for r in records for k in r):
                plot_monitor(records, Path(trainer.out_dir) / "curvature.png", self.prefix,
                             f"curvature during training ({trainer.out_dir}): probe batch {self.batch_size} sequences")
        tqdm.write(
            f"curvature monitor: {report['measured']} measurements ({report['skipped']} skipped), "
            f"{report['monitor_seconds']:.1f}s = {100 * report['overhead']:.1f}% of training time "
            f"(budget {100 * self.budget:.0f}%)"
        )

    # --- measurement ---------------------------------------------------------------------------------------
    def report(self, train_time: float) -> dict:
        """Time accounting: monitor seconds, training seconds without the monitor, and their ratio."""
        base = max(train_time - self.spent, 1e-9)
        return {
            "measured": self.measured,
            "skipped": self.skipped,
            "monitor_seconds": self.spent,
            "train_seconds": base,
            "overhead": self.spent / base,
            "budget": self.budget,
            "quantities": list(self.quantities),
            "every": self.every,
        }

    def measure(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict:
        """The configured quantities on the probe batches (plain floats). Live captures are suspended, so the
        optimizer's hooks, factors and random generator never see the probe batches."""
        with suspend_captures():
            return self._measure(model, optimizer)

    def _measure(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None) -> dict:
        q, out = set(self.quantities), {}
        gen = torch.Generator().manual_seed(self.seed + 1)
        batch = self.train_batch
        H = HessianOperator(model, batch, names=self.names) if q & _NEEDS_HESSIAN else None
        if "lambda_max" in q:
            res = eigsh(H, k=1, tol=self.tol, generator=gen, residuals=False)
            out.update(lambda_max=float(res.values[0]), lambda_max_matvecs=res.matvecs)
        if "hessian_trace" in q:
            est = hutchinson(H, self.probes, gen)
            out.update(hessian_trace=est.value, hessian_trace_se=est.stderr)
        if "fisher_trace" in q:
            est = hutchinson(FisherOperator(model, batch, names=self.names), self.probes, gen)
            out.update(fisher_trace=est.value, fisher_trace_se=est.stderr)
        if "noise_scale" in q:
            ns = gradient_noise_scale(model, batch, names=self.names)
            out.update(b_simple=ns.b_simple, b_noise=ns.b_noise)
        if "gap" in q:
            with torch.no_grad():
                was = model.training
                model.eval()
                train_loss = float(lm_loss(model(batch[0]), batch[1]))
                val_loss = float(lm_loss(model(self.val_batch[0]), self.val_batch[1]))
                model.train(was)
            out.update(probe_train_loss=train_loss, probe_val_loss=val_loss, gap=val_loss - train_loss)
        if "precond_sharpness" in q and optimizer is not None and not self._precond_failed:
            try:
                info = optimizer_sharpness(H, optimizer, model, tol=self.tol, generator=gen, residuals=False)
            except (
                InfogeomError
            ) as exc:  # e.g. an optimizer without an Adam/SGD-type state: report once, go on
                self._precond_failed = True
                tqdm.write(f"curvature monitor: no preconditioned sharpness ({exc})")
            else:
                out["precond_sharpness"] = info["sharpness"]
                if math.isfinite(info["threshold"]):  # lr = 0 (e.g. the last step of a decay): no threshold
                    out.update(eos_threshold=info["threshold"], eos_ratio=info["ratio"])
        return out
