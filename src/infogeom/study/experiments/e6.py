"""E6 — quantum geometry: do quantum metrics "bake in" curvature? (Stokes et al. 2020; McClean et al. 2018;
Abbas et al. 2021; Gacon et al. 2021.)

1. **Bloch sphere.** |ψ(θ, φ)⟩ = RZ(φ) RX(θ)|0⟩ has, in closed form, QFI F^Q = diag(1, sin²θ), classical Fisher
   of Z measurements F^cl = diag(1, 0) (p(0) = cos²(θ/2) does not depend on φ) and phase term 4Cov(∂φ) =
   diag(0, sin²θ), so F^Q = F^cl + 4Cov and F^cl ≤ F^Q (Braunstein–Caves). One cell checks the library's
   tensors against these on a grid and runs QNG (metric F^Q/4, pseudo-inverse), classical-Fisher NG (metric
   F^cl/4, pseudo-inverse: blind to φ), GD and Adam at a common lr on ⟨σx⟩ = sin θ sin φ from random starts,
   with steps to ⟨σx⟩ ≤ −0.99 and the largest angle between the gradient and the QNG step along QNG's path.
2. **VQE.** Open-chain transverse-field Ising model H = Σ Z_i Z_{i+1} + h Σ X_i (h = 0.6) on n = 3–6 qubits; the
   target is E ≤ E_0 + 0.01|E_0| with E_0 from dense diagonalization. Ansatz: hardware-efficient (RY, RZ per
   qubit, CNOT chain), 2 layers at n = 3 and n layers above (P = 2nL), init 0.2·N(0, 1). Optimizers: GD, Adam,
   QNG with the full, block-diagonal and diagonal Fubini–Study metric (damping 1e-3, refreshed every step). A
   tuning cell per (n, optimizer) runs the lr grid on the tuning seeds; the evaluation cell runs every seed at the
   best lr (fewest median steps, ties to the smaller lr). Seeds are paired across optimizers.

   **Circuit evaluations** (what a QPU pays; one evaluation = one expectation-value estimate, shots not counted):
   per step 1 (the energy) + 2P (parameter-shift gradient, 2 shifted circuits per parameter) + the metric:
   full: 2P² (the fidelity Hessian by parameter shift: 4 circuits for each of the P(P−1)/2 off-diagonal entries,
   2 for each diagonal one; Mari et al. 2021, Gacon et al. 2021), block-diagonal and diagonal: one circuit per
   parametrized layer (Stokes et al. 2020: the layer's commuting generators are measured together on the state
   prepared up to that layer; the diagonal uses the same measurements).
3. **Barren plateaus.** Var_θ[∂⟨Z0Z1⟩/∂θ_k] over θ ~ U[0, 2π)^P for hardware-efficient circuits of 2n layers,
   n = 2 … (McClean et al. 2018 predict exponential decay in n): the first parameter's variance and the mean
   over parameters, with the slope of log10 Var vs n and a bootstrap CI over the θ samples.
4. **Hybrid LMs.** :mod:`infogeom.study.ablation` (quantum bigram LM on Shakespeare): AdamW, Fubini–Study QNG and
   pull-back QNG on the circuit, plus an equal-parameter classical arm (:class:`~infogeom.study.ablation.
   ClassicalBigram`) and an equal-wall-clock classical arm (the classical model for as many steps as fit in the
   AdamW quantum arm's training seconds of the same seed, measured in the cells it needs, capped at 50× steps);
   and the Born LM head's tr F^Q / tr F^cl on a validation batch (at initialization and after training).
5. **Effective dimension** (audit of "5–20× more Fisher information per parameter" = tr F / P): the normalized
   effective dimension d_{γ,n}/P (:func:`~infogeom.curvature.effective_dimension`) of the pull-back Fisher of a
   4-qubit quantum classifier (angle embedding, hardware-efficient ansatz, p(y = 0) = (1 + ⟨Z0⟩)/2, θ ~
   U[0, 2π)) and an equal-parameter classical MLP (4-2-2, θ ~ U[−1, 1]) over Gaussian inputs, as in Abbas et al.
   2021; and the scalar reparameterization θ = aφ (F ↦ a²F), which multiplies tr F / P by a² and leaves d as is.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ...curvature import effective_dimension
from ...optim.qng import QuantumNaturalGradient
from ...quantum import (
    Circuit,
    PauliSum,
    angle_embedding,
    classical_fisher,
    fisher_phase_decomposition,
    fubini_study_metric,
    hardware_efficient,
    pullback_metric,
    quantum_fisher_information,
)
from .. import stats
from ..spec import Cell, Claim, Experiment, Section
from .common import savefig

FN = "infogeom.study.experiments.e6:"
OPTIMIZERS = ("gd", "adam", "qng-full", "qng-block", "qng-diag")
APPROX = {"qng-full": None, "qng-block": "block-diag", "qng-diag": "diag"}
FIELD = 0.6
TOL_REL = 0.01
QNG_DAMPING = 1e-3
BLOCH_TARGET = -0.99
PROFILES = {
    "quick": {"qubits": [3, 4], "lrs": [0.1, 0.3], "tune_seeds": 2, "seeds": 3, "max_steps": 60,
              "bloch_starts": 4, "bloch_steps": 100, "var_qubits": [2, 3, 4, 5, 6], "var_samples": 200,
              "ablation": {"seeds": 2, "steps": 40, "eval_every": 20, "eval_batches": 4},
              "effdim": {"samples": 24, "inputs": 64}, "born_steps": 50},
    "full": {"qubits": [3, 4, 5, 6], "lrs": [0.01, 0.03, 0.1, 0.3, 1.0], "tune_seeds": 2, "seeds": 10,
             "max_steps": 200, "bloch_starts": 20, "bloch_steps": 200, "var_qubits": [2, 3, 4, 5, 6, 7, 8],
             "var_samples": 300, "ablation": {"seeds": 10, "steps": 200, "eval_every": 50, "eval_batches": 8},
             "effdim": {"samples": 100, "inputs": 200}, "born_steps": 500},
}
ABLATION_ARMS = ("adam", "qng-fs", "qng-pullback", "classical", "classical-wallclock")
EFFDIM_N = (1e3, 1e4, 1e5, 1e6)
WALLCLOCK_CAP = 50


def save_data(figdir: Path, name: str, data: dict) -> str:
    """Write a figure's data as ``figdir/name`` (JSON) next to its PNG; returns the file name."""
    figdir.mkdir(parents=True, exist_ok=True)
    (figdir / name).write_text(json.dumps(data, indent=1, default=float))
    return name


