"""Helpers shared by the experiments: the model ladder, training cells through :func:`infogeom.train.train`
(resumable from their workdir), checkpoints at fixed fractions of training, time-to-target, figures, and a
sequential local driver (``python -m infogeom.study.experiments.common E1 --quick OUT``) for running one
experiment's plan without the engine."""

from __future__ import annotations

import argparse
import importlib
import json
import math
import time
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

import torch

from ...data import prepare_data
from ...train import Callback, TrainConfig, load_config, train
from ...train.checkpoint import list_checkpoints, load_checkpoint
from ...train.metrics import METRICS_FILE, read_metrics
from ...train.modeling import build_model, load_model
from ..spec import Cell, Experiment

#: char-level Shakespeare (V = 84, T = 128) GPT ladder: total parameters -> (n_layer, n_embd), 4 heads
LADDER: dict[str, tuple[int, int]] = {
    "19.6k": (1, 32), "66.8k": (2, 48), "114k": (2, 64), "356k": (3, 96), "820k": (4, 128), "2.71M": (6, 192),
}


def lm_config(
    workdir: Path, *, size: str, optimizer: str, lr: float, steps: int, seed: int, batch: int = 16,
    block: int = 64, options: dict | None = None, weight_decay: float = 0.1, warmup: int = 0,
    eval_every: int = 10, eval_batches: int = 4, ckpt_every: int = 0, constant_lr: bool = False,
    keep_last: int = 3, grad_clip: float = 1.0, model: dict | None = None,
) -> TrainConfig:
    """A training config for ladder model ``size`` with its run folder ``workdir/run``; with ``model`` (a
    ``study --model`` spec) the pretrained transformers checkpoint and its tokenizer instead (``size`` unused,
    the window ``block`` cut to the model's context)."""
    cfg = load_config(None, validate=False)
    if model is None:
        n_layer, n_embd = LADDER[size]
        cfg.model.n_layer, cfg.model.n_embd, cfg.model.n_head, cfg.model.block_size = n_layer, n_embd, 4, 128
    else:
        cfg.model.arch, cfg.model.path, cfg.data.tokenizer = "hf", model["path"], "hf"
        block = min(block, int(model["context"]))
    cfg.data.batch_size, cfg.data.block_size = batch, block
    cfg.optim.name, cfg.optim.lr, cfg.optim.weight_decay = optimizer, float(lr), float(weight_decay)
    cfg.optim.warmup_steps, cfg.optim.min_lr = int(warmup), float(lr) if constant_lr else 0.0
    cfg.optim.options, cfg.optim.grad_clip = dict(options or {}), float(grad_clip)
    cfg.max_steps, cfg.seed, cfg.eval_every, cfg.eval_batches = int(steps), int(seed), int(eval_every), eval_batches
    cfg.ckpt_every, cfg.keep_last, cfg.log_every = int(ckpt_every), int(keep_last), 1
    cfg.out_dir, cfg.progress, cfg.tensorboard, cfg.device = str(workdir / "run"), False, False, "cpu"
    return cfg.validate()


class SaveAtSteps(Callback):
    """Checkpoint at the given optimizer steps (0 = before the first step)."""

    def __init__(self, steps: Iterable[int]):
        self.steps = set(int(s) for s in steps)

    def on_train_start(self, trainer) -> None:
        if trainer.step == 0 and 0 in self.steps:
            trainer.save_checkpoint()

    def on_step_end(self, trainer, metrics: dict) -> None:
        if trainer.step in self.steps and trainer.step < trainer.config.max_steps:
            trainer.save_checkpoint()


def run_training(cfg: TrainConfig, callbacks: Iterable[Callback] = (), start: Path | None = None) -> dict:
    """Train ``cfg`` (resuming its run folder's latest checkpoint, so a killed cell continues; else from the
    checkpoint ``start`` of another run, if given) and summarize the metrics: ``curve`` = [(train seconds, step,
    val loss)], final losses, seconds per step."""
    out = Path(cfg.out_dir)
    resume = "latest" if list_checkpoints(out) else start
    if resume != "latest" and out.exists():  # a cell killed before its first checkpoint: start over
        for f in out.rglob("*"):
            if f.is_file():
                f.unlink()
    result = train(cfg, callbacks, resume=resume)
    hist = read_metrics(out / METRICS_FILE)
    evals = [r for r in hist if "val_loss" in r]
    curve = [(float(r["train_time"]), int(r["step"]), float(r["val_loss"])) for r in evals]
    train_losses = [float(r["loss"]) for r in hist if "loss" in r and "val_loss" not in r]
    return {
        "curve": curve,
        "final_val_loss": curve[-1][2] if curve else math.nan,
        "final_train_loss_eval": float(evals[-1]["train_loss_eval"]) if evals else math.nan,
        "train_losses": train_losses,
        "steps": int(result.step),
        "train_time": float(result.train_time),
        "sec_per_step": float(result.train_time) / max(1, int(result.step)),
        "checkpoints": [p.name for p in list_checkpoints(out)],
        "diverged": not all(math.isfinite(v) for v in train_losses),
    }


