"""E4 (sharpness vs generalization) and E6 (quantum geometry): closed-form oracles for their instruments, the
Dinh rescaling, the new statistics, plans, and the analyses on synthetic cell results. (SAM's first-order closed
form on a quadratic is tested in tests/test_curvature_sharpness.py.)"""

import math

import numpy as np
import pytest
import torch

from infogeom.curvature import effective_dimension, eigsh
from infogeom.errors import InfogeomError
from infogeom.geometry import HessianOperator
from infogeom.models import GPT, GPTConfig
from infogeom.study import stats
from infogeom.study.ablation import AblationConfig, ClassicalBigram, build_model
from infogeom.study.experiments import e4, e6
from infogeom.study.spec import Cell

# --- effective dimension ---------------------------------------------------------------------------------------


def _kappa(n, gamma=1.0):
    return gamma * n / (2 * math.pi * math.log(n))


@pytest.mark.parametrize("c", [1e-3, 1.0, 50.0])
def test_effective_dimension_of_isotropic_fisher(c):
    P, n = 6, 1e5
    F = c * torch.eye(P, dtype=torch.float64).expand(4, P, P)
    k = _kappa(n)
    assert float(effective_dimension(F, n)) == pytest.approx(P * math.log1p(k) / math.log(k), rel=1e-12)


def test_effective_dimension_of_rank_r_fisher_and_scale_invariance():
    P, r, ns = 8, 3, [1e3, 1e6]
    U = torch.linalg.qr(torch.randn(P, P, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))[0]
    F = (U[:, :r] @ U[:, :r].T).expand(5, P, P)  # F̂ = (P/r) Π_r
    expected = [r * math.log1p(_kappa(n) * P / r) / math.log(_kappa(n)) for n in ns]
    assert effective_dimension(F, ns).tolist() == pytest.approx(expected, rel=1e-10)
    assert torch.allclose(effective_dimension(123.0 * F, ns), effective_dimension(F, ns), rtol=1e-12)


def test_effective_dimension_matches_brute_force_monte_carlo():
    g = np.random.default_rng(1)
    S, P, n = 7, 5, 2e4
    A = g.normal(size=(S, P, 2))
    F = A @ A.transpose(0, 2, 1) * g.uniform(0.1, 3, (S, 1, 1))  # varying rank-2 PSD matrices
    k = _kappa(n)
    Fh = P * F / np.trace(F, axis1=1, axis2=2).mean()
    sqrt_det = [np.sqrt(np.linalg.det(np.eye(P) + k * f)) for f in Fh]
    expected = 2 * math.log(np.mean(sqrt_det)) / math.log(k)
    assert float(effective_dimension(torch.tensor(F), n)) == pytest.approx(expected, rel=1e-10)


def test_effective_dimension_bad_input():
    with pytest.raises(InfogeomError):
        effective_dimension(torch.eye(3), 100)
    with pytest.raises(InfogeomError):
        effective_dimension(torch.eye(3)[None], 2)  # κ_n < 1


# --- E6 instruments --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("theta,phi", [(0.3, 0.0), (1.2, 2.0), (2.9, 5.0)])
def test_bloch_qfi_classical_fisher_and_phase_term_closed_forms(theta, phi):
    lib, ref = e6.bloch_tensors(theta, phi), e6.bloch_closed_form(theta)
    for k in ref:
        assert torch.allclose(lib[k], ref[k], atol=1e-12), k
    assert float(torch.linalg.eigvalsh(lib["qfi"] - lib["classical"]).min()) >= -1e-12


def test_bloch_classical_fisher_ng_is_blind_to_the_phase_and_qng_is_not():
    qng = e6.bloch_path("qng", (0.5, 0.5), 0.1, 40)
    fcl = e6.bloch_path("fcl-ng", (0.5, 0.5), 0.1, 40)
    assert qng["steps_to_target"] is not None and qng["steps_to_target"] < 30
    assert all(p[1] == 0.5 for p in fcl["path"])  # φ never moves: F^cl has no φ component
    assert fcl["losses"][-1] == pytest.approx(-math.sin(0.5), abs=1e-3)  # min over θ of sin θ sin 0.5


def _dense_tfim(n, h):
    Z, X, I2 = np.diag([1.0, -1.0]), np.array([[0.0, 1.0], [1.0, 0.0]]), np.eye(2)

    def op(single, i):
        out = np.ones((1, 1))
        for q in range(n):
            out = np.kron(out, single if q == i else I2)
        return out

    H = sum(op(Z, i) @ op(Z, i + 1) for i in range(n - 1)) + h * sum(op(X, i) for i in range(n))
    return np.linalg.eigvalsh(H)[0]


