"""The training loop: ``Trainer(config, callbacks, resume).fit()`` or ``train(config)``.

One optimizer step = ``grad_accum`` micro-steps; each micro-step draws a global batch of ``data.batch_size``
random windows from the seeded training stream (a ``torch.Generator``), and under DDP rank r of W takes rows
[r·B/W, (r+1)·B/W): W processes see exactly the batches of one process, and DDP's gradient average equals the
one-process gradient of the mean loss. Loss per micro-step is the mean token cross-entropy; gradients are
accumulated as ∇(L/grad_accum), clipped to ``grad_clip`` (global norm), then ``optimizer.step()`` and the
learning-rate schedule step (warmup-cosine or warmup-stable-decay, :mod:`.schedule`).

Safety, for every optimizer (torch's own included): the global gradient norm is read each step (one host sync,
as AMP's GradScaler does); a non-finite one skips ``optimizer.step()`` (the schedule still advances), and
more than ``MAX_SKIPS`` skips in a row stop the run. Losses and update norms stay on the device and are read
once per ``log_every`` steps (every step only when callbacks are attached, since their ``metrics`` carry the
loss) and before every evaluation and checkpoint; a :class:`~.divergence.DivergenceMonitor` stops the run on a
non-finite or exploding loss or update (relative to the running median) before anything is saved, and each
checkpoint's weights are first probed on a fixed training batch, so the last checkpoint on disk is a good one.

The run folder is locked (:class:`~.rundir.RunLock`) from construction to :meth:`Trainer.close` or the end of
:meth:`Trainer.fit`; leftover temporary files of a killed write are removed under the lock. A folder counts as
a run once it holds a checkpoint: one killed before its first checkpoint is started afresh (with a note), by a
plain start or by ``resume='latest'``. Ctrl-C (SIGINT) or SIGTERM — or :meth:`Trainer.request_stop` — finishes
the current step, writes a checkpoint and returns ``stop_reason = 'interrupted'``. Resuming restores model,
optimizer, schedule, every RNG (per rank) and the data stream, so the continued run is bit-for-bit the
uninterrupted one.
"""

from __future__ import annotations

import contextlib
import copy
import math
import random
import signal
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from .. import __version__
from ..data import TokenData
from ..data.cache import atomic_write
from ..errors import InfogeomError
from ..geometry.functional import freeze_except
from ..models.gpt import lm_loss
from ..models.hf import config_dict
from ..optim import build_optimizer
from ..optim.safety import all_finite
from . import distributed
from .callbacks import Callback
from .checkpoint import (
    FORMAT,
    checkpoint_path,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    remove_temp_files,
    resolve_checkpoint,
    run_dir_of,
    save_checkpoint,
)
from .config import DTYPES, TrainConfig, config_to_dict, dumps_toml
from .divergence import DivergenceMonitor
from .evaluation import eval_batches, mean_loss
from .limits import check_memory, estimate_bytes
from .metrics import METRICS_FILE, MetricsLogger, read_metrics
from .modeling import build_model, check_vocab, inspect_hf, load_state, prepare_run_data
from .rundir import RunLock, check_output_dir
from .schedule import build_scheduler

# Model settings that do not change the parameters' shapes may differ on resume.
RESUMABLE_MODEL_KEYS = ("dropout", "attention", "lora_dropout")


@dataclass
class TrainResult:
    out_dir: Path
    history: list[dict]
    final_val_loss: float | None
    step: int
    train_time: float
    checkpoint: Path | None
    stop_reason: str  # 'max_steps' | 'max_seconds' | 'interrupted' | 'already_done'
    metrics_path: Path
    tensorboard_dir: Path | None