# --- 1. Bloch sphere -------------------------------------------------------------------------------------------

def bloch_circuit() -> Circuit:
    """|ψ(θ, φ)⟩ = RZ(φ) RX(θ)|0⟩ (parameters ordered θ, φ)."""
    return Circuit(1).add("RX", 0).add("RZ", 0)


def bloch_closed_form(theta: float) -> dict[str, torch.Tensor]:
    """F^Q, F^cl (Z measurement) and the phase term 4Cov(∂φ) of :func:`bloch_circuit` at polar angle θ."""
    s2 = math.sin(theta) ** 2
    return {"qfi": torch.tensor([[1.0, 0.0], [0.0, s2]], dtype=torch.float64),
            "classical": torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=torch.float64),
            "phase": torch.tensor([[0.0, 0.0], [0.0, s2]], dtype=torch.float64)}


def bloch_tensors(theta: float, phi: float) -> dict[str, torch.Tensor]:
    """The library's F^Q, F^cl and phase term of :func:`bloch_circuit` at (θ, φ)."""
    c = bloch_circuit()
    w = torch.tensor([theta, phi], dtype=torch.float64)
    psi, J = c.state_and_jacobian(w)
    f_cl, phase = fisher_phase_decomposition(psi, J)
    return {"qfi": quantum_fisher_information(c, w), "classical": f_cl, "phase": phase}


def _angle(a: torch.Tensor, b: torch.Tensor) -> float:
    cos = float(a @ b / (torch.linalg.vector_norm(a) * torch.linalg.vector_norm(b)).clamp_min(1e-300))
    return math.degrees(math.acos(max(-1.0, min(1.0, cos))))


def bloch_path(optimizer: str, start: tuple[float, float], lr: float, steps: int) -> dict:
    """Minimize ⟨σx⟩ from ``start``; the loss per step, steps to :data:`BLOCH_TARGET` (None if never) and the
    largest gradient–step angle (degrees)."""
    c, X = bloch_circuit(), PauliSum.from_string("X0")
    w = torch.tensor(start, dtype=torch.float64, requires_grad=True)
    if optimizer in ("qng", "fcl-ng"):
        metric = ((lambda: fubini_study_metric(c, w.detach())) if optimizer == "qng"
                  else (lambda: classical_fisher(c, w.detach()) / 4))
        opt = QuantumNaturalGradient([w], metric, lr=lr, damping=0.0)
    elif optimizer == "adam":
        opt = torch.optim.Adam([w], lr=lr)
    else:
        opt = torch.optim.SGD([w], lr=lr)
    losses, hit, max_angle, path = [], None, 0.0, [list(start)]
    for step in range(steps):
        opt.zero_grad()
        loss = c.expval(X, w)
        losses.append(float(loss.detach()))
        if hit is None and losses[-1] <= BLOCH_TARGET:
            hit = step
        loss.backward()
        before = w.detach().clone()
        opt.step()
        move = before - w.detach()
        if float(torch.linalg.vector_norm(move)) > 0:
            max_angle = max(max_angle, _angle(w.grad, move))
        path.append(w.detach().tolist())
    return {"losses": losses, "steps_to_target": hit, "max_angle_deg": max_angle, "path": path}


def run_bloch(params: dict, seed: int, workdir: Path, inputs: dict) -> dict:
    """Closed-form check on a grid, then every optimizer from the same random starts at lr ``params['lr']``."""
    err, min_gap, identity = 0.0, math.inf, 0.0
    for theta in np.linspace(0.05, math.pi - 0.05, 9):
        for phi in np.linspace(0.0, 2 * math.pi, 5):
            lib, ref = bloch_tensors(float(theta), float(phi)), bloch_closed_form(float(theta))
            err = max(err, *(float((lib[k] - ref[k]).abs().max()) for k in ref))
            min_gap = min(min_gap, float(torch.linalg.eigvalsh(lib["qfi"] - lib["classical"]).min()))
            identity = max(identity, float((lib["qfi"] - lib["classical"] - lib["phase"]).abs().max()))
    g = np.random.default_rng(seed)
    starts = [(0.5, 0.5)] + [tuple(g.uniform(0.1, math.pi - 0.1, 2)) for _ in range(params["starts"] - 1)]
    runs = {opt: [bloch_path(opt, s, params["lr"], params["steps"]) for s in starts]
            for opt in ("qng", "fcl-ng", "gd", "adam")}
    return {"closed_form_max_error": err, "min_eig_qfi_minus_classical": min_gap,
            "phase_identity_max_error": identity, "starts": [list(s) for s in starts], "lr": params["lr"],
            "runs": runs}


# --- 2. VQE ----------------------------------------------------------------------------------------------------

def tfim(n: int, h: float = FIELD) -> PauliSum:
    """Open-chain transverse-field Ising model Σ_i Z_i Z_{i+1} + h Σ_i X_i."""
    return PauliSum([(1.0, f"Z{i} Z{i + 1}") for i in range(n - 1)] + [(h, f"X{i}") for i in range(n)])


def tfim_ground_energy(n: int, h: float = FIELD) -> float:
    """E_0 by dense diagonalization of the 2ⁿ × 2ⁿ Hamiltonian."""
    return float(torch.linalg.eigvalsh(tfim(n, h).matrix(n))[0])


def vqe_circuit(n: int) -> Circuit:
    return hardware_efficient(n, 2 if n <= 3 else n)


def evaluations_per_step(optimizer: str, circuit: Circuit) -> int:
    """Circuit evaluations of one step (module doc): energy + parameter-shift gradient + metric."""
    P = circuit.n_params
    metric = {"qng-full": 2 * P * P, "qng-block": len(circuit.layers()), "qng-diag": len(circuit.layers())}
    return 1 + 2 * P + metric.get(optimizer, 0)