@pytest.mark.parametrize("n", [2, 3, 4])
def test_tfim_ground_energy_against_numpy_kron(n):
    assert e6.tfim_ground_energy(n) == pytest.approx(_dense_tfim(n, e6.FIELD), abs=1e-10)
    if n == 2:  # closed form: E_0 = −√(1 + 4h²)
        assert e6.tfim_ground_energy(2) == pytest.approx(-math.sqrt(1 + 4 * e6.FIELD**2), abs=1e-12)


def test_circuit_evaluation_counts():
    c = e6.vqe_circuit(3)  # 2 layers of RY, RZ on 3 qubits: P = 12, 4 parametrized layers
    assert c.n_params == 12 and len(c.layers()) == 4
    assert e6.evaluations_per_step("gd", c) == e6.evaluations_per_step("adam", c) == 1 + 24
    assert e6.evaluations_per_step("qng-full", c) == 1 + 24 + 2 * 144
    assert e6.evaluations_per_step("qng-block", c) == e6.evaluations_per_step("qng-diag", c) == 1 + 24 + 4


def test_vqe_run_reaches_the_target_and_counts_evaluations():
    r = e6.vqe_run(3, "qng-full", 0.1, 0, 60)
    assert r["reached"] and r["final_energy"] <= r["e0"] + e6.TOL_REL * abs(r["e0"])
    assert r["evaluations"] == r["steps"] * e6.evaluations_per_step("qng-full", e6.vqe_circuit(3)) + 1


def test_decay_slope_recovers_a_known_exponential():
    g = np.random.default_rng(0)
    ns = [2, 3, 4, 5, 6]
    samples = [g.normal(0, 2.0 ** (-n / 2), 400) for n in ns]  # Var = 2^(−n)
    ci = e6.decay_slope(ns, samples, n_resamples=300)
    assert ci.lo < -math.log10(2) < ci.hi and ci.hi < 0


def test_classical_arm_matches_the_quantum_parameter_count():
    cfg = AblationConfig(task="bigram")
    q = sum(p.numel() for p in build_model(cfg, 84, 0).parameters())
    c = build_model(cfg, 84, 0, arm="classical")
    assert isinstance(c, ClassicalBigram)
    assert abs(sum(p.numel() for p in c.parameters()) - q) <= (cfg.n_embd + 1 + 84) / 2
    with pytest.raises(InfogeomError):
        build_model(AblationConfig(task="gpt"), 84, 0, arm="classical")


# --- E4 instruments --------------------------------------------------------------------------------------------