def _rng_state(device: torch.device) -> dict:
    """This process's global RNG states (torch CPU/CUDA — dropout —, Python, NumPy) as plain values."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": [name, keys.tolist(), pos, has_gauss, cached]}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _new_run_dir() -> str:
    base = Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")
    path, i = base, 1
    while path.exists():
        path, i = base.with_name(f"{base.name}-{i}"), i + 1
    return str(path)


def _check_fresh(out_dir: Path) -> None:
    if list_checkpoints(out_dir):
        raise InfogeomError(f"{out_dir} already holds a training run; continue it with --resume latest or "
                            f"choose another --out")


def _check_resumable(cfg: TrainConfig, ckpt: dict, path: Path) -> None:
    """The config must describe the checkpoint's model and optimizer."""
    old = ckpt["config"]
    for key, value in config_to_dict(cfg)["model"].items():
        if key not in RESUMABLE_MODEL_KEYS and old["model"].get(key) != value:
            raise InfogeomError(f"checkpoint {path} holds a model with model.{key}="
                                f"{old['model'].get(key)!r}, but the config asks for {value!r}")
    if old["optim"]["name"] != cfg.optim.name:
        raise InfogeomError(f"checkpoint {path} was trained with optimizer {old['optim']['name']!r}, "
                            f"not {cfg.optim.name!r}")
    if old["optim"].get("params", "") != cfg.optim.params:
        raise InfogeomError(f"checkpoint {path} trained the parameters optim.params="
                            f"{old['optim'].get('params', '')!r}, but the config asks for {cfg.optim.params!r}")


