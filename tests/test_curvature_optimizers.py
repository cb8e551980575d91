"""Every optimizer × every curvature item: ``infogeom curvature`` on checkpoints of adamw, sgd, muon, kfac, ekfac,
ngcg and qng runs, checked against dense float64 oracles (Hessian eigenvalues, trace, and λ_max of the
optimizer's pencil H v = λ S v by a dense generalized eigendecomposition); the monitor during training with each;
and a monitored K-FAC run bit-identical to an unmonitored one (the optimizer's hooks never see the probes)."""

import dataclasses
import json
import math

import pytest
import scipy.linalg
import torch
from test_curvature_monitor import tiny_run_config
from test_hessian_operator import dense_hessian

from infogeom.cli import main
from infogeom.curvature import CurvatureMonitor
from infogeom.optim import build_optimizer, stability_operator
from infogeom.train import Trainer, load_model
from infogeom.train.checkpoint import list_checkpoints, load_checkpoint
from infogeom.train.modeling import prepare_run_data

OPTIMIZERS = {
    "adamw": (1e-2, {}),
    "sgd": (0.1, {"momentum": 0.9}),
    "muon": (1e-2, {}),
    "kfac": (3e-3, {"cov_every": 1, "inv_every": 1}),
    "ekfac": (1e-2, {"cov_every": 1, "inv_every": 1}),
    "fisher-muon": (1e-2, {"cov_every": 1, "inv_every": 1}),
    "ngcg": (0.5, {"cg_iters": 5, "curvature_batch": 2}),
    "qng": (1e-2, {"damping": 1e-2}),
}
ITEMS = "eig,trace,density,blocks,sharpness,noise,landscape"


def config(tmp_path, name, steps=3):
    lr, options = OPTIMIZERS[name]
    cfg = tiny_run_config(tmp_path, steps=steps)
    model = cfg.model
    if name == "qng":
        model = dataclasses.replace(model, quantum_blocks="0", n_qubits=2, quantum_depth=1)
    optim = dataclasses.replace(cfg.optim, name=name, lr=lr, min_lr=lr, options=options, weight_decay=0.0)
    return dataclasses.replace(cfg, model=model, optim=optim)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_every_curvature_item_on_every_optimizer_against_dense_oracles(name, tmp_path, capsys):
    cfg = config(tmp_path, name)
    monitor = CurvatureMonitor(every=1, quantities=("lambda_max", "precond_sharpness"), batch_size=2, budget=1.0)
    trainer = Trainer(cfg, callbacks=[monitor])
    try:
        trainer.fit()
    finally:
        trainer.close()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    monitored = [r for r in rows if "curv/precond_sharpness" in r]
    assert monitored, name  # the monitor measured λ_max(P⁻¹H) during training (its budget may skip some steps)
    assert all(math.isfinite(r["curv/eos_ratio"]) and r["curv/precond_sharpness"] > 0 for r in monitored)

    ckpt = list_checkpoints(tmp_path / "run")[-1]
    out = tmp_path / "out"
    argv = ["curvature", str(ckpt), "--what", ITEMS, "--batch-size", "2", "--k", "1", "--tol", "1e-6",
            "--probes", "8", "--lanczos-steps", "6", "--density-probes", "1", "--grid", "3", "--out", str(out)]
    assert main(argv) == 0, capsys.readouterr().err
    assert "n/a" not in capsys.readouterr().out

    # oracles in float64 on the same batch
    model, _, _ = load_model(ckpt)
    model = model.double()
    model.set_attention("math")
    batch = prepare_run_data(cfg.data).get_batch("train", 2, cfg.data.block_size, torch.Generator().manual_seed(0))
    H = dense_hessian(model, batch)
    evals = torch.linalg.eigvalsh(H)
    eig = json.loads((out / "eig.json").read_text())
    assert math.isclose(eig["eigenvalues"][0], float(evals[-1]), rel_tol=1e-3)
    trace = json.loads((out / "trace.json").read_text())
    hutch = trace["hutchinson"] if "hutchinson" in trace else trace
    assert abs(hutch["trace"] - float(H.trace())) <= 5 * hutch["stderr"] + 1e-3 * abs(float(H.trace()))

    opt = build_optimizer(name, model, cfg.optim.lr, cfg.optim.weight_decay, **cfg.optim.options)
    opt.load_state_dict(load_checkpoint(ckpt)["optimizer"])
    S, parts = stability_operator(opt, model, batch=batch)
    names = [n for n, _ in model.named_parameters()]
    assert S.names == names
    ratio = scipy.linalg.eigh(H.numpy(), S.to_dense().double().numpy(), eigvals_only=True)[-1]
    sharp = json.loads((out / "sharpness.json").read_text())["optimizer"]
    assert math.isclose(sharp["ratio"], ratio, rel_tol=2e-3), (name, sharp["ratio"], ratio)
    assert math.isclose(sharp["sharpness"], ratio * parts[0].factor / parts[0].lr, rel_tol=2e-3)
    for item in ("density", "blocks", "noise", "landscape"):
        assert (out / f"{item}.json").is_file()
    landscape = json.loads((out / "landscape.json").read_text())
    assert all(math.isfinite(v) for row in landscape["losses"] for v in row)


def test_kfac_with_a_monitor_is_bit_identical_to_without(tmp_path):
    """The monitor's probes (Hessian and Fisher products, λ_max(P⁻¹H)) never reach K-FAC's hooks, factors or
    label generator: the parameters after training are bit-identical."""
    params = []
    for monitored in (False, True):
        (tmp_path / str(monitored)).mkdir()
        cfg = config(tmp_path / str(monitored), "kfac", steps=6)
        cfg = dataclasses.replace(cfg, optim=dataclasses.replace(
            cfg.optim, options={"cov_every": 1, "inv_every": 2, "fisher": "mc"}))
        callbacks = [CurvatureMonitor(every=2, batch_size=2, budget=1.0, quantities=(
            "lambda_max", "hessian_trace", "fisher_trace", "noise_scale", "precond_sharpness"))] if monitored else []
        trainer = Trainer(cfg, callbacks=callbacks)
        try:
            trainer.fit()
            params.append({n: p.detach().clone() for n, p in trainer.model.named_parameters()})
        finally:
            trainer.close()
    assert params[0].keys() == params[1].keys()
    assert all(torch.equal(params[0][n], params[1][n]) for n in params[0])


def test_train_cli_monitor_switch(tmp_path, capsys):
    cfg = config(tmp_path, "ekfac", steps=4)
    corpus = cfg.data.corpus
    argv = ["train", "--corpus", corpus, "--optimizer", "ekfac", "--max-steps", "4", "--out", str(tmp_path / "r"),
            "--no-progress", "--monitor", "lambda_max,precond_sharpness", "--monitor-every", "2",
            "--monitor-budget", "1.0", "--set", "model.n_layer=1", "--set", "model.n_embd=8",
            "--set", "model.n_head=2", "--set", "model.block_size=8", "--set", "data.block_size=8",
            "--set", "data.batch_size=4", "--set", "optim.warmup_steps=0", "--set", f"data.cache_dir={tmp_path}/c"]
    assert main(argv) == 0, capsys.readouterr().err
    rows = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert sum("curv/precond_sharpness" in r for r in rows) >= 1
    assert main([*argv[:-2], "--monitor", "bogus"]) == 2
    assert "unknown monitor quantity 'bogus'" in capsys.readouterr().err
