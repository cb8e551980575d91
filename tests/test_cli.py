"""The ``train | eval | sample | info`` commands; bad input: one line on stderr, exit 2, files untouched."""

import argparse
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from test_train import corpus_fixture, file_bytes, one_thread_fixture, read_jsonl, tiny_overrides  # noqa: F401

from infogeom.cli import build_parser, main
from infogeom.train import load_model


def cli(*args: str) -> int:
    return main([str(a) for a in args])


def sets(corpus: Path, out: Path, **extra) -> list[str]:
    return [x for item in tiny_overrides(corpus, out, **extra) for x in ("--set", item)]


@pytest.fixture(scope="module")
def run_dir(corpus, tmp_path_factory) -> Path:
    """A finished 12-step tiny run trained through the CLI."""
    out = tmp_path_factory.mktemp("cli") / "run"
    assert cli("train", *sets(corpus, out)) == 0
    return out


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("infogeom: error: ")
    return err


def test_every_option_of_every_command_is_explained():
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert {"train", "eval", "sample", "info"} <= set(commands)
    for name in ("train", "eval", "sample", "info"):
        for action in commands[name]._actions:
            assert action.help and len(action.help) > 10, (name, action.dest)
    assert "optim.options" in commands["train"].format_help()  # every config key is listed


def test_train_prints_where_the_results_are(corpus, tmp_path, capsys):
    out_dir = tmp_path / "run"
    assert cli("train", *sets(corpus, out_dir, max_steps=2, **{"optim.warmup_steps": 0})) == 0
    out = capsys.readouterr().out
    assert f"results:     {out_dir}" in out
    assert f"metrics:     {out_dir / 'metrics.jsonl'}" in out
    assert f"checkpoint:  {out_dir / 'checkpoints' / 'ckpt_00000002.pt'}" in out
    assert (out_dir / "checkpoints" / "ckpt_00000002.pt").is_file() and (out_dir / "metrics.jsonl").is_file()


def corpus_of(run_dir: Path) -> str:
    return load_model(run_dir / "checkpoints" / "ckpt_00000012.pt")[2].data.corpus


def test_print_config_shows_the_resolved_toml(capsys):
    assert cli("train", "--lr", "0.01", "--block-size", "64", "--print-config") == 0
    out = capsys.readouterr().out
    assert "lr = 0.01" in out and out.count("block_size = 64") == 2


def test_eval_reproduces_the_logged_validation_loss(run_dir, capsys):
    assert cli("eval", run_dir / "checkpoints" / "ckpt_00000012.pt") == 0
    out = capsys.readouterr().out
    logged = [r for r in read_jsonl(run_dir / "metrics.jsonl") if "val_loss" in r][-1]
    loss = float(out.split("loss:")[1].split()[0])
    assert loss == pytest.approx(logged["val_loss"], abs=1e-4)
    assert float(out.split("perplexity:")[1].split()[0]) == pytest.approx(math.exp(loss), rel=1e-3)


def test_eval_on_a_single_window_matches_hand_computed_cross_entropy(run_dir, tmp_path, capsys):
    """A text of exactly block_size + 1 tokens has one window: the loss is fully determined."""
    ckpt = run_dir / "checkpoints" / "ckpt_00000012.pt"
    model, tokenizer, cfg = load_model(ckpt)
    text = Path(corpus_of(run_dir)).read_text()[1000:1000 + cfg.data.block_size + 1]
    (tmp_path / "window.txt").write_text(text)
    assert cli("eval", ckpt, "--corpus", tmp_path / "window.txt", "--batches", 1, "--batch-size", 1) == 0
    ids = torch.tensor(tokenizer.encode(text))
    with torch.no_grad():
        logits = model.double()(ids[None, :-1])[0]
    expected = F.cross_entropy(logits, ids[1:]).item()
    printed = float(capsys.readouterr().out.split("loss:")[1].split()[0])
    assert printed == pytest.approx(expected, abs=1e-4)