def vqe_run(n: int, optimizer: str, lr: float, init_seed: int, max_steps: int) -> dict:
    """Steps (gradient steps taken) until E ≤ E_0 + 0.01|E_0|, or ``max_steps`` (then ``reached`` is False)."""
    H, c = tfim(n), vqe_circuit(n)
    e0 = tfim_ground_energy(n)
    g = torch.Generator().manual_seed(init_seed)
    th = (0.2 * torch.randn(c.n_params, generator=g, dtype=torch.float64)).requires_grad_()
    if optimizer in APPROX:
        opt = QuantumNaturalGradient([th], lambda: fubini_study_metric(c, th.detach(), approx=APPROX[optimizer]),
                                     lr=lr, damping=QNG_DAMPING)
    elif optimizer == "adam":
        opt = torch.optim.Adam([th], lr=lr)
    else:
        opt = torch.optim.SGD([th], lr=lr)
    target, energies, steps = e0 + TOL_REL * abs(e0), [], max_steps
    for step in range(max_steps + 1):
        opt.zero_grad()
        energy = c.expval(H, th)
        energies.append(float(energy.detach()))
        if not math.isfinite(energies[-1]) or energies[-1] <= target or step == max_steps:
            steps = step
            break
        energy.backward()
        opt.step()
    reached = energies[-1] <= target
    return {"steps": steps, "reached": bool(reached), "final_energy": energies[-1], "e0": e0, "energies": energies,
            "evaluations": steps * evaluations_per_step(optimizer, c) + 1, "params": c.n_params}


def _init_seed(seed: int, i: int) -> int:
    return (seed + 7919 * i) % (2**31)


def run_vqe_tune(params: dict, seed: int, workdir: Path, inputs: dict) -> dict:
    """The lr grid on the tuning seeds; ``best_lr``: fewest median steps (unreached = max_steps + 1)."""
    grid = {}
    for lr in params["lrs"]:
        runs = [vqe_run(params["n"], params["optimizer"], lr, _init_seed(seed, i), params["max_steps"])
                for i in range(params["tune_seeds"])]
        grid[str(lr)] = [r["steps"] if r["reached"] else params["max_steps"] + 1 for r in runs]
    best = min(params["lrs"], key=lambda lr: (float(np.median(grid[str(lr)])), lr))
    return {"grid": grid, "best_lr": best}


def run_vqe_eval(params: dict, seed: int, workdir: Path, inputs: dict) -> dict:
    """Every seed at the tuned lr."""
    lr = next(iter(inputs.values()))["result"]["best_lr"]
    runs = [vqe_run(params["n"], params["optimizer"], lr, _init_seed(seed, i), params["max_steps"])
            for i in range(params["seeds"])]
    for r in runs:
        r.pop("energies")
    return {"lr": lr, "runs": runs, "evaluations_per_step": evaluations_per_step(params["optimizer"],
                                                                                   vqe_circuit(params["n"]))}


# --- 3. barren plateaus ----------------------------------------------------------------------------------------

def run_gradvar(params: dict, seed: int, workdir: Path, inputs: dict) -> dict:
    """∂⟨Z0 Z1⟩/∂θ over θ ~ U[0, 2π)^P for a hardware-efficient circuit of 2n layers (one batched program)."""
    n = params["n"]
    c = hardware_efficient(n, 2 * n)
    g = torch.Generator().manual_seed(seed)
    th = (2 * math.pi * torch.rand(params["samples"], c.n_params, generator=g, dtype=torch.float64))
    th.requires_grad_()
    c.expval(PauliSum.from_string("Z0 Z1"), th).sum().backward()
    grads = th.grad
    return {"n": n, "params": c.n_params, "grad_first": grads[:, 0].tolist(),
            "var_first": float(grads[:, 0].var()), "var_mean": float(grads.var(0).mean())}


def decay_slope(ns: list[int], samples: list[np.ndarray], n_resamples: int = 2000, seed: int = 0) -> stats.Interval:
    """Slope of log10 Var vs n (least squares) with a percentile bootstrap CI over each n's samples."""
    rng = np.random.default_rng(seed)
    x = np.asarray(ns, np.float64)

    def slope(vs):
        return float(np.polyfit(x, np.log10(vs), 1)[0])

    value = slope([s.var(ddof=1) for s in samples])
    boot = [slope([s[rng.integers(0, s.size, s.size)].var(ddof=1) for s in samples]) for _ in range(n_resamples)]
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return stats.Interval(value, float(lo), float(hi), len(ns), "percentile")


# --- 4. hybrid LMs ---------------------------------------------------------------------------------------------

def _ablation_config(params: dict):
    from ..ablation import AblationConfig

    return AblationConfig(task="bigram", seeds=1, steps=params["steps"], eval_every=params["eval_every"],
                          eval_batches=params["eval_batches"])


def run_ablation_arm(params: dict, seed: int, workdir: Path, inputs: dict) -> dict:
    """One (arm, seed) of :mod:`infogeom.study.ablation`; the wall-clock arm trains the classical model for
    round(t_quantum / t_classical_per_step) steps (≤ 50× the quantum steps) from the cells it needs."""
    from dataclasses import replace

    from ..ablation import load_data, train_one

    cfg = _ablation_config(params)
    arm = params["arm"]
    if arm == "classical-wallclock":
        res = {k: v["result"] for k, v in inputs.items()}
        quantum = next(r for k, r in res.items() if "/adam/" in k)
        classical = next(r for k, r in res.items() if "/classical/" in k)
        per_step = classical["train_time"] / cfg.steps
        steps = int(min(WALLCLOCK_CAP * cfg.steps, max(cfg.steps, round(quantum["train_time"] / per_step))))
        cfg = replace(cfg, steps=steps, eval_every=steps)
        arm = "classical"
    out = train_one(arm, seed, cfg, load_data(cfg.corpus))
    out["steps"] = cfg.steps
    return out


# --- 4b. Born head ---------------------------------------------------------------------------------------------

