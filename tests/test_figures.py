"""Figures and output locations: loss.png from every run, ``infogeom plot``, the monitor's curvature.png,
vector copies, quantum-ablation's default run folder, and config errors that say how to fix them."""

import dataclasses
import json

import pytest
from test_curvature_monitor import tiny_run_config

from infogeom.cli import main
from infogeom.curvature import CurvatureMonitor
from infogeom.errors import InfogeomError
from infogeom.train import load_config, train


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("figures")
    base = dataclasses.replace(tiny_run_config(tmp, steps=6), eval_every=3)
    a = dataclasses.replace(base, out_dir=str(tmp / "a"))
    b = dataclasses.replace(base, out_dir=str(tmp / "b"), optim=dataclasses.replace(base.optim, lr=3e-2))
    train(a, callbacks=[CurvatureMonitor(every=3, quantities=("lambda_max", "hessian_trace", "gap"),
                                         batch_size=2, probes=4, budget=1.0)])
    train(b)
    return tmp / "a", tmp / "b"


def test_training_writes_loss_and_monitor_figures(runs):
    a, b = runs
    for name in ("loss.png", "loss.svg", "curvature.png", "curvature.svg"):
        assert (a / name).stat().st_size > 1000, name
    assert (b / "loss.png").is_file() and not (b / "curvature.png").exists()


def test_plot_command_overlays_runs(runs, tmp_path, capsys):
    out = tmp_path / "both.png"
    assert main(["plot", *map(str, runs), "--out", str(out)]) == 0
    assert out.stat().st_size > 1000 and out.with_suffix(".svg").is_file()
    assert str(out) in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["{missing}"], "has no training records"),
    (["{run}", "--out", "{tmp}/x.pdf"], "--out must name a .png file"),
])
def test_plot_command_bad_input(runs, tmp_path, capsys, argv, message):
    argv = [a.format(missing=tmp_path / "nope", run=runs[0], tmp=tmp_path) for a in argv]
    assert main(["plot", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("infogeom: error:") and message in err


def test_quantum_ablation_defaults_to_a_run_folder(tmp_path, monkeypatch, capsys):
    corpus = tmp_path / "text.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog. " * 100)
    monkeypatch.chdir(tmp_path)
    assert main(["quantum-ablation", "--corpus", str(corpus), "--seeds", "2", "--steps", "2", "--batch-size", "2",
                 "--block-size", "8", "--n-qubits", "2", "--n-layers", "1", "--n-embd", "4",
                 "--recompute-every", "2", "--arms", "adam", "qng-fs"]) == 0
    (folder,) = (tmp_path / "runs").iterdir()
    assert folder.name.startswith("quantum-ablation-")
    assert {p.name for p in folder.iterdir()} == {"quantum_ablation.json", "quantum_ablation.png",
                                                   "quantum_ablation.svg"}
    assert json.loads((folder / "quantum_ablation.json").read_text())["summary"]["qng-fs"]["paired_diff"]
    assert str(folder.relative_to(tmp_path) / "quantum_ablation.json") in capsys.readouterr().out


@pytest.mark.parametrize("overrides, message", [
    (["model.nlayer=2"], "did you mean model.n_layer?"),
    (["max_step=10"], "did you mean max_steps?"),
    (["max_steps=10"], "--set optim.warmup_steps=1"),
])
def test_config_errors_say_how_to_fix_them(overrides, message):
    with pytest.raises(InfogeomError) as err:
        load_config(None, overrides)
    assert message in str(err.value)
