"""``infogeom study --model hf:PATH``: the study's language-model cells on a local transformers checkpoint (tiny
ones made by tests/hf_checkpoints.py), cache keys that follow the model's content, skipped experiments, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hf_checkpoints import make_checkpoint
from scipy.sparse.linalg import LinearOperator, eigsh
from torch.func import functional_call

from infogeom.cli import main
from infogeom.study.cache import CellStore
from infogeom.study.experiments import e1, e2, e5, experiments
from infogeom.study.model import folder_sha256, study_model
from infogeom.study.plan import for_model, make_plan
from infogeom.train.checkpoint import list_checkpoints, load_checkpoint

pytest.importorskip("transformers")
FAST = ["--calibration-seconds", "0", "--no-progress", "--jobs", "1"]
#: E5's quick profile cut to a few seconds (the cells' params carry it to the worker)
TINY = {"sizes": ["19.6k"], "steps": 6, "probes": 1, "slq_steps": 6, "batch": 2, "block": 32,
        "control": {"size": "19.6k", "steps": 5, "seeds": 1, "batch": 4, "block": 32}}


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("hf")
    for family in ("gpt2", "llama"):
        make_checkpoint(base, family)
    return base


def hf_parameters(path: Path) -> int:
    """The oracle: distinct parameters of the checkpoint as transformers loads it (a tied head counted once)."""
    from transformers import AutoModelForCausalLM

    return sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(path).parameters())


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("infogeom: error: ")
    return err


def test_e5_cells_run_on_the_hf_model(root, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(e5.PROFILES, "quick", TINY)
    out, ckpt = tmp_path / "out", root / "gpt2"
    assert main(["study", "--quick", "--only", "E5", "--model", f"hf:{ckpt}", "--out", str(out), *FAST]) == 0
    printed = capsys.readouterr().out
    assert f"model: hf:{ckpt.resolve()} (gpt2, " in printed
    res = json.loads((out / "results.json").read_text())
    n = hf_parameters(ckpt)
    assert res["study"]["model"]["parameters"] == n and res["study"]["model"]["sha256"] == folder_sha256(ckpt)
    cells = {c["name"]: c for c in res["cells"]}
    assert set(cells) == {"e5/train/19.6k", "e5/spectra/19.6k"}  # the ladder-size control is left out
    assert all(c["status"] == "done" and c["params"]["model"]["path"] == str(ckpt.resolve()) for c in cells.values())
    spectra = cells["e5/spectra/19.6k"]["result"]
    assert spectra["params"] == n and spectra["densities"]["H"]["dim"] == n
    assert spectra["blocks_head"]["names"]  # GPT-2's fused c_attn: per-head blocks
    run = out / "cells" / cells["e5/train/19.6k"]["hash"] / "run"
    cfg = load_checkpoint(list_checkpoints(run)[-1])["config"]
    assert (cfg["model"]["arch"], cfg["model"]["path"], cfg["data"]["tokenizer"]) == (
        "hf", str(ckpt.resolve()), f"hf:{ckpt.resolve()}")
    page = (out / "report" / "index.html").read_text()
    assert f"hf:{ckpt.resolve()}" in page and "On the model:" in page


def test_e5_spectra_on_a_llama_style_model(root, tmp_path):
    """RoPE/GQA/SwiGLU family through the two cell functions in this process; no fused c_attn: no head blocks."""
    model = study_model(f"hf:{root / 'llama'}")
    params = {**TINY, "size": "19.6k", "model": model}
    e5.run_train(params, 3, tmp_path, {})
    spectra = e5.run_spectra(params, 3, tmp_path / "s", {"train": {"dir": tmp_path}})
    assert spectra["params"] == hf_parameters(root / "llama") == model["parameters"]
    assert "c_attn" in spectra["blocks_head"]["skipped"] and spectra["blocks_sublayer"]["names"]


def test_cache_keys_follow_the_model_and_its_content(root, tmp_path):
    store = CellStore(tmp_path / "out")
    exps = {"E5": experiments()["E5"]}
    copy = tmp_path / "gpt2-copy"
    shutil.copytree(root / "gpt2", copy)

    def keys(model):
        return {pc.cell.name: pc.key for pc in make_plan(exps, "quick", 0, 1, 1.0, store, model=model).cells}

    native, gpt2, llama, same = (keys(m) for m in (None, study_model(f"hf:{root / 'gpt2'}"),
                                                   study_model(f"hf:{root / 'llama'}"), study_model(f"hf:{copy}")))
    train = "e5/train/19.6k"
    assert len({native[train], gpt2[train], llama[train], same[train]}) == 4  # path is part of the key too
    assert "e5/control/gpt/adamw/r0" in native and "e5/control/gpt/adamw/r0" not in gpt2
    cfg = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**cfg, "n_layer": 1}))  # other weights/config, same path
    changed = keys(study_model(f"hf:{copy}"))
    assert changed[train] != same[train] and changed["e5/spectra/19.6k"] != same["e5/spectra/19.6k"]
    assert keys(study_model(f"hf:{copy}")) == changed  # deterministic


def test_experiments_without_a_model_are_skipped_or_refused(root, tmp_path, capsys):
    model = study_model(f"hf:{root / 'gpt2'}")
    chosen, skipped = for_model(experiments(), model, explicit=False)
    assert set(skipped) == {"E3", "E4", "E6"} and set(chosen) == {"E1", "E2", "E5"}
    assert "ladder of model sizes" in skipped["E3"]
    assert main(["study", "--dry-run", "--model", f"hf:{root / 'gpt2'}", "--out", str(tmp_path / "d"), *FAST]) == 0
    printed = capsys.readouterr().out
    assert "E3   skipped with --model: its design is a ladder of model sizes" in printed
    out = tmp_path / "o"
    assert main(["study", "--only", "E5,E3", "--model", f"hf:{root / 'gpt2'}", "--out", str(out), *FAST]) == 2
    assert "experiment E3 cannot run with --model" in one_error_line(capsys)
    assert not out.exists()


@pytest.mark.parametrize("arg,message", [
    ("hf:{tmp}/missing", "no such folder"),
    ("hf:{tmp}", "is not a transformers checkpoint (no config.json"),
    ("{root}/gpt2", "--model takes hf:PATH"),
])
def test_bad_model_is_one_line_exit_2_and_nothing_written(root, tmp_path, capsys, arg, message):
    out = tmp_path / "out"
    arg = arg.format(tmp=tmp_path, root=root)
    assert main(["study", "--only", "E5", "--model", arg, "--out", str(out), *FAST]) == 2
    assert message in one_error_line(capsys)
    assert not out.exists()


def test_tokenizer_that_does_not_fit_the_model_is_refused(root, tmp_path, capsys):
    bad = tmp_path / "bad"
    shutil.copytree(root / "gpt2", bad)
    cfg = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**cfg, "vocab_size": 100}))
    assert main(["study", "--only", "E5", "--model", f"hf:{bad}", "--out", str(tmp_path / "o"), *FAST]) == 2
    assert "does not match the model" in one_error_line(capsys)


#: E2's quick profile cut to a few seconds (one seed; the plan carries it into the cells' params)
TINY_E2 = {"size": "19.6k", "batch": 2, "block": 16, "steps": 8, "every": 4, "seeds": 1, "phase_steps": 6,
           "k_top": 2, "probes": 2, "slq_steps": 4}


def arpack_loss_and_lambda_max(path: Path, batch) -> tuple[float, float]:
    """The oracle: (mean next-token cross-entropy, λ_max of its Hessian) of the checkpoint loaded by transformers
    itself (eager attention, float64), λ_max by ARPACK on products from ``torch.autograd.functional.hvp`` over
    the parameters as one flat vector: no code shared with the project's models or operators."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").double().eval()
    names, shapes = zip(*[(n, p.shape) for n, p in model.named_parameters()])
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    sizes = [s.numel() for s in shapes]

    def loss(theta):
        parts = dict(zip(names, (t.reshape(s) for t, s in zip(theta.split(sizes), shapes))))
        logits = functional_call(model, parts, (batch[0],)).logits  # tied head follows wte
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch[1].flatten())

    def matvec(v):
        v = torch.as_tensor(np.asarray(v).reshape(-1), dtype=torch.float64)
        return torch.autograd.functional.hvp(loss, flat, v)[1].numpy()

    op = LinearOperator((flat.numel(), flat.numel()), matvec=matvec, dtype=np.float64)
    return float(loss(flat).detach()), float(eigsh(op, k=1, which="LA", tol=1e-8, return_eigenvectors=False)[0])