def run_born(params: dict, seed: int, workdir: Path, inputs: dict) -> dict:
    """tr F^Q / tr F^cl of a Born LM head (:func:`~infogeom.geometry.born.compare_born_geometry`) on a
    validation batch of Shakespeare, at initialization and after ``steps`` AdamW steps of a ladder GPT."""
    from ...data import prepare_data
    from ...geometry.born import compare_born_geometry
    from ...models.born_head import use_born_head
    from ...models.gpt import lm_loss
    from .e2 import _gpt

    data = prepare_data("shakespeare", "char")
    model = _gpt(params["size"], seed)
    use_born_head(model)
    g = torch.Generator().manual_seed(seed)
    idx = data.get_batch("val", 4, 64, torch.Generator().manual_seed(seed + 1))[0]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    out = {"size": params["size"], "steps": params["steps"]}
    for step in range(params["steps"] + 1):
        if step in (0, params["steps"]):
            model.eval()
            with torch.no_grad():
                geo = compare_born_geometry(model, idx, probes=8, generator=torch.Generator().manual_seed(seed))
            out["init" if step == 0 else "trained"] = geo
            model.train()
        if step == params["steps"]:
            break
        x, y = data.get_batch("train", 16, 64, g)
        loss = lm_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    out["final_train_loss"] = float(loss.detach())
    return out


# --- 5. effective dimension ------------------------------------------------------------------------------------

def classifier_circuit() -> Circuit:
    return hardware_efficient(4, 2, circuit=angle_embedding(Circuit(4), rotation="Y"))


class TinyMLP(nn.Module):
    """4 → 2 (tanh) → 2 logits: 16 parameters, the quantum classifier's count."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 2), nn.Tanh(), nn.Linear(2, 2))

    def forward(self, x):
        return self.net(x)


def classifier_fishers(kind: str, n_samples: int, n_inputs: int, seed: int) -> torch.Tensor:
    """Pull-back Fisher samples ``[S, P, P]`` (output distribution over 2 classes, mean over the inputs)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_inputs, 4, generator=g, dtype=torch.float64)
    out = []
    if kind == "quantum":
        c = classifier_circuit()

        def logp(w):
            p0 = 0.5 * (1 + c.expval_z(w, x, wires=(0,))[..., 0])
            return torch.stack([torch.log(p0.clamp_min(1e-300)), torch.log((1 - p0).clamp_min(1e-300))], -1)

        for _ in range(n_samples):
            w = 2 * math.pi * torch.rand(c.n_params, generator=g, dtype=torch.float64)
            out.append(pullback_metric(logp, w))
    else:
        from torch.func import functional_call

        model = TinyMLP().double()
        names = [n for n, _ in model.named_parameters()]
        shapes = [p.shape for _, p in model.named_parameters()]
        sizes = [p.numel() for _, p in model.named_parameters()]

        def logits(w):
            parts = dict(zip(names, (t.reshape(s) for t, s in zip(w.split(sizes), shapes))))
            return functional_call(model, parts, (x,))

        for _ in range(n_samples):
            w = 2 * torch.rand(sum(sizes), generator=g, dtype=torch.float64) - 1
            out.append(pullback_metric(logits, w))
    return torch.stack(out)


def run_effdim(params: dict, seed: int, workdir: Path, inputs: dict) -> dict:
    """d_{γ=1,n}/P at :data:`EFFDIM_N`, tr F / P, and both under θ = aφ (F ↦ a²F, a = 10)."""
    F = classifier_fishers(params["kind"], params["samples"], params["inputs"], seed)
    P = F.shape[-1]
    tr = torch.diagonal(F, dim1=-2, dim2=-1).sum(-1)
    a = 10.0
    d = effective_dimension(F, EFFDIM_N) / P
    d_re = effective_dimension(a**2 * F, EFFDIM_N) / P
    return {"kind": params["kind"], "params": P, "trace_per_param": float(tr.mean()) / P,
            "trace_per_param_reparam": float(a**2 * tr.mean()) / P, "scale": a,
            "normalized_effdim": dict(zip(map(str, EFFDIM_N), d.tolist())),
            "normalized_effdim_reparam": dict(zip(map(str, EFFDIM_N), d_re.tolist())),
            "fishers": F.tolist()}


def effdim_ci(fishers: torch.Tensor, n: float, n_resamples: int = 2000, seed: int = 0) -> stats.Interval:
    """d_{1,n}/P with a BCa bootstrap CI over the θ samples (the normalization E tr F is resampled too): with the
    eigenvalues μ_s of each F_s computed once, a resample's F̂ eigenvalues are P μ_s / mean tr F (vectorized)."""
    F = fishers.to(torch.float64)
    S, P = F.shape[0], F.shape[-1]
    mu = torch.linalg.eigvalsh(0.5 * (F + F.transpose(-1, -2))).clamp_min(0).numpy()  # [S, P]
    tr = mu.sum(-1)
    kappa = n / (2 * math.pi * math.log(n))

    def statistic(idx, axis=-1):
        rows = np.atleast_2d(idx).astype(int)  # [B, S]
        lam = mu[rows] * (P / tr[rows].mean(-1))[:, None, None]
        z = 0.5 * np.log1p(kappa * lam).sum(-1)
        zmax = z.max(-1, keepdims=True)
        lse = zmax[:, 0] + np.log(np.exp(z - zmax).sum(-1))
        d = 2 * (lse - math.log(rows.shape[-1])) / math.log(kappa) / P
        return d if np.ndim(idx) > 1 else float(d[0])

    return stats.bootstrap_ci(np.arange(S, dtype=float), statistic, n_resamples=n_resamples, seed=seed)


# --- plan -----------------------------------------------------------------------------------------------------

