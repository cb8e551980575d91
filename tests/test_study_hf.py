"""``infogeom study --model hf:PATH``: the study's language-model cells on a local transformers checkpoint (tiny
ones made by tests/hf_checkpoints.py), cache keys that follow the model's content, skipped experiments, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from hf_checkpoints import make_checkpoint

from infogeom.cli import main
from infogeom.study.cache import CellStore
from infogeom.study.experiments import e5, experiments
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
