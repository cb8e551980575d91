"""Ablation: Adam vs Fubini–Study QNG vs pull-back QNG on small hybrid (circuit + classical) language models.

Tasks (character-level next-token prediction on a real corpus):

* ``"bigram"`` — a quantum bigram LM: token embedding → :class:`~infogeom.models.quantum_layer.QuantumLayer`
  (angle embedding, hardware-efficient circuit, ⟨Z⟩ readout) → linear layer to vocabulary logits. The circuit
  sits between two classical layers and carries the whole model's computation (the setting of arXiv
  2506.15830's hybrid classifier).
* ``"gpt"`` — a one-block GPT whose MLP is a quantum layer
(:func:`~infogeom.models.quantum_layer.add_quantum_layers`).

Arms (same data, same initialisation per seed; the classical parameters always use AdamW):

* ``adam``      — AdamW on every parameter, circuit weights included;
* ``qng-fs``    — QNG on the circuit weights with the Fubini–Study metric averaged over the layer's inputs;
* ``qng-pullback`` — QNG on the circuit weights with the pull-back G = E Jᵀ(diag p − ppᵀ)J of the LM's output
  distribution (the Fisher of the predictions restricted to the circuit weights);
* ``classical`` (bigram task, not a default arm) — AdamW on :class:`ClassicalBigram`, the equal-parameter
  classical control: the circuit replaced by a tanh layer whose width makes the parameter count closest.

Reports the final validation loss (mean ± std over seeds) per arm, and the paired difference to the first arm
(each seed fixes the initialisation and the batch sequence, so arms are compared seed by seed).
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
from tqdm import tqdm

from ..errors import InfogeomError
from ..models.gpt import GPT, GPTConfig, lm_loss
from ..models.quantum_layer import QuantumLayer, add_quantum_layers
from ..optim.qng import QNGAdamW

QUANTUM_ARMS = ("adam", "qng-fs", "qng-pullback")
ARMS = (*QUANTUM_ARMS, "classical")
TASKS = ("bigram", "gpt")


@dataclass
class AblationConfig:
    task: str = "bigram"
    corpus: str = "shakespeare"
    arms: tuple[str, ...] = QUANTUM_ARMS
    seeds: int = 5
    steps: int = 200
    batch_size: int = 16
    block_size: int = 16
    n_qubits: int = 5
    n_layers: int = 2
    n_embd: int = 16
    lr: float = 3e-2
    qng_lr: float = 0.02
    damping: float = 1e-2
    recompute_every: int = 5
    max_inputs: int = 64
    eval_every: int = 50
    eval_batches: int = 8
    extra: dict = field(default_factory=dict)


class QuantumBigram(nn.Module):
    """``idx [B, T] -> logits [B, T, V]``: embedding → quantum layer (n_embd → V)."""

    def __init__(self, vocab_size: int, n_embd: int, n_qubits: int, n_layers: int):
        super().__init__()
        self.wte = nn.Embedding(vocab_size, n_embd)
        self.quantum = QuantumLayer(n_embd, vocab_size, n_qubits=n_qubits, n_layers=n_layers)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.quantum(self.wte(idx))


class ClassicalBigram(nn.Module):
    """``idx [B, T] -> logits [B, T, V]``: embedding → Linear(n_embd, h) → tanh → Linear(h, V)."""

    def __init__(self, vocab_size: int, n_embd: int, hidden: int):
        super().__init__()
        self.wte = nn.Embedding(vocab_size, n_embd)
        self.hidden = nn.Linear(n_embd, hidden)
        self.out = nn.Linear(hidden, vocab_size)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.hidden(self.wte(idx))))

    @staticmethod
    def matching_width(vocab_size: int, n_embd: int, n_params: int) -> int:
        """The width h ≥ 1 whose parameter count V·E + h(E + 1) + V(h + 1) is closest to ``n_params``."""
        return max(1, round((n_params - vocab_size * (n_embd + 1)) / (n_embd + 1 + vocab_size)))


def build_model(cfg: AblationConfig, vocab_size: int, seed: int, arm: str = "adam") -> nn.Module:
    torch.manual_seed(seed)
    if arm == "classical":
        if cfg.task != "bigram":
            raise InfogeomError("the classical arm exists for the bigram task only")
        quantum = QuantumBigram(vocab_size, cfg.n_embd, cfg.n_qubits, cfg.n_layers)
        width = ClassicalBigram.matching_width(vocab_size, cfg.n_embd, sum(p.numel() for p in quantum.parameters()))
        torch.manual_seed(seed)
        return ClassicalBigram(vocab_size, cfg.n_embd, width)
    if cfg.task == "bigram":
        return QuantumBigram(vocab_size, cfg.n_embd, cfg.n_qubits, cfg.n_layers)
    model = GPT(GPTConfig(vocab_size=vocab_size, block_size=cfg.block_size, n_layer=1, n_head=2,
                          n_embd=cfg.n_embd, attention="math"))
    add_quantum_layers(model, blocks=(0,), target="mlp", n_qubits=cfg.n_qubits, n_layers=cfg.n_layers)
    return model


def build_arm(arm: str, model: nn.Module, cfg: AblationConfig) -> torch.optim.Optimizer:
    if arm in ("adam", "classical"):
        return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    metric = "fubini-study" if arm == "qng-fs" else "pullback"
    return QNGAdamW(model, lr=cfg.lr, metric=metric, damping=cfg.damping, recompute_every=cfg.recompute_every,
                    quantum_lr=cfg.qng_lr, max_inputs=cfg.max_inputs, betas=(0.9, 0.999))


def load_data(corpus: str):
    from ..data import prepare_data

    return prepare_data(corpus, "char")


@torch.no_grad()
def evaluate(model: nn.Module, data, cfg: AblationConfig) -> float:
    model.eval()
    g = torch.Generator().manual_seed(1234)
    batches = [data.get_batch("val", cfg.batch_size, cfg.block_size, g) for _ in range(cfg.eval_batches)]
    losses = [lm_loss(model(x), y).item() for x, y in batches]
    model.train()
    return sum(losses) / len(losses)


def train_one(arm: str, seed: int, cfg: AblationConfig, data) -> dict:
    """Train one arm for one seed; ``train_time``: seconds in training steps (evaluations excluded)."""
    model = build_model(cfg, data.vocab_size, seed, arm)
    opt = build_arm(arm, model, cfg)
    g = torch.Generator().manual_seed(10_000 + seed)
    curve, train_time = [], 0.0
    for step in range(cfg.steps):
        t0 = time.perf_counter()
        x, y = data.get_batch("train", cfg.batch_size, cfg.block_size, g)
        opt.zero_grad(set_to_none=True)
        loss = lm_loss(model(x), y)
        if not math.isfinite(loss.item()):
            raise InfogeomError(f"{arm} diverged at step {step} (seed {seed}); lower the learning rate")
        loss.backward()
        opt.step()
        train_time += time.perf_counter() - t0
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            curve.append((step + 1, evaluate(model, data, cfg)))
    return {"arm": arm, "seed": seed, "final_val_loss": curve[-1][1], "curve": curve, "train_time": train_time,
            "params": sum(p.numel() for p in model.parameters())}


def run_ablation(cfg: AblationConfig, data=None, progress: bool = True) -> dict:
    """Train every arm for every seed; returns ``{"config", "runs", "summary"}`` (summary: mean/std per
    arm)."""
    if cfg.task not in TASKS:
        raise InfogeomError(f"task must be one of {', '.join(TASKS)}, got {cfg.task!r}")
    bad = [a for a in cfg.arms if a not in ARMS]
    if bad:
        raise InfogeomError(f"unknown arm(s) {', '.join(bad)}; choose from {', '.join(ARMS)}")
    if cfg.seeds < 1 or cfg.steps < 1:
        raise InfogeomError("seeds and steps must be positive")
    data = load_data(cfg.corpus) if data is None else data
    jobs = [(arm, seed) for seed in range(cfg.seeds) for arm in cfg.arms]
    runs = [train_one(arm, seed, cfg, data)
            for arm, seed in tqdm(jobs, desc="ablation", disable=not progress)]
    summary = {}
    for arm in cfg.arms:
        finals = [r["final_val_loss"] for r in runs if r["arm"] == arm]
        std = statistics.stdev(finals) if len(finals) > 1 else 0.0
        summary[arm] = {"mean": statistics.fmean(finals), "std": std, "n": len(finals)}
    base = {r["seed"]: r["final_val_loss"] for r in runs if r["arm"] == cfg.arms[0]}
    for arm in cfg.arms[1:]:  # same seed = same initialisation and batches: paired differences
        diffs = [r["final_val_loss"] - base[r["seed"]] for r in runs if r["arm"] == arm]
        summary[arm]["paired_diff"] = {"vs": cfg.arms[0], "mean": statistics.fmean(diffs),
                                       "std": statistics.stdev(diffs) if len(diffs) > 1 else 0.0,
                                       "better": sum(d < 0 for d in diffs)}
    return {"config": asdict(cfg), "vocab_size": data.vocab_size, "runs": runs, "summary": summary}


def format_summary(result: dict) -> str:
    cfg = result["config"]
    lines = [f"task={cfg['task']} corpus={cfg['corpus']} steps={cfg['steps']} seeds={cfg['seeds']} "
             f"qubits={cfg['n_qubits']} layers={cfg['n_layers']} lr={cfg['lr']} qng_lr={cfg['qng_lr']}",
             f"{'arm':<14} {'final val loss (mean ± std)':>28}   "
             "paired Δ vs first arm (mean ± std, seeds better)"]
    for arm, s in result["summary"].items():
        line = f"{arm:<14} {s['mean']:>18.4f} ± {s['std']:.4f}"
        if "paired_diff" in s:
            d = s["paired_diff"]
            line += f"   {d['mean']:+.4f} ± {d['std']:.4f} ({d['better']}/{s['n']} better than {d['vs']})"
        lines.append(line)
    return "\n".join(lines)


def plot_curves(result: dict, path) -> None:
    """Validation loss per arm (mean ± std over seeds, left) and each arm's paired difference to the first
    arm (same seed = same initialisation and batches, right: small effects are visible there). PNG + SVG."""
    from ..plotting import curve_styles, new_figure, save_figure

    cfg = result["config"]
    arms = list(result["summary"])
    fig = new_figure(11, 4.2)
    ax, ax_d = fig.subplots(1, 2)
    curves = {arm: [dict(r["curve"]) for r in sorted(result["runs"], key=lambda r: r["seed"]) if r["arm"] == arm]
              for arm in arms}
    steps = sorted(curves[arms[0]][0])
    for arm, style in zip(arms, curve_styles(len(arms))):
        vals = torch.tensor([[c[s] for s in steps] for c in curves[arm]])
        n = len(vals)
        for axis, v, label in ((ax, vals, arm), (ax_d, vals - torch.tensor([[c[s] for s in steps]
                                                                          for c in curves[arms[0]]]), arm)):
            if axis is ax_d and arm == arms[0]:
                continue
            mean = v.mean(0)
            std = v.std(0) if n > 1 else torch.zeros_like(mean)
            axis.plot(steps, mean, lw=1.5, label=label, **style)
            axis.fill_between(steps, mean - std, mean + std, alpha=0.2, color=style["color"])
    ax_d.axhline(0, color="k", lw=0.8)
    ax.set(xlabel="training step", ylabel="validation loss (nats/char)", title="validation loss")
    ax_d.set(xlabel="training step", ylabel=f"Δ validation loss vs {arms[0]} (nats/char)",
             title=f"paired difference to {arms[0]} (same seeds; < 0 = better)")
    n = len(curves[arms[0]])
    for axis in (ax, ax_d):
        axis.grid(alpha=0.3)
        axis.legend(title=f"line: mean over {n} seeds; band: ± std" if n > 1 else "1 seed")
    fig.suptitle(f"hybrid {cfg['task']} LM on {cfg['corpus']}: {cfg['n_qubits']} qubits, {cfg['n_layers']}-layer "
                 f"ansatz, {cfg['steps']} steps", fontsize=11)
    save_figure(fig, path)