def plan(profile: str) -> list[Cell]:
    p = PROFILES[profile]
    cells = [Cell("E6", "e6/bloch", FN + "run_bloch", {"starts": p["bloch_starts"], "steps": p["bloch_steps"],
                                                       "lr": 0.1}, est_seconds=1.0 + 0.12 * p["bloch_starts"])]
    for n in p["qubits"]:
        P = 2 * n * (2 if n <= 3 else n)
        for opt in OPTIMIZERS:
            # measured (loaded machine ≈ 2× slower): ≈ 30 ms per GD step at P = 32, QNG ≈ 2× that
            run_s = 0.0005 * P * p["max_steps"] * (2.0 if opt.startswith("qng") else 1.0)
            tune = f"e6/vqe/tune/n{n}/{opt}"
            common = {"n": n, "optimizer": opt, "max_steps": p["max_steps"], "pair_key": f"e6/vqe/n{n}"}
            cells.append(Cell("E6", tune, FN + "run_vqe_tune",
                              {**common, "lrs": p["lrs"], "tune_seeds": p["tune_seeds"]}, priority=1,
                              est_seconds=0.5 + run_s * len(p["lrs"]) * p["tune_seeds"]))
            cells.append(Cell("E6", f"e6/vqe/eval/n{n}/{opt}", FN + "run_vqe_eval", {**common, "seeds": p["seeds"]},
                              priority=1, est_seconds=0.5 + run_s * p["seeds"], needs=(tune,)))
    for n in p["var_qubits"]:
        cells.append(Cell("E6", f"e6/gradvar/n{n}", FN + "run_gradvar", {"n": n, "samples": p["var_samples"]},
                          priority=2, est_seconds=0.3 + 1e-6 * p["var_samples"] * n * n * 2**n))
    a = p["ablation"]
    for r in range(a["seeds"]):
        for arm in ABLATION_ARMS:
            needs = (f"e6/ablation/adam/r{r}", f"e6/ablation/classical/r{r}") if arm == "classical-wallclock" else ()
            cost = {"adam": 0.05, "qng-fs": 0.12, "qng-pullback": 0.15, "classical": 0.005,
                    "classical-wallclock": 0.05}[arm]
            cells.append(Cell("E6", f"e6/ablation/{arm}/r{r}", FN + "run_ablation_arm",
                              {**a, "arm": arm, "pair_key": "e6/ablation"}, replicate=r, priority=3,
                              est_seconds=1.0 + cost * a["steps"], needs=needs))
    cells.append(Cell("E6", "e6/born", FN + "run_born", {"size": "19.6k", "steps": p["born_steps"]}, priority=3,
                      est_seconds=2.0 + 0.02 * p["born_steps"]))
    for kind in ("quantum", "classical"):
        cells.append(Cell("E6", f"e6/effdim/{kind}", FN + "run_effdim", {"kind": kind, **p["effdim"],
                                                                         "pair_key": "e6/effdim"},
                          priority=2, est_seconds=1.0 + (0.15 if kind == "quantum" else 0.01) * p["effdim"]["samples"]))
    return cells


# --- analysis -------------------------------------------------------------------------------------------------

def _bloch_section(r: dict, figdir: Path, claims, figures, tables, numbers) -> None:
    import matplotlib.pyplot as plt

    exact = (r["closed_form_max_error"] <= 1e-10 and r["min_eig_qfi_minus_classical"] >= -1e-10
             and r["phase_identity_max_error"] <= 1e-10)
    claims.append(Claim(
        "E6.1", "QFI = classical Fisher of Z measurements + 4Cov(∂φ), and F^cl ≤ F^Q (Bloch sphere)",
        "consistent" if exact else "inconsistent",
        f"max |library − closed form| = {r['closed_form_max_error']:.1e}; min eig(F^Q − F^cl) = "
        f"{r['min_eig_qfi_minus_classical']:.1e}; identity residual {r['phase_identity_max_error']:.1e}",
        "F^Q = diag(1, sin²θ), F^cl = diag(1, 0): Z measurements are blind to the phase",
        "Braunstein & Caves 1994; Meyer 2021", "consistent if every error ≤ 1e-10 and min eig ≥ −1e-10 on a 9×5 "
        "(θ, φ) grid; inconsistent otherwise"))
    cap = len(r["runs"]["qng"][0]["losses"])
    steps = {o: [x["steps_to_target"] if x["steps_to_target"] is not None else cap + 1 for x in runs]
             for o, runs in r["runs"].items()}
    med = {o: float(np.median(v)) for o, v in steps.items()}
    numbers["bloch"] = {"steps_to_target": steps, "median": med, "lr": r["lr"],
                        "max_angle_deg_qng": max(x["max_angle_deg"] for x in r["runs"]["qng"]),
                        **{k: r[k] for k in ("closed_form_max_error", "min_eig_qfi_minus_classical")}}
    win = med["qng"] < min(med["gd"], med["adam"])
    claims.append(Claim(
        "E6.2", "On the Bloch sphere QNG reaches the minimum in fewer steps than GD and Adam at a common lr",
        "consistent" if win else "inconsistent" if med["qng"] > max(med["gd"], med["adam"]) else "inconclusive",
        f"median steps to ⟨σx⟩ ≤ {BLOCH_TARGET} at lr {r['lr']}: " + ", ".join(f"{o} {m:g}" for o, m in med.items())
        + f" ({len(r['starts'])} starts; {cap + 1} = not reached)",
        "QNG beats GD and Adam at a common lr", "Stokes et al. 2020",
        "consistent if QNG's median is below both GD's and Adam's; inconsistent if above both"))
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    for i, (o, runs) in enumerate(r["runs"].items()):
        L = np.array([x["losses"] for x in runs])
        m, s = L.mean(0), L.std(0)
        a1.plot(m, color=f"C{i}", label=f"{o} (mean ± std over {len(runs)} starts)")
        a1.fill_between(range(len(m)), m - s, m + s, color=f"C{i}", alpha=0.15)
        path = np.array(runs[0]["path"])
        a2.plot(path[:, 0], path[:, 1], color=f"C{i}", label=f"{o} from (0.5, 0.5)")
    a1.axhline(BLOCH_TARGET, color="k", ls=":", lw=0.8)
    a1.set(xlabel="step", ylabel="⟨σx⟩ (dimensionless)", title=f"Bloch sphere, lr {r['lr']}")
    a2.set(xlabel="θ (rad)", ylabel="φ (rad)", title="trajectories (θ, φ)")
    a1.legend(fontsize=7)
    a2.legend(fontsize=7)
    figures.append((savefig(fig, figdir, "e6_bloch.png"),
                    "Bloch sphere: ⟨σx⟩ per step for QNG (F^Q), classical-Fisher NG (F^cl, blind to φ), GD and Adam "
                    "at a common lr (mean ± std over random starts), and the paths from (0.5, 0.5). Data: "
                    + save_data(figdir, "e6_bloch.json", {"steps": steps, "starts": r["starts"]})))


