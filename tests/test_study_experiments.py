"""E1/E2/E5 of the study: closed forms, invariances, run functions on tiny inputs, plans and analyses."""

import importlib
import json
import math

import pytest
import torch

from infogeom.geometry import FisherOperator
from infogeom.models import toy
from infogeom.study.experiments import MODULES, e1, e2, e5
from infogeom.study.spec import Cell

BUDGET_QUICK = {"E1": 180, "E2": 90, "E4": 330, "E5": 60, "E6": 200}
BUDGET_FULL = {"E1": 27 * 60, "E2": 8 * 60, "E4": 12_000, "E5": 12 * 60, "E6": 4_000}


def _logreg(seed=0, n=300):
    return e1.toy_problem("logreg", seed, n)


def test_logistic_fisher_closed_form():
    model, (x, y) = _logreg()
    F = FisherOperator(model, (x, y)).to_dense()
    closed = toy.logistic_fisher(model[1].weight[0].detach(), x[:, 0])
    torch.testing.assert_close(F, closed, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(e1.binary_fisher(model, (x, y)), closed, rtol=1e-12, atol=1e-14)


def test_binary_fisher_of_reparameterized_mlp():
    model, batch = e1.toy_problem("mlp", 3, 80)
    phi = toy.Reparam(model, 10.0, torch.Generator().manual_seed(1)).apply(model)
    torch.testing.assert_close(e1.binary_fisher(phi, batch), FisherOperator(phi, batch).to_dense(), rtol=1e-10,
                               atol=1e-13)


@pytest.mark.parametrize("name", ["logreg", "mlp", "bigram"])
def test_reparam_keeps_function_and_pulls_back_fisher(name):
    model, batch = e1.toy_problem(name, 1, 100)
    rp = toy.Reparam(model, 100.0, torch.Generator().manual_seed(0))
    phi = rp.apply(model)
    torch.testing.assert_close(phi(batch[0]), model(batch[0]), rtol=1e-10, atol=1e-12)
    A = rp.dense()
    assert float(torch.linalg.cond(A)) == pytest.approx(100.0, rel=1e-8)
    theta = torch.nn.utils.parameters_to_vector(model.parameters())
    torch.testing.assert_close(A @ torch.nn.utils.parameters_to_vector(phi.parameters()), theta, rtol=1e-9,
                               atol=1e-10)
    F, Fp = FisherOperator(model, batch).to_dense(), FisherOperator(phi, batch).to_dense()
    torch.testing.assert_close(Fp, A.T @ F @ A, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("opt,invariant", [("ngd", True), ("kfac", True), ("gd", False), ("adam", False)])
def test_path_invariance_under_affine_reparameterization(opt, invariant):
    """Exact NGD and K-FAC (damping → 0, float64) follow the same predictive path in θ and φ; GD, Adam do not."""
    model, batch = _logreg(2)
    phi = toy.Reparam(model, 100.0, torch.Generator().manual_seed(3)).apply(model)
    lr = 0.05 if opt == "adam" else 0.5
    a = e1.optimize_path(opt, model, batch, 8, -math.inf, lr, damping=1e-14)
    b = e1.optimize_path(opt, phi, batch, 8, -math.inf, lr, damping=1e-14)
    kl = float(e1.mean_kl(a["probs"], b["probs"]).abs().max())
    if invariant:
        assert kl < 1e-12
        torch.testing.assert_close(a["probs"], b["probs"], rtol=0, atol=1e-8)
    else:
        assert kl > 1e-4


def test_angle_and_kl_helpers():
    assert e1.angle_deg(torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0])) == pytest.approx(45.0)
    p = torch.tensor([[[0.5, 0.5]]])
    q = torch.tensor([[[0.25, 0.75]]])
    assert float(e1.mean_kl(p, q)[0]) == pytest.approx(0.5 * math.log(2) + 0.5 * math.log(2 / 3))


def test_worked_example_cells_on_tiny_problem():
    params = {"model": "logreg", "n": 200, "ref_steps": 10, "max_steps": 30}
    ref = e1.run_reference(params, 5, None, {})
    assert ref["Lstar"] < ref["L0"] and ref["Lstar"] < ref["target"] < ref["L0"]
    out = {}
    for opt in ("gd", "ngd"):
        out[opt] = e1.run_worked_example({**params, "optimizer": opt}, 5, None, {"ref": {"result": ref}})
        json.dumps(out[opt])
    ngd = out["ngd"]
    assert {k: v["steps_to_target"] for k, v in ngd["kappa"].items()} == {k: ngd["theta"]["steps_to_target"]
                                                                          for k in ngd["kappa"]}
    assert max(v["kl_max"] for v in ngd["kappa"].values()) < 1e-10
    assert 0 <= ngd["angle_gd_ng"]["init"] < 90 and ngd["angle_to_ng"] < 1e-3
    gd = out["gd"]["kappa"]
    assert gd["1000"]["steps_to_target"] is None or gd["1000"]["steps_to_target"] > gd["1"]["steps_to_target"]


