"""The optimizer benchmark protocol (benchmarks/optimizers.py): resumable runs, steps × quiet cost report."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import optimizers as bench  # noqa: E402
import optimizers_lockstep as lockstep  # noqa: E402


def _run(label: str, lr: float, seed: int, slope: float, steps: int = 100) -> dict:
    """A run whose loss falls linearly: L(s) = 3 − slope·s, evaluated every 10 steps."""
    curve = [(0.0, s, 3.0 - slope * s) for s in range(10, steps + 1, 10)]
    return {"optimizer": label, "size": "default", "lr": lr, "seed": seed, "steps": steps, "eval_batches": 8,
            "train_time_loaded": 0.0, "curve": curve, "error": None}


def _write_runs(path: Path) -> None:
    runs = [_run("adamw", 1e-3, 0, 0.010), _run("adamw", 1e-3, 1, 0.008),  # best loss 2.0 / 2.2 → target 2.2
            _run("adamw", 2e-3, 0, 0.002), _run("adamw", 2e-3, 1, 0.002),
            _run("muon", 1e-2, 0, 0.020), _run("muon", 1e-2, 1, 0.016),
            _run("muon", 2e-2, 0, 0.001), _run("muon", 2e-2, 1, 0.001)]
    for r in runs:
        bench.save_run(path, bench.run_key(r["optimizer"], "default", r["lr"], r["seed"]), r)


def test_report_combines_steps_with_quiet_costs(tmp_path, capsys):
    out = tmp_path / "runs.json"
    _write_runs(out)
    costs = tmp_path / "costs.json"
    costs.write_text(json.dumps({"sizes": {"default": {"adamw": {"sec_per_step": 0.2, "opt_ms_per_step": 3.0},
                                                       "muon": {"sec_per_step": 0.25, "opt_ms_per_step": 20.0}}}}))
    assert bench.main(["report", "--out", str(out), "--costs", str(costs)]) == 0
    report = json.loads((tmp_path / "runs_default_report.json").read_text())
    assert report["target"] == pytest.approx(2.2)  # worst seed of the tuned AdamW (lr 1e-3)
    rows = {r["optimizer"]: r for r in report["rows"]}
    assert rows["adamw"]["lr"] == 1e-3 and rows["muon"]["lr"] == 1e-2
    # steps to 2.2 = 0.8 / slope: AdamW 80, 100; Muon 40, 50 → time ratio (80·0.2)/(40·0.25) = 1.6 on both seeds
    assert rows["adamw"]["steps_to_target"] == pytest.approx([80, 100])
    assert rows["muon"]["steps_to_target"] == pytest.approx([40, 50])
    ratio = rows["adamw"]["time_to_target_vs_ref"]
    assert ratio["value"] == pytest.approx(1.6) and ratio["n"] == 2
    # budget = the shortest best run, 100 steps · 0.2 s = 20 s → Muon at step 80: 3 − 0.020·80, 3 − 0.016·80
    assert report["budget"] == pytest.approx(20.0)
    assert rows["muon"]["loss_at_budget"]["value"] == pytest.approx((1.4 + 1.72) / 2)
    assert (tmp_path / "runs_default_report.png").exists()
    assert "T/T_muon" in capsys.readouterr().out
    assert bench.main(["report", "--out", str(out), "--costs", str(costs), "--reference", "adamw"]) == 0
    rows = {r["optimizer"]: r for r in json.loads((tmp_path / "runs_default_report.json").read_text())["rows"]}
    assert rows["muon"]["time_to_target_vs_ref"]["value"] == pytest.approx(1 / 1.6)
    assert bench.main(["report", "--out", str(out), "--reference", "soap", "--target", "2.5"]) == 2
    assert "no runs of reference 'soap'" in capsys.readouterr().err
    assert bench.main(["report", "--out", str(out), "--only", "adamw", "--target", "2.5"]) == 0
    rows = json.loads((tmp_path / "runs_default_report.json").read_text())["rows"]
    assert [r["optimizer"] for r in rows] == ["adamw"]


def test_report_without_costs_counts_steps_and_missing_costs_fail(tmp_path, capsys):
    out = tmp_path / "runs.json"
    _write_runs(out)
    assert bench.main(["report", "--out", str(out), "--target", "2.5"]) == 0
    rows = {r["optimizer"]: r for r in json.loads((tmp_path / "runs_default_report.json").read_text())["rows"]}
    assert rows["muon"]["steps_to_target"] == pytest.approx([25, 31.25])
    costs = tmp_path / "costs.json"
    costs.write_text(json.dumps({"sizes": {"default": {"adamw": {"sec_per_step": 0.2}}}}))
    assert bench.main(["report", "--out", str(out), "--costs", str(costs)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"infogeom: error: {costs} has no cost for muon (size default)"]


def test_run_skips_finished_runs_and_saves_each(tmp_path, monkeypatch):
    calls = []

    def fake(label, lr, size, seed, args):
        calls.append((label, lr, seed))
        return _run(label, lr, seed, 0.01, args.steps)

    monkeypatch.setattr(bench, "run_one", fake)
    out = tmp_path / "runs.json"
    argv = ["run", "--only", "adamw", "--lrs", "1e-3,2e-3", "--seeds", "0,1", "--steps", "50", "--out", str(out)]
    assert bench.main(argv) == 0
    assert len(calls) == 4 and len(bench.load_runs(out)) == 4
    assert bench.main(argv) == 0
    assert len(calls) == 4  # all done
    assert bench.main(argv[:-4] + ["--steps", "60", "--out", str(out)]) == 0
    assert len(calls) == 8  # longer budget: rerun
    assert bench.main(["run", "--only", "nope", "--out", str(out)]) == 2


def test_interrupted_run_is_not_saved(tmp_path, monkeypatch):
    """A run the trainer stopped early (SIGTERM: fewer steps than asked, no error) is not recorded as a seed, and
    the command stops with 130; the next call reruns it."""
    monkeypatch.setattr(bench, "run_one", lambda label, lr, size, seed, args: _run(label, lr, seed, 0.01, 5))
    out = tmp_path / "runs.json"
    argv = ["run", "--only", "adamw", "--lrs", "1e-3", "--seeds", "0,1", "--steps", "50", "--out", str(out)]
    assert bench.main(argv) == 130
    assert bench.load_runs(out) == {}


def test_loss_interpolation_and_config():
    curve = [(0.0, 10, 3.0), (0.0, 20, 2.0)]
    assert bench.loss_at(curve, 15) == pytest.approx(2.5)
    assert math.isnan(bench.loss_at(curve, 25))
    assert bench.steps_to(curve, 2.5) == pytest.approx(15) and bench.steps_to(curve, 1.0) == math.inf
    cfg = bench.make_config("ekfac-1s", 1e-2, "3m", 3, "x")
    assert (cfg.optim.name, cfg.optim.options, cfg.seed) == ("ekfac", {"max_basis_dim": 256}, 3)
    assert (cfg.model.n_layer, cfg.model.n_embd, cfg.optim.min_lr) == (6, 192, 1e-2)


def test_lockstep_costs_merge(tmp_path):
    path = tmp_path / "costs.json"

    class Args:
        steps, warmup = 60, 5

    rows = [{"label": "adamw", "config": "adamw:8e-3", "sec_per_step": 0.2, "opt_ms_per_step": 3.0, "warmup_s": 1.0}]
    lockstep.write_costs(path, "default", rows, Args)
    lockstep.write_costs(path, "3m", [dict(rows[0], sec_per_step=0.6)], Args)
    sizes = json.loads(path.read_text())["sizes"]
    assert sizes["default"]["adamw"]["sec_per_step"] == 0.2 and sizes["3m"]["adamw"]["sec_per_step"] == 0.6