def _tiny_gpt():
    """A small GPT with large attention weights (non-uniform attention, as after training)."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=8)).double().eval()
    with torch.no_grad():
        for block in model.blocks:
            block.attn.c_attn.weight.mul_(30)
    return model


@pytest.mark.parametrize("kind", ["qk", "vo"])
def test_attention_rescaling_preserves_the_function_and_moves_lambda_max(kind):
    x = torch.randint(0, 11, (3, 8), generator=torch.Generator().manual_seed(1))
    batch = (x, torch.roll(x, -1, 1))

    def measured(alpha):
        model = e4.rescale_attention(_tiny_gpt(), alpha, kind)
        lam = float(eigsh(HessianOperator(model, batch), k=1, tol=1e-8).values[0])
        return model(x), lam, e4.fisher_rao_norm(model, batch)

    ref, lam0, fr0 = measured(1.0)
    out, lam, fr = measured(7.0)
    assert torch.allclose(out, ref, rtol=0, atol=1e-12)
    assert fr == pytest.approx(fr0, rel=1e-9)  # θᵀFθ is exactly invariant under θ' = Sθ
    out, lam, fr = measured(100.0)
    assert torch.allclose(out, ref, rtol=0, atol=1e-10)
    assert fr == pytest.approx(fr0, rel=1e-7)
    assert lam > 2 * lam0  # raw sharpness is reparameterizable: λ_max grows without bound in α


def test_fisher_rao_norm_matches_a_dense_float64_fisher():
    """θᵀFθ against F = (1/N) Σ_n J_nᵀ(diag p_n − p_n p_nᵀ)J_n built from the dense logit Jacobian (jacrev)."""
    from torch.func import functional_call, jacrev

    model = _tiny_gpt()
    x = torch.randint(0, 11, (2, 8), generator=torch.Generator().manual_seed(2))
    params = {n: p.detach() for n, p in model.named_parameters()}
    theta = torch.cat([p.reshape(-1) for p in params.values()])
    shapes = [p.shape for p in params.values()]

    def logits(flat):
        parts = dict(zip(params, [t.reshape(s) for t, s in zip(flat.split([s.numel() for s in shapes]), shapes)]))
        return functional_call(model, parts, (x,)).reshape(-1, 11)

    J = jacrev(logits)(theta)  # [N, V, P]
    p = torch.softmax(logits(theta), -1)
    M = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    F = torch.einsum("nvp,nvw,nwq->pq", J, M, J) / J.shape[0]
    assert e4.fisher_rao_norm(model, (x, torch.roll(x, -1, 1))) == pytest.approx(float(theta @ F @ theta), rel=1e-10)


def test_rescaling_bad_kind():
    with pytest.raises(ValueError):
        e4.rescale_attention(_tiny_gpt(), 2.0, "qv")


# --- statistics ------------------------------------------------------------------------------------------------


def _grid():
    return [{"lr": i, "batch": b, "wd": w} for i in range(3) for b in (8, 32) for w in (0.0, 0.1)]


def _psi_pairs(configs, m, t, axes, items):
    """Ψ of a resampled list ``items`` (original indices) by explicit loops, pairs of copies left out."""
    per_axis = []
    for ax in axes:
        groups = {}
        for i in items:
            groups.setdefault(tuple(configs[i][k] for k in axes if k != ax), []).append(i)
        taus = []
        for g in groups.values():
            pairs = [(i, j) for a, i in enumerate(g) for b, j in enumerate(g) if a != b and i != j]
            if pairs:
                taus.append(np.mean([np.sign(m[i] - m[j]) * np.sign(t[i] - t[j]) for i, j in pairs]))
        if taus:
            per_axis.append(np.mean(taus))
    return np.mean(per_axis)


def test_granulated_kendall_counts_against_explicit_pairs_and_subsets():
    configs, axes = _grid(), ["lr", "batch", "wd"]
    g = np.random.default_rng(5)
    m, t = g.normal(size=len(configs)), g.normal(size=len(configs))
    idx = stats.resample_indices(len(configs), 20, seed=2)
    counts = np.stack([np.bincount(i, minlength=len(configs)) for i in idx])
    fast = stats.granulated_kendall_counts(configs, m, t, axes, counts)
    assert fast == pytest.approx([_psi_pairs(configs, m, t, axes, i) for i in idx], abs=1e-12)
    keep = np.arange(len(configs)) % 3 != 0  # a 0/1 count vector is the plain Ψ of the subset
    sub = [c for c, k in zip(configs, keep) if k]
    assert stats.granulated_kendall_counts(configs, m, t, axes, keep[None].astype(float))[0] == pytest.approx(
        stats.granulated_kendall(sub, m[keep], t[keep], axes)["psi"], abs=1e-12)


def test_granulated_kendall_ci_perfect_and_null():
    configs = _grid()
    target = [c["lr"] + 0.1 * (c["batch"] == 32) + 0.01 * c["wd"] for c in configs]
    perfect = stats.granulated_kendall_ci(configs, target, target, ["lr", "batch", "wd"], n_resamples=200)
    assert perfect.value == pytest.approx(
        stats.granulated_kendall(configs, target, target, ["lr", "batch", "wd"])["psi"])
    assert perfect.value == 1.0 and perfect.method == "degenerate"  # every resample ranks perfectly too
    g = np.random.default_rng(3)
    null = stats.granulated_kendall_ci(configs, g.normal(size=len(configs)), target, ["lr", "batch", "wd"],
                                       n_resamples=200)
    assert null.method == "bca" and null.lo < null.value < null.hi and null.lo < 0.5


# --- plans and analyses ----------------------------------------------------------------------------------------


def _fake_e4(gap_follows_lambda: bool):
    out = []
    g = np.random.default_rng(0)
    for c in e4.grid("quick"):
        lam = 10.0 / e4.LRS[c["optimizer"]][c["lr_idx"]] * (1 + c["batch"] / 128)
        gap = 0.1 + 0.001 * lam if gap_follows_lambda else float(g.uniform(0, 1))
        meas = {m: float(g.uniform(1, 2)) for m in e4.MEASURES}
        meas["lambda_max"] = lam
        cell = Cell("E4", f"e4/train/{e4.config_name(c)}/r0", e4.FN + "run_config", {**c, "size": "19.6k"})
        out.append((cell, {"reached": True, "gap": gap, "val_loss": 1.8 + gap, "measures": meas}))
    rows = [{"kind": k, "alpha": a, "logit_rel_err": 1e-16, "lambda_max": 5 * a * a, "fisher_rao": 100.0,
             "sam": 0.1 * a, "asam_eta0": 0.2} for k in ("qk", "vo") for a in (1.0, 3.0, 10.0)]
    out.append((Cell("E4", "e4/dinh", e4.FN + "run_dinh", {}), {"rows": rows}))
    return out


def test_e4_analyze_synthetic(tmp_path):
    sec = e4.analyze(_fake_e4(True), tmp_path)
    v = {c.id: c.verdict for c in sec.claims}
    assert v["E4.1"] == "consistent" and v["E4.4"] == "consistent" and v["E4.5"] == "consistent"
    assert all((tmp_path / f).stat().st_size > 0 for f, _ in sec.figures)
    assert (tmp_path / "e4_tau_psi.json").exists() and (tmp_path / "e4_dinh.json").exists()
    assert sec.numbers["configs"] == len(e4.grid("quick"))
    assert e4.analyze(_fake_e4(False), tmp_path).claims[0].verdict != "consistent"


def _fake_e6():
    out = [(Cell("E6", "e6/bloch", e6.FN + "run_bloch", {}), e6.run_bloch({"starts": 2, "steps": 40, "lr": 0.1},
                                                                           0, None, {}))]
    g = np.random.default_rng(0)
    for n in (3, 4):
        c = e6.vqe_circuit(n)
        for o, base in (("gd", 30), ("adam", 40), ("qng-full", 10), ("qng-block", 12), ("qng-diag", 14)):
            runs = [{"steps": int(base + g.integers(0, 3)), "reached": True, "params": c.n_params} for _ in range(5)]
            for r in runs:
                r["evaluations"] = r["steps"] * e6.evaluations_per_step(o, c) + 1
            p = {"n": n, "optimizer": o, "max_steps": 200}
            out.append((Cell("E6", f"e6/vqe/eval/n{n}/{o}", e6.FN + "run_vqe_eval", p),
                        {"lr": 0.1, "runs": runs, "evaluations_per_step": e6.evaluations_per_step(o, c)}))
            out.append((Cell("E6", f"e6/vqe/tune/n{n}/{o}", e6.FN + "run_vqe_tune", p), {"grid": {"0.1": [base]}}))
    for n in (2, 3, 4, 5):
        gr = g.normal(0, 2.0 ** (-n / 2), 200)
        out.append((Cell("E6", f"e6/gradvar/n{n}", e6.FN + "run_gradvar", {"n": n}),
                    {"n": n, "grad_first": gr.tolist(), "var_first": float(gr.var()), "var_mean": float(gr.var())}))
    for r in range(3):
        for arm, loss in (("adam", 3.0), ("qng-fs", 2.9), ("qng-pullback", 2.95), ("classical", 3.1),
                          ("classical-wallclock", 3.05)):
            out.append((Cell("E6", f"e6/ablation/{arm}/r{r}", e6.FN + "run_ablation_arm", {"arm": arm}, replicate=r),
                        {"final_val_loss": loss + 0.01 * r + 0.001 * g.normal(), "params": 100, "steps": 40,
                         "train_time": 1.0}))
    geo = {"trace_qfi": 2.0, "trace_classical": 1.0, "qfi_over_classical": 2.0, "identity_residual": 1e-8}
    out.append((Cell("E6", "e6/born", e6.FN + "run_born", {}), {"steps": 5, "init": geo, "trained": geo}))
    for kind in ("quantum", "classical"):
        out.append((Cell("E6", f"e6/effdim/{kind}", e6.FN + "run_effdim", {"kind": kind}),
                    e6.run_effdim({"kind": kind, "samples": 6, "inputs": 8}, 0, None, {})))
    return out


def test_e6_analyze_synthetic(tmp_path):
    sec = e6.analyze(_fake_e6(), tmp_path)
    v = {c.id: c.verdict for c in sec.claims}
    assert v["E6.1"] == "consistent" and v["E6.2"] == "consistent"
    assert v["E6.3"] == "consistent"  # 30 vs 10 steps
    assert v["E6.4"] == "consistent"  # block-diagonal QNG: 12 steps × 29 evaluations < GD's 30 × 25
    assert v["E6.5"] == "consistent" and v["E6.6"] == "consistent" and v["E6.7"] == "consistent"
    assert v["E6.8"] == "consistent" and "E6.9" in v
    assert all((tmp_path / f).stat().st_size > 0 for f, _ in sec.figures)
    assert any(t[0].startswith("Born") for t in sec.tables)
    table = next(t for t in sec.tables if t[0].startswith("VQE"))
    assert len(table[2]) == 10 and table[1][-1] == "circuit evaluations"