def _fake_e1_results():
    rows = []
    for model in ("logreg", "bigram"):
        for r in range(4):
            for opt in e1.TOY_OPTIMIZERS:
                kappa = {}
                for i, k in enumerate(("1", "10", "100", "1000")):
                    invariant = opt in ("ngd", "kfac")
                    steps = 3 if invariant else (10 + r) * 10**i if opt == "gd" else 6 + i
                    kappa[k] = {"steps_to_target": None if steps > 200 else steps, "kl_max": 1e-20 if invariant
                                else 0.1, "diverged": False}
                res = {"kappa": kappa, "angle_to_ng": 10.0}
                if opt == "ngd":
                    res["angle_gd_ng"] = {"init": 70.0 + r, "final": 25.0 - r}
                rows.append((Cell("E1", f"e1a/{model}/{opt}/r{r}", e1.FN + "run_worked_example",
                                  {"model": model, "optimizer": opt, "max_steps": 200}, replicate=r), res))
    return rows


def test_e1_analyze_synthetic(tmp_path):
    section = e1.analyze(_fake_e1_results(), tmp_path)
    verdicts = {c.id: c.verdict for c in section.claims}
    assert verdicts["E1.1"] == "consistent" and verdicts["E1.2"] == "consistent"
    assert verdicts["E1.3"] == "consistent" and verdicts["E1.4"] == "consistent"
    assert "Holm" in next(c for c in section.claims if c.id == "E1.3").measured
    assert all((tmp_path / f).stat().st_size > 0 for f, _ in section.figures)
    # a GD that does not slow down flips the verdict
    flat = [(c, {**r, "kappa": {k: {**v, "steps_to_target": 50} for k, v in r["kappa"].items()}})
            if c.params["optimizer"] == "gd" else (c, r) for c, r in _fake_e1_results()]
    assert {c.id: c.verdict for c in e1.analyze(flat, tmp_path).claims}["E1.3"] != "consistent"