def test_e2_cells_run_on_the_hf_model(root, tmp_path, monkeypatch, capsys):
    """Every E2 cell on the GPT-2 checkpoint (pretrained weights, full-batch arms, AdamW phases), the pilot's λ_max
    against ARPACK, the report section."""
    monkeypatch.setitem(e2.PROFILES, "quick", TINY_E2)
    out, ckpt = tmp_path / "out", root / "gpt2"
    assert main(["study", "--quick", "--only", "E2", "--model", f"hf:{ckpt}", "--out", str(out), *FAST]) == 0
    res = json.loads((out / "results.json").read_text())
    cells = {c["name"]: c for c in res["cells"]}
    assert all(c["status"] == "done" and c["params"]["model"]["path"] == str(ckpt.resolve()) for c in cells.values())
    assert sum(n.startswith("e2/eos/") for n in cells) == 6 and sum("/measure/" in n for n in cells) == 6
    model = study_model(f"hf:{ckpt}")
    n = hf_parameters(ckpt)
    pilot = cells["e2/pilot/r0"]
    plan_cell = next(pc for pc in make_plan({"E2": experiments()["E2"]}, "quick", 0, 1, 1.0, CellStore(tmp_path / "k"),
                                            model=model).cells if pc.cell.name == "e2/pilot/r0")
    batch = e2.fixed_batch(TINY_E2["batch"], TINY_E2["block"], plan_cell.seed, model)
    loss, lam = arpack_loss_and_lambda_max(ckpt, batch)
    assert pilot["result"]["loss"] == pytest.approx(loss, rel=1e-5)
    assert pilot["result"]["lambda_max"] == pytest.approx(lam, rel=1e-3)
    gd = cells["e2/eos/gd/c=1.5/r0"]["result"]
    assert gd["lr"] == pytest.approx(2 / (1.5 * pilot["result"]["lambda_max"])) and len(gd["records"]) == 2
    measures = sorted((c["result"] for n_, c in cells.items() if "/measure/" in n_), key=lambda r: r["step"])
    assert [m["step"] for m in measures] == [0, 0, 0, 1, 2, 6] and all(m["params"] == n for m in measures)
    assert all(m["lambda_max_H"] > 0 and m["tr_F"] > 0 and torch.isfinite(torch.tensor(m["d_eff"]))
               for m in measures)
    page = (out / "report" / "index.html").read_text()
    assert "E2" in page and f"hf:{ckpt.resolve()}" in page


