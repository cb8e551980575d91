"""CurvatureMonitor in a real (tiny) training run: logged values against a dense float64 Hessian of the
saved checkpoint, and the time-budget logic on a scripted trainer clock."""

import json
import math
import random
import time
from types import SimpleNamespace

import pytest
import torch
from test_hessian_operator import dense_hessian

from infogeom.curvature import CurvatureMonitor
from infogeom.errors import InfogeomError
from infogeom.train import DataConfig, ModelConfig, OptimConfig, TrainConfig, load_model, train
from infogeom.train.checkpoint import list_checkpoints


def tiny_run_config(tmp_path, steps=6):
    rng = random.Random(0)
    text = "".join(rng.choice("abcdefg \n") for _ in range(4000))
    (tmp_path / "corpus.txt").write_text(text)
    return TrainConfig(
        model=ModelConfig(n_layer=1, n_head=2, n_embd=8, block_size=8, dropout=0.0),
        data=DataConfig(
            corpus=str(tmp_path / "corpus.txt"),
            tokenizer="char",
            batch_size=4,
            block_size=8,
            cache_dir=str(tmp_path / "cache"),
        ),
        optim=OptimConfig(name="adamw", lr=1e-2, min_lr=1e-2, warmup_steps=0),
        max_steps=steps,
        eval_every=0,
        eval_batches=1,
        log_every=1,
        ckpt_every=steps,
        seed=0,
        device="cpu",
        out_dir=str(tmp_path / "run"),
        progress=False,
        tensorboard=False,
    )


def test_monitor_logs_curvature_that_matches_dense_oracle(tmp_path):
    cfg = tiny_run_config(tmp_path)
    monitor = CurvatureMonitor(
        every=6,
        quantities=("lambda_max", "hessian_trace", "gap", "precond_sharpness"),
        batch_size=2,
        budget=0.1,
        probes=8,
        tol=1e-5,
    )
    train(cfg, callbacks=[monitor])
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    curv = {r["step"]: r for r in records if "curv/lambda_max" in r}
    assert set(curv) == {6}  # the first due measurement always runs
    final = curv[6]
    model, _, _ = load_model(list_checkpoints(tmp_path / "run")[-1])
    model = model.double()
    model.set_attention("math")  # the oracle's double backward needs the math attention path
    batch = monitor.train_batch
    H = dense_hessian(model, batch)
    evals = torch.linalg.eigvalsh(H)
    assert math.isclose(final["curv/lambda_max"], float(evals[-1]), rel_tol=1e-4)  # float32 model
    assert abs(final["curv/hessian_trace"] - float(H.trace())) <= 5 * final["curv/hessian_trace_se"]
    assert math.isclose(final["curv/eos_threshold"], (2 + 2 * 0.9) / (0.1 * 1e-2), rel_tol=1e-9)
    assert final["curv/eos_ratio"] == pytest.approx(
        final["curv/precond_sharpness"] / final["curv/eos_threshold"]
    )
    with torch.no_grad():
        gap = float(
            torch.nn.functional.cross_entropy(
                model(monitor.val_batch[0]).flatten(0, 1), monitor.val_batch[1].flatten()
            )
            - torch.nn.functional.cross_entropy(model(batch[0]).flatten(0, 1), batch[1].flatten())
        )
    assert math.isclose(final["curv/gap"], gap, rel_tol=1e-4, abs_tol=1e-6)
    report = json.loads((tmp_path / "run" / "curvature_monitor.json").read_text())
    assert report["measured"] == len(curv)
    assert report["monitor_seconds"] == pytest.approx(sum(r["curv/time"] for r in curv.values()))


def test_monitor_budget_thins_measurements(monkeypatch):
    """Scripted clock: each step adds 0.01 s of training; each measurement really takes ≈ 0.02 s."""
    monitor = CurvatureMonitor(every=1, quantities=("gap",), budget=0.1)
    monitor.train_batch = object()

    def fake_measure(model, optimizer):
        end = time.perf_counter() + 0.02
        while time.perf_counter() < end:
            pass
        return {"gap": 0.0}

    monkeypatch.setattr(monitor, "measure", fake_measure)
    trainer = SimpleNamespace(step=0, train_time=0.0, is_main=True, model=None, optimizer=None)
    logged = []
    for step in range(1, 401):
        trainer.step = step
        trainer.train_time = 0.01 * step + monitor.spent  # the trainer's clock includes callback time
        metrics = {}
        monitor.on_step_end(trainer, metrics)
        logged.append("curv/gap" in metrics)
    report = monitor.report(0.01 * 400 + monitor.spent)
    assert monitor.skipped > 300 and 5 < monitor.measured < 40
    # after the first measurement, the overhead never exceeds the budget by more than one measurement
    assert report["overhead"] <= 0.1 + monitor.last_cost / report["train_seconds"]
    assert report["measured"] == sum(logged)


def test_monitor_rejects_bad_configuration():
    with pytest.raises(InfogeomError):
        CurvatureMonitor(quantities=("lambda_max", "bogus"))
    with pytest.raises(InfogeomError):
        CurvatureMonitor(budget=0.0)