class Trainer:
    """Trains ``config`` (see :mod:`infogeom.train.config`); ``resume``: a checkpoint path or ``'latest'``.

    Attributes for callbacks: ``model`` (unwrapped), ``optimizer``, ``scheduler``, ``data`` (TokenData),
    ``config``, ``step``, ``train_time``, ``out_dir``, ``device``, ``is_main``, ``rank``, ``world_size``.
    """

    def __init__(self, config: TrainConfig, callbacks: Iterable[Callback] = (),
                 resume: str | Path | None = None):
        self.config = copy.deepcopy(config).validate()
        self.callbacks = list(callbacks)
        self._lock: RunLock | None = None
        self.dist, self.device = distributed.setup(self.config.device)
        try:
            self._build(resume)
        except BaseException:
            self.close()
            raise

    # --- construction ---------------------------------------------------------------------------------------

    def _build(self, resume: str | Path | None) -> None:
        cfg, d = self.config, self.dist
        ckpt = path = None
        hf = inspect_hf(cfg.model) if cfg.model.arch == "hf" else None  # fills the shape: before the resume check
        if hf is not None and cfg.data.block_size > cfg.model.block_size:
            raise InfogeomError(f"data.block_size ({cfg.data.block_size}) exceeds the context of hf:"
                                f"{cfg.model.path} ({cfg.model.block_size} positions)")
        if resume is not None:
            path = resolve_checkpoint(resume, cfg.out_dir or None, note=self._note)
            if path is None:
                self._note(f"infogeom: note: {cfg.out_dir} holds no checkpoint (a run stopped before its first "
                           f"one); starting it from step 0")
            else:
                ckpt = load_checkpoint(path)
                _check_resumable(cfg, ckpt, path)
        self.out_dir = Path(cfg.out_dir or (run_dir_of(path) if path else d.broadcast(_new_run_dir())))
        cfg.out_dir = str(self.out_dir)
        same_run = path is not None and self.out_dir.resolve() == run_dir_of(path).resolve()
        d.on_main(lambda: self._check_folder(same_run))  # fail fast; repeated under the lock below
        if cfg.data.batch_size % d.world_size:
            raise InfogeomError(f"data.batch_size ({cfg.data.batch_size}) must be divisible by the number of "
                                f"processes ({d.world_size})")
        self.data: TokenData = d.main_first(lambda: prepare_run_data(cfg.data))
        self.data.check_block_size(cfg.data.block_size)
        if ckpt is not None and self.data.tokenizer.to_dict() != ckpt["tokenizer"]:
            raise InfogeomError(
                f"checkpoint {path} uses another vocabulary ({ckpt['tokenizer'].get('spec')}, "
                f"{ckpt.get('vocab_size')} tokens) than this run's data ({self.data.tokenizer.spec}, "
                f"{self.data.vocab_size} tokens)")
        m, b, T = cfg.model, cfg.data.batch_size // d.world_size, cfg.data.block_size
        vocab = self.data.vocab_size
        if hf is not None:
            vocab = hf.vocab_size
            check_vocab(self.data.tokenizer, vocab, f"the model hf:{m.path}")
        stored = 2 * cfg.eval_batches * cfg.data.batch_size * T  # the fixed evaluation batches, both splits
        check_memory(estimate_bytes(m, vocab, b, T, stored_tokens=stored, params=hf and hf.parameters),
                     self.device, f"this model ({m.n_layer} layers, width {m.n_embd}, context {m.block_size}) "
                     f"with a {b}x{T} batch and {cfg.eval_batches} eval batches")

        torch.manual_seed(cfg.seed)
        self.model = build_model(cfg.model, self.data.vocab_size, hf).to(self.device)
        if cfg.optim.params:
            freeze_except(self.model, cfg.optim.params, "optim.params")
        torch.manual_seed(cfg.seed + 1 + d.rank)  # dropout stream, distinct per rank
        o = cfg.optim
        self.optimizer = build_optimizer(o.name, self.model, o.lr, o.weight_decay, **o.options)
        self.scheduler = build_scheduler(self.optimizer, o.warmup_steps, cfg.max_steps, o.lr, o.min_lr, o.schedule,
                                         o.decay_fraction)
        if getattr(self.optimizer, "coverage", None) and cfg.progress:
            self._note(f"infogeom: note: {self.optimizer.coverage}")
        self.data_generator = torch.Generator().manual_seed(cfg.seed)
        self.step, self.train_time = 0, 0.0
        self.history: list[dict] = []
        self.last_eval: dict | None = None
        self.last_checkpoint: Path | None = None
        self._checkpoint_step = 0
        self._pending: list[float] = []  # checked losses of the steps since the last train record
        self.monitor = DivergenceMonitor()
        self._resumed_at: int | None = None
        if not same_run and self.is_main and (self.out_dir / METRICS_FILE).exists():
            self._resumed_at = -1  # a run stopped before its first checkpoint: its records start over
        if ckpt is not None:
            self._restore(ckpt, path, same_run)

        self._train_model = self.model
        if d.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self._train_model = DistributedDataParallel(self.model, device_ids=ids)
        self._eval_batches = {split: [self._shard(b) for b in eval_batches(
            self.data, split, cfg.eval_batches, cfg.data.batch_size, cfg.data.block_size, cfg.seed)]
            for split in ("val", "train")}
        self._step_buf: list[tuple[int, torch.Tensor, torch.Tensor | None]] = []  # (step, loss, update/lr)
        self._grad_norm: torch.Tensor | None = None
        self._stop_requested = False
        d.on_main(lambda: self._take_folder(same_run))  # last: bad input above never creates the folder
        self.logger: MetricsLogger | None = None

    def _note(self, text: str) -> None:
        if self.dist.is_main:
            tqdm.write(text, file=sys.stderr)

    def _check_folder(self, same_run: bool) -> None:
        check_output_dir(self.out_dir)
        if self._lock is None:
            RunLock.check(self.out_dir)  # another live writer is refused before any work, naming its pid
        if not same_run:
            _check_fresh(self.out_dir)

    def _take_folder(self, same_run: bool) -> None:
        """Main rank: lock the run folder, clear leftover temp files, refuse a foreign run."""
        self._lock = RunLock(self.out_dir)
        removed = remove_temp_files(self.out_dir)
        if removed:
            self._note(f"infogeom: note: removed {len(removed)} temporary file(s) left by an interrupted write")
        self._check_folder(same_run)

    def _restore(self, ckpt: dict, path: Path, same_run: bool) -> None:
        load_state(self.model, ckpt["model"], path)
        try:
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.scheduler.load_state_dict(ckpt["scheduler"])
            self.data_generator.set_state(ckpt["rng"]["data"])
            ranks = ckpt["rng"]["ranks"]
        except (KeyError, ValueError, RuntimeError, TypeError) as exc:
            raise InfogeomError(f"checkpoint {path}: optimizer, schedule or RNG state does not fit this run "
                                f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
        if len(ranks) == self.dist.world_size:
            _set_rng_state(ranks[self.dist.rank], self.device)
        elif self.dist.is_main:
            tqdm.write(f"note: checkpoint from {len(ranks)} process(es) resumed on {self.dist.world_size}: "
                       f"dropout streams restart from the seed")
        self.step, self.train_time = int(ckpt["step"]), float(ckpt["train_time"])
        self._pending = [float(v) for v in ckpt.get("pending_losses", [])]
        self.monitor.load_state_dict(ckpt.get("divergence") or {})
        self.last_eval = ckpt.get("last_eval")
        self.last_checkpoint, self._checkpoint_step = path, self.step
        if same_run:
            self._resumed_at = self.step
            logged = read_metrics(self.out_dir / METRICS_FILE)
            self.history = [r for r in logged if r.get("step", 0) <= self.step]

    def _shard(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's rows of a global batch, on the training device."""
        n = batch[0].size(0) // self.dist.world_size
        lo = self.dist.rank * n
        return tuple(t[lo:lo + n].to(self.device, non_blocking=True) for t in batch)

    # --- properties -----------------------------------------------------------------------------------------

    @property
    def is_main(self) -> bool:
        return self.dist.is_main

    @property
    def rank(self) -> int:
        return self.dist.rank

    @property
    def world_size(self) -> int:
        return self.dist.world_size

    @property
    def tokens_per_step(self) -> int:
        c = self.config
        return c.data.batch_size * c.data.block_size * c.grad_accum

    # --- one optimizer step ---------------------------------------------------------------------------------

    def train_step(self) -> float:
        """Forward/backward over ``grad_accum`` micro-batches, clip, ``optimizer.step()``, schedule step.

        A non-finite gradient norm (read here: the step's one host sync) skips ``optimizer.step()``. Returns
        the learning rate used; the mean micro-batch loss and the update norm per unit lr are buffered.
        """
        cfg = self.config
        model, accum = self._train_model, cfg.grad_accum
        model.train()
        total = torch.zeros((), device=self.device)
        for micro in range(accum):
            x, y = self._shard(self.data.get_batch("train", cfg.data.batch_size, cfg.data.block_size,
                                                   self.data_generator))
            sync = self.dist.enabled and micro < accum - 1
            with model.no_sync() if sync else contextlib.nullcontext():
                with torch.autocast(self.device.type, DTYPES[cfg.dtype], enabled=cfg.dtype != "float32"):
                    loss = lm_loss(model(x), y)
                (loss / accum).backward()
            total += loss.detach().float()
        params = [p for p in self.model.parameters() if p.grad is not None]
        if cfg.optim.grad_clip > 0:
            norm = self._grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip)
        else:
            norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        lr = self.optimizer.param_groups[0]["lr"]
        update = None
        if bool(torch.isfinite(norm)):  # identical on every rank: DDP averaged the gradients
            before = [p.detach().clone() for p in params]
            self.optimizer.step()
            update = torch.nn.utils.get_total_norm(torch._foreach_sub(before, [p.detach() for p in params]))
            update = update.float() / lr if lr > 0 else None
        elif self.is_main:
            tqdm.write(f"infogeom: note: step {self.step + 1}: non-finite gradient norm; step skipped",
                       file=sys.stderr)
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self._step_buf.append((self.step, total / accum, update))
        return lr

    def _check_losses(self) -> None:
        """Read the buffered steps (one sync, losses averaged over ranks); stop when one diverged."""
        if not self._step_buf:
            return
        nan = torch.full((), math.nan, device=self.device)
        values = self.dist.mean(torch.stack([torch.stack((loss, nan if u is None else u))
                                             for _, loss, u in self._step_buf])).tolist()
        steps = [(step, u is None) for step, _, u in self._step_buf]
        self._step_buf.clear()
        for (step, skipped), (loss, update) in zip(steps, values):
            reason = self.monitor.check(loss, None if skipped else update)
            if reason is not None:
                self._fail(reason, step)
            self._pending.append(loss)

    def _fail(self, reason: str, step: int) -> None:
        last = (f"the last good checkpoint is {self.last_checkpoint} (step {self._checkpoint_step})"
                if self.last_checkpoint else "no checkpoint was written")
        raise InfogeomError(f"{reason} at step {step}; training stopped before saving it and {last} "
                            f"(try a lower optim.lr, more optim.warmup_steps or optim.grad_clip)")

    # --- evaluation, logging, checkpoints -------------------------------------------------------------------

    def evaluate(self) -> dict:
        """Validation and training loss on the fixed evaluation batches (averaged over ranks)."""
        losses = torch.stack([mean_loss(self.model, self._eval_batches[s], self.device)
                              for s in ("val", "train")])
        val, train = self.dist.mean(losses).tolist()
        if not math.isfinite(val):
            self._fail(f"validation loss became {val}", self.step)
        metrics = {"step": self.step, "val_loss": val, "train_loss_eval": train,
                   "val_ppl": math.exp(min(val, 700.0)), "train_time": self.train_time}
        for cb in self.callbacks:
            cb.on_evaluate(self, metrics)
        self.last_eval = metrics
        self._log(metrics)
        if self.is_main and self.config.progress:
            tqdm.write(f"step {self.step}: val loss {val:.4f} (ppl {metrics['val_ppl']:.2f}), "
                       f"train loss {train:.4f}")
        return metrics

    def _log(self, record: dict) -> None:
        self.history.append(record)
        if self.logger is not None:
            self.logger.log(record)

    def save_checkpoint(self) -> Path:
        """Checkpoint the current state (collective: every rank must call it); rank 0 writes the file.

        First the buffered steps are judged and the weights probed on a fixed training batch: a diverged
        state is never written."""
        self._check_losses()
        probe = float(self.dist.mean(mean_loss(self.model, self._eval_batches["train"][:1], self.device)))
        reason = self.monitor.check_loss(probe, "loss of the weights to checkpoint")
        if reason is None and not all_finite(p.detach() for p in self.model.parameters()):
            reason = "the weights became non-finite"
        if reason is not None:
            self._fail(reason, self.step)
        ranks = self.dist.gather(_rng_state(self.device))
        path = checkpoint_path(self.out_dir, self.step)
        if self.is_main:
            save_checkpoint(path, {
                "format": FORMAT, "version": 1, "infogeom_version": __version__,
                "step": self.step, "train_time": self.train_time, "tokens": self.step * self.tokens_per_step,
                "config": config_to_dict(self.config), "vocab_size": self.data.vocab_size,
                "tokenizer": self.data.tokenizer.to_dict(), "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "rng": {"data": self.data_generator.get_state(), "ranks": ranks},
                "pending_losses": list(self._pending), "world_size": self.dist.world_size,
                "last_eval": self.last_eval, "divergence": self.monitor.state_dict(),
                **({"hf_config": config_dict(self.model)} if self.config.model.arch == "hf" else {}),
            })
            prune_checkpoints(self.out_dir, self.config.keep_last)
        self.last_checkpoint, self._checkpoint_step = path, self.step
        return path

    def _open_outputs(self) -> None:
        if not self.is_main:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        text = dumps_toml(self.config).encode("utf-8")
        atomic_write(self.out_dir / "config.toml", lambda f: f.write(text))
        self.data.tokenizer.save(self.out_dir / "tokenizer.json")
        self.logger = MetricsLogger(self.out_dir, self.config.tensorboard, keep_until=self._resumed_at)

    def request_stop(self) -> None:
        """Stop after the current step with a checkpoint, as Ctrl-C does (e.g. from a callback)."""
        self._stop_requested = True

    @contextlib.contextmanager
    def _graceful_stop(self) -> Iterator[None]:
        """SIGINT/SIGTERM set a flag; the loop stops after the current step (main thread only)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum, frame):
            self.request_stop()

        previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    # --- the loop -------------------------------------------------------------------------------------------

    def fit(self) -> TrainResult:
        cfg = self.config
        if self.step >= cfg.max_steps:
            return self._result("already_done")
        self._open_outputs()
        pbar = tqdm(total=cfg.max_steps, initial=self.step, unit="step", dynamic_ncols=True, mininterval=0.5,
                    disable=not (self.is_main and cfg.progress))
        reason = "max_steps"
        try:
            with self._graceful_stop():
                for cb in self.callbacks:
                    cb.on_train_start(self)
                if self.step == 0:
                    self.evaluate()
                window = (self.step, self.train_time)
                tick = time.perf_counter()
                while self.step < cfg.max_steps:
                    lr = self.train_step()
                    now = time.perf_counter()
                    self.train_time += now - tick
                    tick = now
                    step = self.step
                    log_now = step % cfg.log_every == 0 or step == cfg.max_steps
                    if log_now or self.callbacks:
                        self._check_losses()
                    metrics = {"step": step, "lr": lr, "tokens": step * self.tokens_per_step,
                               "train_time": self.train_time}
                    if self.callbacks:
                        metrics["loss"] = self._pending[-1]
                    base = set(metrics)
                    for cb in self.callbacks:
                        cb.on_step_end(self, metrics)
                    extra = {k: v for k, v in metrics.items() if k not in base}
                    if log_now:
                        window = self._log_train(metrics, extra, window, pbar)
                    elif extra:
                        self._log({"step": step, "train_time": self.train_time, **extra})
                    pbar.update(1)

                    interrupted, timed_out = self.dist.any_of(
                        [self._stop_requested, 0 < cfg.max_seconds <= self.train_time], self.device)
                    reason = "interrupted" if interrupted else "max_seconds" if timed_out else reason
                    last = reason != "max_steps" or step == cfg.max_steps
                    eval_now = (cfg.eval_every and step % cfg.eval_every == 0) or last
                    ckpt_now = (cfg.ckpt_every and step % cfg.ckpt_every == 0) or last
                    if (eval_now and reason != "interrupted") or ckpt_now:
                        self.train_time += time.perf_counter() - tick
                        self._check_losses()
                        if eval_now and reason != "interrupted":
                            self.evaluate()
                        if ckpt_now:
                            self.save_checkpoint()
                        tick = time.perf_counter()
                    if last:
                        break
                for cb in self.callbacks:
                    cb.on_train_end(self)
                if self.is_main:
                    self._plot_losses()
        except BaseException:
            pbar.leave = False  # the error line must not be glued to (or follow) a stale progress bar
            raise
        finally:
            pbar.close()
            if self.logger is not None:
                self.logger.close()
            self._release()
        self.dist.barrier()
        return self._result(reason)

    def _log_train(self, metrics: dict, extra: dict, window: tuple[int, float], pbar) -> tuple[int, float]:
        """Write the train record of a log step (loss averaged since the previous record)."""
        steps, seconds = self.step - window[0], self.train_time - window[1]
        record = {**metrics, "loss": sum(self._pending) / len(self._pending),
                  "tokens_per_s": steps * self.tokens_per_step / seconds if seconds > 0 else 0.0, **extra}
        if self._grad_norm is not None:
            record["grad_norm"] = float(self._grad_norm)
        self._pending.clear()
        self._log(record)
        pbar.set_postfix(loss=f"{record['loss']:.4f}", tok_s=f"{record['tokens_per_s']:.0f}", refresh=False)
        return self.step, self.train_time

    def _plot_losses(self) -> None:
        """``loss.png`` (+ ``.svg``) beside metrics.jsonl: train and validation loss vs step and tokens."""
        from ..plotting import plot_loss_curves

        c = self.config
        title = (f"{c.model.arch} {self.model.num_parameters():,} parameters on {c.data.corpus} ({c.data.tokenizer}), "
                 f"{c.optim.name} lr {c.optim.lr:g}, batch {c.data.batch_size}×{c.data.block_size}")
        plot_loss_curves([(self.out_dir.name, read_metrics(self.out_dir / METRICS_FILE))], self.out_dir / "loss.png",
                         title)

    def _result(self, reason: str) -> TrainResult:
        val = self.last_eval["val_loss"] if self.last_eval else None
        tb = self.logger.tensorboard_dir if self.logger is not None else None
        return TrainResult(self.out_dir, self.history, val, self.step, self.train_time, self.last_checkpoint,
                           reason, self.out_dir / METRICS_FILE, tb)

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def close(self) -> None:
        """Release the run folder and leave the process group if this trainer joined it."""
        self._release()
        self.dist.close()


def train(config: TrainConfig, callbacks: Iterable[Callback] = (), resume: str | Path | None = None
          ) -> TrainResult:
    """Train ``config`` to completion (or until max_seconds / Ctrl-C); see :class:`Trainer`."""
    trainer = Trainer(config, callbacks, resume)
    try:
        return trainer.fit()
    finally:
        trainer.close()