def test_e1b_cells_fine_tune_the_hf_model(root, tmp_path):
    """E1(b)'s grid cell and best-lr replicate on the Llama-style checkpoint (untied head, GQA): AdamW, K-FAC and
    EK-FAC each lower the validation loss from the checkpoint's; the replicate takes the grid's best lr."""
    model = study_model(f"hf:{root / 'llama'}")
    base = {"size": "19.6k", "steps": 6, "batch": 4, "block": 32, "eval_every": 3, "model": model}
    for opt, lr in (("adamw", 1e-2), ("kfac", 3e-3), ("ekfac", 1e-2)):
        r = e1.run_lm({**base, "optimizer": opt, "lr": lr}, 3, tmp_path / opt, {})
        assert not r["diverged"] and r["steps"] == 6
        start, end = r["curve"][0][2], r["final_val_loss"]
        assert end < start, (opt, r["curve"])
    grid = {f"lr={lr}": {"result": e1.run_lm({**base, "optimizer": "adamw", "lr": lr}, 3, tmp_path / f"g{lr}", {})}
            for lr in (1e-4, 1e-2)}
    best = e1.run_lm({**base, "optimizer": "adamw"}, 4, tmp_path / "best", grid)
    assert best["lr"] == min(grid.values(), key=lambda g: g["result"]["final_val_loss"])["result"]["lr"] == 1e-2