def _sd(x) -> float:
    return float(np.std(x, ddof=1)) if len(x) > 1 else 0.0


def _vqe_section(evals, tunes, figdir: Path, claims, figures, tables, numbers) -> None:
    import matplotlib.pyplot as plt

    by = {(c.params["n"], c.params["optimizer"]): r for c, r in evals}
    ns = sorted({n for n, _ in by})
    rows, data = [], {}
    for n in ns:
        for o in OPTIMIZERS:
            if (n, o) not in by:
                continue
            r = by[(n, o)]
            st = [x["steps"] for x in r["runs"]]
            ev = [x["evaluations"] for x in r["runs"]]
            ok = sum(x["reached"] for x in r["runs"])
            data[f"n{n}/{o}"] = {"steps": st, "evaluations": ev, "lr": r["lr"], "reached": ok,
                                 "evaluations_per_step": r["evaluations_per_step"]}
            rows.append([str(n), str(r["runs"][0]["params"]), o, f"{r['lr']:g}", f"{ok}/{len(st)}",
                         f"{np.mean(st):.1f} ± {_sd(st):.1f}", str(r["evaluations_per_step"]),
                         f"{np.mean(ev):.3g} ± {_sd(ev):.2g}"])
    common = {f"n{c.params['n']}/{c.params['optimizer']}": r["grid"].get("0.1") for c, r in tunes}
    numbers["vqe"] = {"cells": data, "steps_at_lr_0.1_tuning_seeds": common}
    tables.append(("VQE (TFIM, h = 0.6; target E_0 + 1%|E_0|): steps and circuit evaluations to target at each "
                   "optimizer's tuned lr (mean ± std over seeds; unreached runs count their step cap)",
                   ["qubits", "P", "optimizer", "best lr", "reached", "steps", "evals/step", "circuit evaluations"],
                   rows))

    def pooled(o):
        return ([x for n in ns for x in data.get(f"n{n}/{o}", {}).get("steps", [])],
                [x for n in ns for x in data.get(f"n{n}/{o}", {}).get("evaluations", [])])

    if all(f"n{n}/{o}" in data for n in ns for o in ("gd", "adam", "qng-full")):
        qs, qe = pooled("qng-full")
        best_base = min(("gd", "adam"), key=lambda o: np.mean(pooled(o)[0]))
        bs, be = pooled(best_base)
        ratio = stats.paired_ratio(bs, qs)
        ci = ratio.interval
        claims.append(Claim(
            "E6.3", "VQE: full QNG needs fewer steps than tuned GD/Adam", "consistent" if ci.lo > 1 else
            "inconsistent" if ci.hi < 1 else "inconclusive",
            f"steps({best_base}) / steps(QNG) = {stats.fmt(ci)} (geometric mean, paired over {ratio.n} "
            f"(n, seed) pairs)", "QNG beats tuned GD only narrowly (in-repo 7–11 vs 8–14 steps)",
            "Stokes et al. 2020", "consistent if the CI of the paired step ratio (best of GD/Adam by mean steps "
            "over QNG) is above 1; inconsistent if below 1"))
        cheapest = min(("qng-full", "qng-block", "qng-diag"), key=lambda o: np.mean(pooled(o)[1] or [math.inf]))
        ce = pooled(cheapest)[1]
        eratio = stats.paired_ratio(be, ce)
        eci = eratio.interval
        claims.append(Claim(
            "E6.4", "VQE: QNG also needs fewer circuit evaluations (what a QPU pays)",
            "consistent" if eci.lo > 1 else "inconsistent" if eci.hi < 1 else "inconclusive",
            f"evaluations({best_base}) / evaluations({cheapest}) = {stats.fmt(eci)}; full QNG / {best_base} = "
            f"{stats.fmt(stats.paired_ratio(qe, be).interval)}",
            "the full QFI costs O(P²) circuits per step, the block-diagonal one a circuit per layer",
            "Gacon et al. 2021; Stokes et al. 2020",
            "consistent if the CI of evaluations(best of GD/Adam) / evaluations(cheapest QNG variant) is above 1; "
            "inconsistent if below 1"))
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / len(OPTIMIZERS)
    for i, o in enumerate(OPTIMIZERS):
        xs = [j + (i - 2) * width for j, n in enumerate(ns) if f"n{n}/{o}" in data]
        for ax, key in ((a1, "steps"), (a2, "evaluations")):
            vals = [data[f"n{n}/{o}"][key] for n in ns if f"n{n}/{o}" in data]
            ax.bar(xs, [np.mean(v) for v in vals], width, yerr=[np.std(v) for v in vals], color=f"C{i}",
                   label=f"{o} (mean ± std over {len(vals[0]) if vals else 0} seeds)", capsize=2)
    for ax, lab in ((a1, "gradient steps to target"), (a2, "circuit evaluations to target")):
        ax.set_xticks(range(len(ns)), [f"{n} qubits" for n in ns])
        ax.set(ylabel=lab, xlabel="TFIM size")
        ax.legend(fontsize=7)
    a2.set_yscale("log")
    a1.set_title("VQE: steps (each at its tuned lr)")
    a2.set_title("VQE: circuit evaluations (parameter shift + metric)")
    figures.append((savefig(fig, figdir, "e6_vqe.png"),
                    "VQE on the TFIM: steps and circuit evaluations to E_0 + 1%|E_0|. Data: "
                    + save_data(figdir, "e6_vqe.json", data)))