def test_sharpness_of_gd_is_lambda_max_over_two_over_eta():
    model = e2._gpt("19.6k", 0)
    batch = e2.fixed_batch(2, 16, 0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    info, v = e2.sharpness_of(model, batch, opt, None, tol=1e-4)
    assert info["threshold"] == pytest.approx(20.0) and info["ratio"] == pytest.approx(info["sharpness"] / 20.0)
    from infogeom.geometry import HessianOperator
    H = HessianOperator(model, batch)
    rayleigh = float(v @ H.matvec(v) / (v @ v))
    assert rayleigh == pytest.approx(info["sharpness"], rel=1e-3)
    again, _ = e2.sharpness_of(model, batch, opt, v, tol=1e-4)  # warm start from the converged vector
    assert again["matvecs"] < info["matvecs"] and again["sharpness"] == pytest.approx(info["sharpness"], rel=1e-3)


def test_eos_cell_tiny():
    params = {"size": "19.6k", "batch": 2, "block": 16}
    pilot = e2.run_pilot(params, 0, None, {})
    out = e2.run_eos({**params, "arm": "gd", "c": 1.5, "steps": 4, "every": 2}, 0, None,
                     {"p": {"result": pilot}})
    assert out["lr"] == pytest.approx(2 / (1.5 * pilot["lambda_max"]))
    assert [r["step"] for r in out["records"]] == [2, 4] and math.isfinite(out["median_ratio_second_half"])
    json.dumps(out)


def _fake_eos(ratio):
    rows = []
    for arm, extra in [("gd", "c=1.5"), ("gdm", "c=1.5"), ("adam", "lr=0.001")]:
        for r in range(3):
            rows.append((Cell("E2", f"e2/eos/{arm}/{extra}/r{r}", e2.FN + "run_eos", {}, replicate=r),
                         {"records": [{"step": s, "ratio": ratio + 0.01 * r} for s in (10, 20)],
                          "diverged": False, "median_ratio_second_half": ratio + 0.01 * r}))
    return rows


def test_e2_analyze_verdict_rule(tmp_path):
    good = {c.id: c.verdict for c in e2.analyze(_fake_eos(1.0), tmp_path).claims}
    bad = {c.id: c.verdict for c in e2.analyze(_fake_eos(0.3), tmp_path).claims}
    assert good == {"E2.1": "consistent", "E2.2": "consistent", "E2.3": "consistent"}
    assert bad == {"E2.1": "inconsistent", "E2.2": "inconsistent", "E2.3": "inconsistent"}


def test_mlp_lm_is_causal_and_size_matched():
    m = toy.MLPLM.matching(84, 19552)
    assert abs(sum(p.numel() for p in m.parameters()) - 19552) / 19552 < 0.02
    x = torch.randint(0, 84, (2, 12))
    y = x.clone()
    y[:, 7:] = (y[:, 7:] + 1) % 84
    torch.testing.assert_close(m(x)[:, :7], m(y)[:, :7])
    assert not torch.allclose(m(x)[:, 7], m(y)[:, 7])


def test_density_summary():
    nodes = torch.tensor([[-1.0, 0.0, 0.5, 20.0]])
    weights = torch.tensor([[0.1, 0.5, 0.35, 0.05]])
    s = e5.density_summary(nodes, weights)
    assert s["negative_mass"] == pytest.approx(0.1) and s["lambda_max"] == 20.0
    assert s["q90"] == 0.5 and s["outlier_ratio"] == pytest.approx(40.0)


@pytest.mark.parametrize("eid", list(BUDGET_QUICK))
def test_plans_are_consistent_and_within_budget(eid):
    exp = importlib.import_module(f"infogeom.study.experiments.{MODULES[eid]}").EXPERIMENT
    for profile, budget in (("quick", BUDGET_QUICK), ("full", BUDGET_FULL)):
        cells = exp.plan(profile)
        names = [c.name for c in cells]
        assert len(set(names)) == len(names)
        seen = set()
        for c in cells:
            assert set(c.needs) <= seen, f"{c.name} needs a later or unknown cell"
            seen.add(c.name)
            mod, fn = c.fn.split(":")
            assert callable(getattr(importlib.import_module(mod), fn))
            json.dumps(c.params)
        assert sum(c.est_seconds for c in cells) <= budget[eid]


def test_time_to_target_interpolates():
    from infogeom.study.experiments.common import time_to_target

    curve = [(0.0, 0, 4.0), (2.0, 10, 3.0), (4.0, 20, 2.0)]
    assert time_to_target(curve, 2.5) == (15.0, 3.0)
    assert time_to_target(curve, 5.0) == (0.0, 0.0) and time_to_target(curve, 1.0) is None


def test_phase_cells_train_resume_and_measure(tmp_path):
    """The phase training cell checkpoints at its fractions and resumes; a measurement cell reads a checkpoint."""
    train_dir = tmp_path / "train"
    res = e2.run_phase_train({"size": "19.6k", "steps": 10}, 0, train_dir, {})
    assert {f"ckpt_{s:08d}.pt" for s in e2.phase_steps(10)} <= set(res["checkpoints"])
    again = e2.run_phase_train({"size": "19.6k", "steps": 10}, 0, train_dir, {})  # done: resumes, no steps
    assert again["final_val_loss"] == res["final_val_loss"]
    params = {"size": "19.6k", "batch": 2, "block": 16, "step": 3, "fraction": 0.3, "damping": 1e-3, "k_top": 2,
              "probes": 2, "slq_steps": 6}
    out = e2.run_phase_measure(params, 0, tmp_path / "m", {"t": {"result": res, "dir": str(train_dir)}})
    assert out["lambda_max_H"] >= 0 and 0 <= out["grad_overlap_topk"] <= 1 + 1e-6
    assert 0 < out["d_eff"] <= out["params"] and out["tr_F"] > 0 and out["cond_damped"] >= 1
    json.dumps(out)


def test_e5_cells_tiny(tmp_path):
    res = e5.run_train({"size": "19.6k", "steps": 3}, 0, tmp_path / "t", {})
    out = e5.run_spectra({"size": "19.6k", "probes": 1, "slq_steps": 6, "batch": 2, "block": 16}, 0,
                         tmp_path / "s", {"t": {"result": res, "dir": str(tmp_path / "t")}})
    assert set(out["densities"]) == set(e5.OPERATORS)
    assert out["densities"]["F"]["negative_mass"] < 1e-6 <= out["blocks_head"]["heterogeneity"] + 1e-6
    for arch in ("gpt", "mlp"):
        c = e5.run_control({"arch": arch, "optimizer": "adamw", "size": "19.6k", "steps": 3, "batch": 4,
                            "block": 16}, 0, tmp_path / arch, {})
        assert math.isfinite(c["val_loss"]) and c["heterogeneity"] >= 0
    json.dumps(out)
