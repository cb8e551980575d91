"""E3 (scaling laws): the plan's structure and budget, and the analysis on synthetic cell results drawn from a
known law (no training)."""

import importlib
import json
import math

import numpy as np
import pytest

from infogeom.errors import InfogeomError
from infogeom.study.experiments import MODULES, e3
from infogeom.study.experiments.common import LADDER

LAW = {"E": 1.1, "A": 30.0, "B": 200.0, "alpha": 0.3, "beta": 0.3}
PARAMS = {"19.6k": 19_552, "66.8k": 66_768, "114k": 114_048, "356k": 356_256, "820k": 820_352, "2.71M": 2_709_696}
BC, L0, SLOPE = 24.0, 1.3, 400.0  # batch sweep: val(s) = L0 + SLOPE (1 + BC/B) / s, so B_crit = BC at every target


def _law(n, d, law=LAW):
    return law["E"] + law["A"] / n ** law["alpha"] + law["B"] / d ** law["beta"]


def tail_nu(n):
    return 1 + math.log10(n) / 10


def _synthetic(profile, bump=1.0, noise=0.003):
    cells = e3.plan(profile)
    rng = np.random.default_rng(0)
    bs = [c for c in cells if c.fn.endswith("run_batch")]
    worst = max(L0 + SLOPE * (1 + BC / c.params["batch"]) / e3.steps_for(c.params["tokens_m"], c.params["batch"])
                for c in bs)
    k = BC * (worst + e3.TARGET_OFFSETS[1]) ** 4  # B_simple = k L^-4 equals BC at the middle target
    out = []
    for c in cells:
        p = c.params
        if c.fn.endswith(("run_branch", "run_rep", "run_lr")):
            n, d = PARAMS[p["size"]], e3.steps_for(p["tokens_m"]) * e3.TOKENS_PER_STEP
            loss = _law(n, d) * math.exp(rng.normal(0, noise)) * (bump if n == max(PARAMS.values()) else 1.0)
            r = {"params": n, "params_nonembedding": n - 128 * LADDER[p["size"]][1], "tokens": d,
                 "loss": loss, "lr": p.get("lr", 6e-3), "steps": e3.steps_for(p["tokens_m"])}
            if c.fn.endswith("run_branch"):
                ls = loss * 1.05
                r["stable"] = {"loss": ls, "step": e3.branch_start(r["steps"]), "b_simple": k * ls ** -4,
                               "b_noise": 0.5 * k * ls ** -4, "lambda_max_H": 100.0, "lambda_max_eta": 0.6,
                               "precond_ratio": 0.9, "precond_sharpness": 50.0, "tr_F": 10.0,
                               "tr_F_per_param": 10.0 / n, "lr": 6e-3}
                if p.get("spectrum_k"):  # an exact power law λ_i = i^−ν, ν = 1 + log10(N) / 10 (oracle: Hill)
                    r["stable"]["fisher_top"] = list(np.arange(1, p["spectrum_k"] + 2) ** -tail_nu(n))
        elif c.fn.endswith("run_batch"):
            steps = e3.steps_for(p["tokens_m"], p["batch"])
            every = max(1, steps // p["evals"])
            curve = [(0.01 * s, s, L0 + SLOPE * (1 + BC / p["batch"]) / s) for s in range(every, steps + 1, every)]
            r = {"batch": p["batch"], "lr": 1e-2, "steps": steps, "curve": curve, "train_time": 1.0}
        else:
            r = {"lr": 6e-3, "seed": 1, "starts": [], "train_time": 1.0, "sec_per_step": 0.01}
        out.append((c, r))
    return out


def test_plan_structure_and_budget():
    exp = importlib.import_module(f"infogeom.study.experiments.{MODULES['E3']}").EXPERIMENT
    for profile, budget_s in (("quick", 300), ("full", 7200)):
        cells = exp.plan(profile)
        names = [c.name for c in cells]
        assert len(set(names)) == len(names)
        seen = set()
        for c in cells:
            assert set(c.needs) <= seen, c.name
            seen.add(c.name)
            json.dumps(c.params)
        assert sum(c.est_seconds for c in cells) <= budget_s
    full = exp.plan("full")
    assert len([c for c in full if c.fn.endswith("run_branch")]) == 31  # ragged: 820k ≤ 2M, 2.71M ≤ 1M
    assert max(e3.steps_for(c.params["tokens_m"]) * e3.TOKENS_PER_STEP for c in full
               if c.fn.endswith("run_branch")) / 4.55e6 < 1.8  # ≤ 1.8 epochs of the training split
    # every branch continues from a checkpoint its stem writes, inside the stable phase (after the warmup)
    for c in full:
        if c.fn.endswith("run_branch"):
            s = e3.steps_for(c.params["tokens_m"])
            assert e3.WARMUP <= e3.branch_start(s) < s


@pytest.mark.parametrize("profile", ["quick", "full"])
def test_every_training_cell_has_a_valid_config(profile, tmp_path):
    """Warmup, cooldown and step counts of every planned run pass the trainer's validation (no training)."""
    for c in e3.plan(profile):
        p = c.params
        if c.fn.endswith("run_batch"):
            cfg = e3.batch_config(p, 1e-2, 0, tmp_path)
            assert cfg.optim.warmup_steps <= cfg.max_steps // 4 + 1
        elif c.fn.endswith("run_stem"):
            e3._config(tmp_path, p["size"], 1e-2, e3.branch_start(e3.steps_for(max(p["budgets_m"]))), 0, 0.0)
        elif "tokens_m" in p:
            e3._config(tmp_path, p["size"], 1e-2, e3.steps_for(p["tokens_m"]), 0, e3.DECAY_FRACTION)


@pytest.fixture(name="few_boots")
def few_boots_fixture(monkeypatch):
    """100 bootstrap refits and a 3⁵-point start grid (the fitter with Hoffmann's grid: test_study_scaling.py)."""
    monkeypatch.setattr(e3, "N_BOOT", 100)
    monkeypatch.setattr(e3, "GRID", ((0.0, 5.0, 10.0), (0.0, 5.0, 10.0), (-0.5, 0.0, 0.5), (0.2, 0.5, 1.0),
                                     (0.2, 0.5, 1.0)))


def test_analyze_full_synthetic_law(tmp_path, few_boots):
    section = e3.analyze(_synthetic("full"), tmp_path)
    v = {c.id: c.verdict for c in section.claims}
    assert v == {"E3.1": "consistent", "E3.2": "consistent", "E3.3": "consistent", "E3.4": "consistent"}, \
        [(c.id, c.measured) for c in section.claims]
    fit = section.numbers["fit"]["params"]
    assert fit["alpha"] == pytest.approx(0.3, abs=0.05) and fit["beta"] == pytest.approx(0.3, abs=0.03)
    assert section.numbers["leave_largest_out"]["mean_abs_rel_error"] < 0.01
    for t in section.numbers["critical_batch"]["targets"]:
        assert t["b_crit"] == pytest.approx(BC, rel=0.05)
    assert section.numbers["b_simple_vs_loss"]["slope"]["value"] == pytest.approx(-4, abs=0.05)
    tails = section.numbers["fisher_tail"]["per_size"]
    assert len(tails) == 6
    k = e3.PROFILES["full"]["spectrum_k"]
    for n, t in tails.items():  # Hill on exact ranks: ν·(log(k+1) − log(k!)/k)
        assert t["nu"]["value"] == pytest.approx(tail_nu(float(n)) * (math.log(k + 1) - math.lgamma(k + 1) / k))
    assert "SMOKE" not in section.text
    assert all((tmp_path / f).stat().st_size > 0 for f, _ in section.figures)
    assert all((tmp_path / f.replace(".png", ".json")).exists() for f, _ in section.figures)


def test_analyze_flags_a_broken_law_and_the_smoke_test(tmp_path, few_boots):
    broken = {c.id: c for c in e3.analyze(_synthetic("full", bump=1.15), tmp_path).claims}
    assert broken["E3.1"].verdict == "inconsistent"
    quick = e3.analyze(_synthetic("quick"), tmp_path)
    assert {c.verdict for c in quick.claims} == {"inconclusive"} and "SMOKE TEST" in quick.text
    assert all("smoke test" in c.measured for c in quick.claims)


def test_batch_sweep_lr_is_the_grid_best_or_the_sqrt_rule():
    lr = {"e3/lr/356k/0.003": {"result": {"lr": 3e-3, "loss": 1.6}},
          "e3/lr/356k/0.006": {"result": {"lr": 6e-3, "loss": 1.5}}}
    assert e3.batch_lr(lr, 64) == (pytest.approx(6e-3 * 2), "sqrt")
    assert e3.batch_lr(lr, 16 * 400) == (0.03, "sqrt")  # capped
    grid = {f"e3/bslr/356k/B64/x{m:g}": {"result": {"lr": m * 0.012, "loss": loss}}
            for m, loss in ((0.5, 1.7), (1.0, 1.65), (2.0, math.inf))}
    assert e3.batch_lr({**lr, **grid}, 64) == (pytest.approx(0.012), "tuned")
    bad = {n: {"result": {**r["result"], "loss": math.inf}} for n, r in grid.items()}
    with pytest.raises(InfogeomError):
        e3.batch_lr({**lr, **bad}, 64)