def _gradvar_section(gv, figdir: Path, claims, figures, tables, numbers) -> None:
    import matplotlib.pyplot as plt

    gv = sorted(gv, key=lambda r: r["n"])
    ns = [r["n"] for r in gv]
    slope = decay_slope(ns, [np.asarray(r["grad_first"]) for r in gv])
    numbers["gradvar"] = {"n": ns, "var_first": [r["var_first"] for r in gv], "var_mean": [r["var_mean"] for r in gv],
                          "slope_log10_per_qubit": slope.to_dict()}
    claims.append(Claim(
        "E6.5", "Gradient variance of random hardware-efficient circuits decays exponentially with qubits",
        "consistent" if slope.hi < 0 else "inconsistent" if slope.lo >= 0 else "inconclusive",
        f"d log10 Var[∂θ₁⟨Z0Z1⟩] / dn = {stats.fmt(slope)} per qubit (n = {ns[0]}–{ns[-1]})",
        "barren plateaus: Var ∝ 2^(−cn)", "McClean et al. 2018",
        "consistent if the bootstrap CI of the slope of log10 Var vs n is below 0; inconsistent if ≥ 0"))
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.semilogy(ns, numbers["gradvar"]["var_first"], "o-", label="Var ∂θ₁ (first parameter)")
    ax.semilogy(ns, numbers["gradvar"]["var_mean"], "s--", label="mean over parameters of Var ∂θ_k")
    ax.set(xlabel="qubits n (2n layers)", ylabel="Var[∂⟨Z0Z1⟩/∂θ] (dimensionless)",
           title=f"Barren plateaus ({len(gv[0]['grad_first'])} random θ per n)")
    ax.legend(fontsize=8)
    figures.append((savefig(fig, figdir, "e6_gradvar.png"), "Gradient variance vs qubit count. Data: "
                    + save_data(figdir, "e6_gradvar.json", numbers["gradvar"])))


def _ablation_section(abl, figdir: Path, claims, figures, tables, numbers) -> None:
    import matplotlib.pyplot as plt

    val: dict[str, dict[int, float]] = {}
    info: dict[str, dict] = {}
    for c, r in abl:
        val.setdefault(c.params["arm"], {})[c.replicate] = r["final_val_loss"]
        info.setdefault(c.params["arm"], {"params": r["params"], "steps": [], "time": []})
        info[c.params["arm"]]["steps"].append(r["steps"])
        info[c.params["arm"]]["time"].append(r["train_time"])
    base = val.get("adam", {})
    rows, diffs = [], {}
    for arm in ABLATION_ARMS:
        if arm not in val:
            continue
        v = list(val[arm].values())
        d = None
        if arm != "adam":
            keys = sorted(set(val[arm]) & set(base))
            d = stats.paired_difference([val[arm][k] for k in keys], [base[k] for k in keys])
            diffs[arm] = d
        rows.append([arm, str(info[arm]["params"]), f"{np.mean(info[arm]['steps']):.0f}",
                     f"{np.mean(info[arm]['time']):.2f}", stats.fmt(stats.mean_ci(v)),
                     stats.fmt(d.interval) if d else "—"])
    numbers["ablation"] = {"val": val, "paired_vs_adam": {k: d.to_dict() for k, d in diffs.items()}, "info": info}
    tables.append(("Hybrid bigram LM (5 qubits, 2 layers): final validation loss (nats/char, mean with CI over "
                   "seeds) and paired difference to AdamW on the quantum model", ["arm", "params", "steps",
                                                                                  "train s", "val loss",
                                                                                  "Δ vs adam"], rows))
    qng = [diffs[a].interval for a in ("qng-fs", "qng-pullback") if a in diffs]
    if qng:
        verdict = ("consistent" if any(ci.hi < 0 for ci in qng) else
                   "inconsistent" if all(ci.lo > 0 for ci in qng) else "inconclusive")
        claims.append(Claim("E6.6", "QNG on the circuit weights improves a hybrid LM over AdamW", verdict,
                            "; ".join(f"{a}: Δ = {stats.fmt(diffs[a].interval)} nats" for a in ("qng-fs",
                                                                                                "qng-pullback")
                                      if a in diffs),
                            "pull-back QNG helps (arXiv 2506.15830); earlier in-repo differences within 1σ",
                            "arXiv 2506.15830", "consistent if either QNG arm's CI of the paired difference to "
                            "AdamW is below 0; inconsistent if both are above 0"))
    ctrl = [(a, diffs[a].interval) for a in ("classical", "classical-wallclock") if a in diffs]
    if ctrl:
        verdict = ("consistent" if all(ci.lo > 0 for _, ci in ctrl) else
                   "inconsistent" if any(ci.hi < 0 for _, ci in ctrl) else "inconclusive")
        claims.append(Claim("E6.7", "The circuit beats an equal-parameter (and an equal-wall-clock) classical layer",
                            verdict, "; ".join(f"{a} − quantum: {stats.fmt(ci)} nats" for a, ci in ctrl),
                            "quantum layers add expressivity per parameter", "arXiv 2506.15830",
                            "consistent if every classical arm's paired difference (classical − quantum AdamW) has "
                            "its CI above 0; inconsistent if any is below 0"))
    fig, ax = plt.subplots(figsize=(7, 4))
    arms = [a for a in ABLATION_ARMS if a in val]
    for i, a in enumerate(arms):
        v = list(val[a].values())
        ax.bar(i, np.mean(v), yerr=np.std(v, ddof=1) if len(v) > 1 else 0, color=f"C{i}", capsize=3)
        ax.scatter([i] * len(v), v, color="k", s=8, zorder=3)
    ax.set_xticks(range(len(arms)), arms, rotation=20, fontsize=8)
    lo = min(min(val[a].values()) for a in arms)
    ax.set_ylim(lo - 0.1, None)
    n = max(len(val[a]) for a in arms)
    ax.set(ylabel="final validation loss (nats/char)", title=f"Hybrid bigram LM: mean ± std over {n} seeds (dots)")
    figures.append((savefig(fig, figdir, "e6_ablation.png"), "Hybrid-LM ablation. Data: "
                    + save_data(figdir, "e6_ablation.json", numbers["ablation"])))


