"""The curvature command's time budget, thread choice, Lanczos progress estimate, streamed output and
interrupt safety."""

import dataclasses
import json
import math
import os
import time

import pytest
import torch
from test_curvature_monitor import tiny_run_config

from infogeom.cli import main
from infogeom.curvature import analysis
from infogeom.curvature.analysis import AnalysisOptions
from infogeom.curvature.budget import MAX_FLOATS, MAXIMUM, MINIMUM, Calibration, calibrate, plan
from infogeom.curvature.lanczos import _remaining_steps
from infogeom.train import train
from infogeom.train.checkpoint import list_checkpoints

WHAT = ["eig", "trace", "density", "noise", "landscape"]


def test_plan_scales_sizes_with_the_budget_and_keeps_explicit_ones():
    cal = Calibration(product_s=0.25, forward_s=0.03, threads=2, tried={2: 0.25, 1: 0.5})
    small, _ = plan(10, cal, WHAT, AnalysisOptions(), batch_size=8)
    large, cost = plan(300, cal, WHAT, AnalysisOptions(), batch_size=8)
    assert small.probes == 0 and small.hutchpp_probes == MINIMUM["hutchpp_probes"]  # too small for both
    both, _ = plan(30, cal, ["trace"], AnalysisOptions(), batch_size=8)  # 120 products: both estimators
    assert both.probes >= MINIMUM["probes"] and both.hutchpp_probes >= MINIMUM["hutchpp_probes"]
    assert both.probes + both.hutchpp_probes <= 120
    assert small.grid == MINIMUM["grid"] and small.lanczos_steps >= MINIMUM["lanczos_steps"]
    assert large.probes > MINIMUM["probes"] and large.lanczos_steps * large.density_probes > 4 * small.lanczos_steps
    assert large.grid > small.grid and large.grid % 2 == 1
    assert sum(cost.values()) <= 300 * 1.05  # the plan spends the budget, not more
    assert cost["trace"] == pytest.approx((large.probes + large.hutchpp_probes) * 0.25)
    kept, _ = plan(10, cal, WHAT, AnalysisOptions(probes=7, grid=5), batch_size=8)
    assert kept.probes == 7 and kept.grid == 5
    fast = Calibration(product_s=1e-4, forward_s=1e-4, threads=1, tried={1: 1e-4})
    capped, _ = plan(30, fast, WHAT, AnalysisOptions(), batch_size=8, dim=1_000_000)
    assert capped.probes == MAXIMUM["probes"] and capped.lanczos_steps <= 64
    assert capped.hutchpp_probes // 3 * 4 * 1_000_000 <= MAX_FLOATS  # Hutch++'s vectors fit in memory
    assert capped.density_probes * capped.lanczos_steps * 1_000_000 <= MAX_FLOATS


def test_default_budget_plans_the_readme_command_within_45_seconds():
    """At the product time of the default model on 2 quiet cores (0.25–0.32 s per Hessian-vector product,
    0.03 s per loss evaluation), the default budget's plan leaves room for start-up within 45 s."""
    for product_s in (0.25, 0.32):
        cal = Calibration(product_s=product_s, forward_s=0.03, threads=2, tried={2: product_s})
        _, cost = plan(30, cal, WHAT, AnalysisOptions(), batch_size=8)
        assert sum(cost.values()) <= 36


def test_thread_trial_only_while_the_cores_are_idle(monkeypatch):
    from infogeom.curvature import budget

    monkeypatch.setattr(budget, "available_cores", lambda: 2)
    monkeypatch.setattr(budget, "idle_cores", lambda: 1.9)
    assert budget._thread_candidates() == [2, 1]
    monkeypatch.setattr(budget, "idle_cores", lambda: 1.2)  # another job holds most of a core
    assert budget._thread_candidates() == [1]
    monkeypatch.undo()
    measured = budget.idle_cores(0.05)
    assert measured is None or 0 <= measured <= (os.cpu_count() or 1) + 1e-9


def test_calibrate_keeps_the_faster_thread_count(monkeypatch):
    from infogeom.curvature import budget

    monkeypatch.setattr(budget, "idle_cores", lambda: float(budget.available_cores()))
    before = torch.get_num_threads()
    try:
        def product():  # slow with several threads, as on a CPU shared with other jobs
            time.sleep(0.02 if torch.get_num_threads() > 1 else 0.005)

        cal = calibrate(product, lambda: None)
        if len(cal.tried) > 1:
            assert cal.threads == 1 and torch.get_num_threads() == 1
        assert cal.product_s == pytest.approx(min(cal.tried.values()))
        fixed = calibrate(product, lambda: None, threads=1)
        assert fixed.tried.keys() == {1}
    finally:
        torch.set_num_threads(before)


def test_lanczos_remaining_steps_extrapolates_the_residual_rate():
    history = [math.log(100) - 0.5 * i for i in range(6)]  # residual/threshold falls by e^0.5 per step
    expected = math.ceil(history[-1] / 0.5)
    assert _remaining_steps(history, 1000) == expected
    assert _remaining_steps(history, 3) == 3
    assert _remaining_steps([1.0, 1.0, 1.2], 77) is None  # not falling: no estimate (the bar keeps its total)
    assert _remaining_steps([5.0], 77) is None


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("budget")
    train(dataclasses.replace(tiny_run_config(tmp, steps=4), ckpt_every=4))
    return list_checkpoints(tmp / "run")[-1]


def test_budgeted_command_reports_plan_and_accuracy(checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["curvature", str(checkpoint), "--what", "eig,trace,density,landscape", "--batch-size", "2",
            "--budget", "2", "--out", str(out)]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "budget" in text and "calibration" in text and "s/product" in text
    assert "2 SE ≈ 95%" in text and "moments exact to degree" in text
    summary = json.loads((out / "summary.json").read_text())
    probes = summary["options"]["probes"]
    assert (probes == 0 or probes >= MINIMUM["probes"]) and summary["calibration"]["threads"] >= 1
    assert ("hutchinson" in json.loads((out / "trace.json").read_text())) == (probes > 0)
    for name in ("density", "landscape"):
        assert (out / f"{name}.png").is_file() and (out / f"{name}.svg").is_file()


def test_interrupted_command_keeps_finished_items(checkpoint, tmp_path, monkeypatch, capsys):
    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setitem(analysis._ITEM, "trace", interrupted)
    out = tmp_path / "out"
    argv = ["curvature", str(checkpoint), "--what", "eig,trace", "--batch-size", "2", "--k", "1", "--budget", "0",
            "--out", str(out)]
    assert main(argv) == 130
    printed = capsys.readouterr().out
    assert "hessian λ_1" in printed  # eig's row was printed before trace started
    summary = json.loads((out / "summary.json").read_text())
    assert [r[0] for r in summary["rows"]][:1] == ["hessian λ_1"]
    assert (out / "eig.json").is_file() and not (out / "trace.json").exists()
