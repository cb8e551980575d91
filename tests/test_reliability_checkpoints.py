"""Reliability of run folders: every flipped byte of a checkpoint is refused, kill -9 at random moments (and
during checkpoint writes) never leaves a corrupt checkpoint and resumes bit-exactly, and a run folder has one
writer at a time (a dead one's lock is reclaimed). Long variants: ``python benchmarks/reliability.py``."""

import os
import signal
import time

import pytest
import torch
from reliability_cases import TINY, ForkServer, flip_byte, kill_chain, random_flips

from infogeom.cli import main
from infogeom.errors import InfogeomError
from infogeom.train import load_config, train
from infogeom.train.checkpoint import list_checkpoints, load_checkpoint
from infogeom.train.modeling import prepare_run_data
from infogeom.train.rundir import LOCK_FILE, RunLock


@pytest.fixture(scope="module", name="corpus")
def corpus_fixture(tmp_path_factory):
    from pydoc_data.topics import topics

    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n".join(topics[k] for k in sorted(topics))[:60_000], encoding="utf-8")
    return path


def settings(corpus, **extra) -> dict:
    return {**TINY, "data.corpus": corpus, "data.cache_dir": corpus.parent / "cache", **extra}


def as_sets(values: dict) -> list[str]:
    return [x for k, v in values.items() for x in ("--set", f"{k}={v}")]


@pytest.fixture(scope="module", name="server")
def server_fixture():
    server = ForkServer()
    yield server
    server.close()


def test_every_flipped_byte_of_a_checkpoint_is_refused(corpus, tmp_path):
    result = train(load_config(None, [f"{k}={v}" for k, v in settings(
        corpus, max_steps=4, eval_every=4, ckpt_every=4, out_dir=tmp_path / "run").items()]))
    good = result.checkpoint.read_bytes()
    flips = random_flips(good, 150, seed=0) + [(0, 1), (len(good) - 1, 1), (len(good) - 40, 2)]
    bad = tmp_path / "bad.pt"
    refused = 0
    for pos, mask in flips:
        bad.write_bytes(flip_byte(good, pos, mask))
        with pytest.raises(InfogeomError, match="bad.pt") as err:
            load_checkpoint(bad)
        refused += "\n" not in str(err.value)
    assert refused == len(flips)
    bad.write_bytes(good)
    assert load_checkpoint(bad)["step"] == 4  # the unflipped bytes still load


def test_kill_minus_9_never_corrupts_and_resumes_bit_exactly(corpus, tmp_path, server):
    run_settings = settings(corpus, max_steps=40, eval_every=20, ckpt_every=2, keep_last=3)
    prepare_run_data(load_config(None, [f"{k}={v}" for k, v in run_settings.items()]).data)  # warm the cache
    start = time.perf_counter()
    train(load_config(None, [f"{k}={v}" for k, v in {**run_settings, "keep_last": 10**6,
                                                     "out_dir": tmp_path / "ref"}.items()]))
    duration = time.perf_counter() - start
    reference = {load_checkpoint(p)["step"]: load_checkpoint(p) for p in list_checkpoints(tmp_path / "ref")}
    report = kill_chain(server, tmp_path / "run", as_sets(run_settings), reference, kills=10, targeted=3,
                        duration=duration + 0.3, seed=1)
    assert report.kills == 10 and report.during_writes >= 3, report
    assert report.corrupt == 0 and report.failed_resumes == 0, report
    assert report.bit_exact == report.checked and report.final_exact, report
    assert not list((tmp_path / "run").rglob("*.tmp"))
    ref_metrics = [{k: v for k, v in r.items() if k not in ("train_time", "tokens_per_s")}
                   for r in map(eval_json, (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines())]
    run_metrics = [{k: v for k, v in r.items() if k not in ("train_time", "tokens_per_s")}
                   for r in map(eval_json, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())]
    assert run_metrics == ref_metrics


def eval_json(line: str) -> dict:
    import json

    return json.loads(line)


def test_one_writer_per_run_folder_and_a_dead_holder_is_reclaimed(corpus, tmp_path, server, capsys):
    run = tmp_path / "run"
    long = settings(corpus, max_steps=100_000, eval_every=0, ckpt_every=20)
    pid = server.start(["train", "--out", run, *as_sets(long)], tmp_path / "a.stderr", tmp_path)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list_checkpoints(run):
        time.sleep(0.05)
    assert list_checkpoints(run), (tmp_path / "a.stderr").read_text()
    assert (run / LOCK_FILE).read_text().strip() == str(pid)
    for extra in ([], ["--resume", "latest"]):  # a second writer and a resume beside the running one
        assert main(["train", "--out", str(run), *as_sets(long), *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert err == f"infogeom: error: {run} is in use by another infogeom process (pid {pid}); wait for it " \
                      f"to finish or choose another --out", err
    with pytest.raises(InfogeomError, match=f"pid {pid}"):
        RunLock(run)
    os.kill(pid, signal.SIGKILL)
    assert server.wait(pid) == -signal.SIGKILL
    step = torch.load(list_checkpoints(run)[-1], weights_only=True)["step"]
    assert main(["train", "--out", str(run), "--resume", "latest", "--max-steps", str(step + 4)]) == 0
    assert load_checkpoint(list_checkpoints(run)[-1])["step"] == step + 4


def test_two_processes_started_together_on_one_folder(corpus, tmp_path, server):
    run = tmp_path / "run"
    argv = ["train", "--out", run, *as_sets(settings(corpus, max_steps=40, eval_every=20, ckpt_every=10))]
    pids = [server.start(argv, tmp_path / f"{i}.stderr", tmp_path) for i in range(2)]
    rcs = [server.wait(p) for p in pids]
    assert sorted(rcs) == [0, 2], rcs
    loser = (tmp_path / f"{rcs.index(2)}.stderr").read_text().strip()
    assert len(loser.splitlines()) == 1 and ("in use by another infogeom process (pid" in loser
                                              or "already holds a training run" in loser), loser
    steps = [eval_json(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    records = [eval_json(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len({(r["step"], "val_loss" in r) for r in records}) == len(steps)  # no step logged twice