def _effdim_section(ed, figdir: Path, claims, figures, tables, numbers) -> None:
    import matplotlib.pyplot as plt

    by = {r["kind"]: r for r in ed}
    rows, cis = [], {}
    for kind, r in by.items():
        F = torch.tensor(r["fishers"], dtype=torch.float64)
        cis[kind] = effdim_ci(F, EFFDIM_N[-1])
        rows.append([kind, str(r["params"]), f"{r['trace_per_param']:.4g}", f"{r['trace_per_param_reparam']:.4g}",
                     *(f"{r['normalized_effdim'][str(n)]:.3f}" for n in EFFDIM_N), stats.fmt(cis[kind])])
    numbers["effdim"] = {k: {kk: v for kk, v in r.items() if kk != "fishers"} for k, r in by.items()}
    numbers["effdim"]["ci_at_1e6"] = {k: ci.to_dict() for k, ci in cis.items()}
    tables.append(("Fisher information per parameter: tr F / P (and under θ = 10φ) vs the normalized effective "
                   "dimension d_{1,n}/P (CI: BCa bootstrap over θ samples)",
                   ["model", "P", "tr F / P", "tr F / P (θ = 10φ)", *(f"d/P, n = {n:.0e}" for n in EFFDIM_N),
                    "d/P at 1e6, CI"], rows))
    drift = max(abs(r["normalized_effdim"][k] - r["normalized_effdim_reparam"][k]) for r in by.values()
                for k in r["normalized_effdim"])
    tr_ratio = [r["trace_per_param_reparam"] / r["trace_per_param"] for r in by.values()]
    claims.append(Claim(
        "E6.8", "tr F / P is not reparameterization-invariant; the normalized effective dimension is",
        "consistent" if drift <= 1e-9 and all(abs(t - 100) < 1e-6 for t in tr_ratio) else "inconsistent",
        f"θ = 10φ multiplies tr F / P by {', '.join(f'{t:.6g}' for t in tr_ratio)}; max |Δ d/P| = {drift:.1e}",
        "'5–20× more Fisher information per parameter' from tr F / P depends on the parameterization",
        "Abbas et al. 2021; audit of the paper's exp4",
        "consistent if d/P moves by ≤ 1e-9 while tr F / P scales by a² = 100 (to 1e-6)"))
    if {"quantum", "classical"} <= set(by):
        q, c = cis["quantum"], cis["classical"]
        claims.append(Claim(
            "E6.9", "A quantum classifier has a higher normalized effective dimension than an equal-size MLP",
            "consistent" if q.lo > c.hi else "inconsistent" if q.hi < c.lo else "inconclusive",
            f"d/P at n = 1e6: quantum {stats.fmt(q)}, classical {stats.fmt(c)}",
            "quantum models have higher effective dimension", "Abbas et al. 2021",
            "consistent if the quantum CI lies above the classical CI; inconsistent if below; else inconclusive"))
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for i, (kind, r) in enumerate(by.items()):
        ax.semilogx(EFFDIM_N, [r["normalized_effdim"][str(n)] for n in EFFDIM_N], "o-", color=f"C{i}",
                    label=f"{kind} (P = {r['params']}, {len(r['fishers'])} θ samples)")
    ax.set(xlabel="number of data n", ylabel="normalized effective dimension d_{1,n}/P", ylim=(0, 1),
           title="Effective dimension of the pull-back Fisher")
    ax.legend(fontsize=8)
    figures.append((savefig(fig, figdir, "e6_effdim.png"), "Normalized effective dimension vs data count. Data: "
                    + save_data(figdir, "e6_effdim.json", numbers["effdim"])))


def analyze(results: list[tuple[Cell, dict]], figdir: Path) -> Section:
    claims: list[Claim] = []
    figures: list = []
    tables: list = []
    numbers: dict = {}

    def of(fn):
        return [(c, r) for c, r in results if c.fn.endswith(fn)]

    if of("run_bloch"):
        _bloch_section(of("run_bloch")[0][1], figdir, claims, figures, tables, numbers)
    if of("run_vqe_eval"):
        _vqe_section(of("run_vqe_eval"), of("run_vqe_tune"), figdir, claims, figures, tables, numbers)
    if len(of("run_gradvar")) >= 3:
        _gradvar_section([r for _, r in of("run_gradvar")], figdir, claims, figures, tables, numbers)
    if of("run_ablation_arm"):
        _ablation_section(of("run_ablation_arm"), figdir, claims, figures, tables, numbers)
    if of("run_born"):
        r = of("run_born")[0][1]
        numbers["born"] = r
        caption = ("Born LM head (GPT 19.6k, validation batch of 256 characters): QFI vs classical Fisher of the "
                   "next-token distribution on (W_re, W_im); 2.0 at init and after training in the quick run, which "
                   "suggests a structural identity of this parameterization rather than a quantum effect")
        tables.append((caption, ["state", "tr F^Q", "tr F^cl", "tr F^Q / tr F^cl", "identity residual"],
                       [[f"{k} ({0 if k == 'init' else r['steps']} steps)", f"{r[k]['trace_qfi']:.4g}",
                         f"{r[k]['trace_classical']:.4g}", f"{r[k]['qfi_over_classical']:.4g}",
                         f"{r[k]['identity_residual']:.1e}"] for k in ("init", "trained")]))
    if of("run_effdim"):
        _effdim_section([r for _, r in of("run_effdim")], figdir, claims, figures, tables, numbers)
    quick = any(c.params.get("max_steps") == PROFILES["quick"]["max_steps"] for c, _ in of("run_vqe_eval"))
    text = ("Quick profile (smoke test): 3–4 qubits, 3 seeds, a 2-point lr grid on 2 tuning seeds, 2 ablation "
            "seeds of 40 steps; verdicts at this size are indicative only." if quick else
            "Full profile: 3–6 qubits, 10 seeds, a 5-point lr grid on 2 tuning seeds, 10 ablation seeds.")
    return Section("E6", EXPERIMENT.title, claims, figures, tables, numbers, text)


EXPERIMENT = Experiment(id="E6", title="Quantum geometry", claim='Quantum metrics "bake in" curvature', plan=plan,
                        analyze=analyze, model_note="its cells are quantum circuits and char-level quantum heads, "
                                                    "not a pretrained language model")