def test_sample_is_seeded_and_has_the_requested_length(run_dir, capsys):
    ckpt = run_dir / "checkpoints" / "ckpt_00000012.pt"
    outputs = []
    for seed in (1, 1, 2):
        assert cli("sample", ckpt, "--prompt", "The ", "--tokens", 40, "--seed", seed, "--top-k", 5) == 0
        outputs.append(capsys.readouterr().out.rstrip("\n"))
    assert outputs[0] == outputs[1] != outputs[2]
    assert outputs[0].startswith("The ") and len(outputs[0]) == 4 + 40  # char tokenizer: 1 token = 1 char
    assert cli("sample", ckpt, "--tokens", 5, "--num-samples", 3, "--temperature", 0) == 0
    samples = capsys.readouterr().out.rstrip("\n").split("\n---\n")
    assert len(samples) == 3 and len(set(samples)) == 1  # greedy: identical


def test_info_lists_the_installation_and_summarizes_a_checkpoint(run_dir, capsys):
    import infogeom

    assert cli("info") == 0
    out = capsys.readouterr().out
    assert f"infogeom {infogeom.__version__}" in out and torch.__version__ in out
    assert "adamw" in out and "sgd" in out and "shakespeare" in out and "bpe:N" in out
    ckpt = run_dir / "checkpoints" / "ckpt_00000012.pt"
    assert cli("info", ckpt) == 0
    out = capsys.readouterr().out
    model = load_model(ckpt)[0]
    assert f"params:    {model.num_parameters():,} ({model.num_parameters(True):,} non-embedding)" in out
    assert f"{model.flops_per_token(16):,.0f} per token" in out and "step 12 of 12" in out


# --- bad input ----------------------------------------------------------------------------------------------