def load_checkpoint_model(path: Path) -> tuple[torch.nn.Module, dict]:
    """(model in eval mode, checkpoint dict) from a training cell's checkpoint (a ladder GPT's, or a
    ``study --model`` run's through :func:`~infogeom.train.modeling.load_model`)."""
    ckpt = load_checkpoint(path)
    if ckpt["config"]["model"].get("arch", "gpt") != "gpt":
        return load_model(path)[0], ckpt
    cfg = load_config(None, validate=False)
    n_layer, n_embd = ckpt["config"]["model"]["n_layer"], ckpt["config"]["model"]["n_embd"]
    cfg.model.n_layer, cfg.model.n_embd, cfg.model.n_head = n_layer, n_embd, ckpt["config"]["model"]["n_head"]
    cfg.model.block_size = ckpt["config"]["model"]["block_size"]
    model = build_model(cfg.model, ckpt["vocab_size"])
    model.load_state_dict(ckpt["model"])
    return model.eval(), ckpt


def on_model(cells: list[Cell], model: dict, fns: Iterable[str], drop: Iterable[str] = ()) -> list[Cell]:
    """``study --model``: the cells whose run function (name after ``:``) is in ``fns`` with ``params["model"] =
    model`` (so their cache keys hash it), the ones in ``drop`` left out (no kept cell may need them), the rest
    as they are (they do not depend on the language model)."""
    fns, drop = set(fns), set(drop)
    kept = [c for c in cells if c.fn.split(":")[-1] not in drop]
    gone = {c.name for c in cells} - {c.name for c in kept}
    if any(set(c.needs) & gone for c in kept):
        raise ValueError("on_model: a kept cell needs a dropped one")
    return [replace(c, params={**c.params, "model": model}) if c.fn.split(":")[-1] in fns else c for c in kept]


def model_data(model: dict | None):
    """The Shakespeare token data of a run: the char tokenizer, or the ``study --model`` checkpoint's."""
    return prepare_data("shakespeare", f"hf:{model['path']}" if model else "char")


def time_to_target(curve: list, target: float) -> tuple[float, float] | None:
    """(steps, seconds) at which a (seconds, step, val loss) curve first reaches ``target``: linear
    interpolation between the last evaluation above it and the first at or below it; None if never."""
    prev = None
    for t, s, v in curve:
        if v <= target:
            if prev is None:
                return float(s), float(t)
            w = (prev[2] - target) / (prev[2] - v)
            return prev[1] + w * (s - prev[1]), prev[0] + w * (t - prev[0])
        prev = (t, s, v)
    return None


def savefig(fig, figdir: Path, name: str) -> str:
    """Write ``fig`` as ``figdir/name`` (PNG, 120 dpi) and close it; returns the file name."""
    import matplotlib.pyplot as plt

    figdir.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(figdir / name, dpi=120)
    plt.close(fig)
    return name


def run_plan(experiment: Experiment, profile: str, out: Path, study_seed: int = 0) -> list[tuple[Cell, dict]]:
    """Run every cell of ``experiment.plan(profile)`` in order in ``out/cells/<name>/`` (results cached as
    ``result.json``), with one torch thread; prints each cell's wall time. A stand-in for the engine."""
    torch.set_num_threads(1)
    results: dict[str, tuple[Cell, dict]] = {}
    for cell in experiment.plan(profile):
        wd = out / "cells" / cell.name.replace("/", "_")
        wd.mkdir(parents=True, exist_ok=True)
        done = wd / "result.json"
        if done.exists():
            res = json.loads(done.read_text())
        else:
            mod, fn = cell.fn.split(":")
            inputs = {n: {"result": results[n][1], "dir": out / "cells" / n.replace("/", "_")} for n in cell.needs}
            t0 = time.perf_counter()
            res = getattr(importlib.import_module(mod), fn)(cell.params, cell.seed(study_seed), wd, inputs)
            res["wall_s"] = time.perf_counter() - t0
            done.write_text(json.dumps(res))
            print(f"{cell.name:50s} {res['wall_s']:7.2f} s (est {cell.est_seconds:.1f})", flush=True)
        results[cell.name] = (cell, res)
    return list(results.values())


def main(argv: list[str] | None = None) -> None:
    from . import MODULES

    p = argparse.ArgumentParser(description="run one experiment's plan sequentially and write its section")
    p.add_argument("experiment", choices=sorted(MODULES))
    p.add_argument("out", type=Path)
    p.add_argument("--full", action="store_true")
    args = p.parse_args(argv)
    exp = importlib.import_module(f"{__package__}.{MODULES[args.experiment]}").EXPERIMENT
    t0 = time.perf_counter()
    results = run_plan(exp, "full" if args.full else "quick", args.out)
    total = time.perf_counter() - t0
    section = exp.analyze(results, args.out / "figures")
    print(f"{exp.id}: {len(results)} cells, {total:.1f} s; est {sum(c.est_seconds for c, _ in results):.1f} s")
    for c in section.claims:
        print(f"  [{c.verdict}] {c.id}: {c.measured}")
    (args.out / f"{exp.id}-section.json").write_text(json.dumps(
        {"claims": [c.__dict__ for c in section.claims], "figures": section.figures, "tables": section.tables,
         "numbers": section.numbers, "text": section.text}, indent=1, default=str))


if __name__ == "__main__":
    main()