def test_missing_corrupted_truncated_and_foreign_checkpoints(run_dir, tmp_path, capsys):
    good = (run_dir / "checkpoints" / "ckpt_00000012.pt").read_bytes()
    (tmp_path / "random.pt").write_bytes(os.urandom(5000))
    (tmp_path / "truncated.pt").write_bytes(good[: len(good) // 2])
    torch.save({"weights": torch.ones(2)}, tmp_path / "foreign.pt")
    torch.save(argparse.Namespace(x=1), tmp_path / "code.pt")  # needs unpickling code: refused
    unreadable = "corrupted, truncated or not a checkpoint"
    cases = {"missing.pt": "checkpoint not found", "random.pt": unreadable, "truncated.pt": unreadable,
             "foreign.pt": "no infogeom checksum", "code.pt": unreadable}
    before = file_bytes(tmp_path)
    for name, match in cases.items():
        for command in (["eval"], ["sample"], ["info"]):
            assert cli(*command, tmp_path / name) == 2
            assert match in one_error_line(capsys)
    assert file_bytes(tmp_path) == before


@pytest.mark.parametrize("change,match", [
    ("model.n_layer=2", "holds a model with model.n_layer=1, but the config asks for 2"),
    ("model.n_embd=32", "holds a model with model.n_embd=16, but the config asks for 32"),
    ("data.tokenizer=byte", "uses another vocabulary (char,"),
    ("optim.name=sgd", "was trained with optimizer 'adamw', not 'sgd'"),
])
def test_resume_into_a_mismatched_config_is_refused(run_dir, capsys, change, match):
    before = file_bytes(run_dir)
    assert cli("train", "--out", run_dir, "--resume", "latest", "--max-steps", 20, "--set", change) == 2
    assert match in one_error_line(capsys)
    assert file_bytes(run_dir) == before


def test_resume_from_bad_checkpoints_and_empty_folders(run_dir, tmp_path, capsys):
    (tmp_path / "bad.pt").write_bytes(b"PK\x03\x04 not really a zip")
    before = file_bytes(tmp_path)
    assert cli("train", "--resume", tmp_path / "bad.pt") == 2
    assert "corrupted, truncated or not a checkpoint" in one_error_line(capsys)
    assert cli("train", "--resume", tmp_path / "none.pt") == 2
    assert "checkpoint not found" in one_error_line(capsys)
    assert cli("train", "--out", tmp_path / "empty", "--resume", "latest") == 2
    assert "no checkpoint to resume" in one_error_line(capsys)
    assert cli("train", "--resume", "latest") == 2
    assert "--resume latest needs the run folder" in one_error_line(capsys)
    assert file_bytes(tmp_path) == before


def test_training_into_an_existing_run_folder_is_refused(run_dir, corpus, capsys):
    before = file_bytes(run_dir)
    assert cli("train", *sets(corpus, run_dir)) == 2
    assert "already holds a training run" in one_error_line(capsys)
    assert file_bytes(run_dir) == before


@pytest.mark.parametrize("args,match", [
    (["--lr", "-1"], "optim.lr must be positive"),
    (["--block-size", "0"], "block_size must be a positive"),
    (["--batch-size", "0"], "data.batch_size must be positive"),
    (["--max-steps", "10"], "optim.warmup_steps (50) exceeds max_steps (10)"),
    (["--set", "optim.betas=1"], "unknown config key optim.betas"),
    (["--optimizer", "adamx", "--corpus", "pydoc"], "unknown optimizer 'adamx'"),
    (["--tokenizer", "wordpiece", "--corpus", "pydoc"], "unknown tokenizer 'wordpiece'"),
    (["--corpus", "no/such/file.txt"], "no/such/file.txt"),
    (["--set", "optim.options.bogus=1", "--corpus", "pydoc"], "bad options for optimizer 'adamw'"),
])
def test_bad_training_input_is_one_line_exit_2(tmp_path, capsys, args, match):
    assert cli("train", "--out", tmp_path / "run", "--set", f"data.cache_dir={tmp_path / 'c'}", *args) == 2
    assert match in one_error_line(capsys)
    assert not (tmp_path / "run").exists()


def test_bad_toml_file_is_one_line_exit_2(tmp_path, capsys):
    (tmp_path / "c.toml").write_text("[model]\nn_layers = 3\n")
    assert cli("train", "--config", tmp_path / "c.toml") == 2
    assert "unknown config key model.n_layers" in one_error_line(capsys)


def test_bad_sampling_options(run_dir, capsys):
    ckpt = run_dir / "checkpoints" / "ckpt_00000012.pt"
    for args, match in [(["--temperature", "-1"], "--temperature must be non-negative"),
                        (["--top-k", "0"], "--top-k must be a positive integer"),
                        (["--tokens", "-3"], "--tokens must be non-negative"),
                        (["--prompt", "\u2603"], "not in the char tokenizer's vocabulary")]:
        assert cli("sample", ckpt, *args) == 2
        assert match in one_error_line(capsys)


# --- real processes ---------------------------------------------------------------------------------------

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def test_subprocess_errors_print_no_traceback(tmp_path):
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    for args in (["eval", str(tmp_path / "missing.pt")], ["sample", str(tmp_path / "bad.pt")]):
        proc = subprocess.run([sys.executable, "-m", "infogeom", *args], capture_output=True, text=True,
                              env=ENV, timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
        assert proc.stderr.startswith("infogeom: error: ")


def test_ctrl_c_writes_a_checkpoint_and_exits_cleanly(corpus, tmp_path):
    out = tmp_path / "run"
    args = sets(corpus, out, max_steps=100000, ckpt_every=0, eval_every=0, log_every=1,
                **{"optim.warmup_steps": 0})
    proc = subprocess.Popen([sys.executable, "-m", "infogeom", "train", *args], env=ENV, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:  # wait until a few steps are done
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 4:
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "interrupted at step" in stderr and "--resume latest" in stderr
    ckpts = sorted((out / "checkpoints").glob("ckpt_*.pt"))
    assert len(ckpts) == 1
    step = int(ckpts[0].stem.split("_")[1])
    assert 4 <= step < 100000
    assert max(r["step"] for r in read_jsonl(metrics)) == step
    model, _, cfg = load_model(ckpts[0])  # complete and readable
    assert cfg.max_steps == 100000
    # Continue through the CLI: the checkpoint's config is the base, --max-steps changes only the length.
    assert cli("train", "--out", out, "--resume", "latest", "--max-steps", step + 3) == 0
    assert sorted((out / "checkpoints").glob("ckpt_*.pt"))[-1].name == f"ckpt_{step + 3:08d}.pt"
    assert [r["step"] for r in read_jsonl(metrics) if "loss" in r][-3:] == [step + 1, step + 2, step + 3]
