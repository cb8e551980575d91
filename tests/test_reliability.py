"""Reliability, bad input: a table of ≥ 100 hostile command lines (``reliability_cases.cases``) across every
command must each end in exit code 2 with one line ``infogeom: error: ...``, no traceback and no file changed.

Most run in-process through ``infogeom.cli.main`` (fast); a handful run as real processes, which proves the
one-line contract holds at the process boundary too (and that a start-up Ctrl-C is one line).
"""

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from reliability_cases import REPO, build_environment, cases, judge, run_subprocess, snapshot

from infogeom.cli import main


@pytest.fixture(scope="module", name="env")
def env_fixture(tmp_path_factory):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield build_environment(tmp_path_factory.mktemp("hostile"), tmp_path_factory.mktemp("cache"))
    torch.set_num_threads(n)


def test_the_table_is_large_and_covers_every_command(env):
    table = cases(env)
    assert len(table) >= 100 and len({name for name, _ in table}) == len(table)
    commands = {argv[0] for _, argv in table if argv}
    assert commands == {"train", "eval", "sample", "info", "curvature", "quantum-ablation"} | {"frobnicate"}


@pytest.mark.timeout(600)
def test_every_bad_input_is_one_clean_line_in_process(env, capsys, monkeypatch):
    monkeypatch.chdir(env.root)
    outcomes = {}
    for name, argv in cases(env):
        before = snapshot(env.root)
        try:
            rc = main(argv)
        except BaseException as exc:  # noqa: BLE001 - any escape is a failure of the contract
            rc, err = 1, f"Traceback: {type(exc).__name__}: {exc}"
        else:
            err = capsys.readouterr().err
        outcomes[name] = (judge(rc, err, snapshot(env.root) != before), err.strip()[:300])
    bad = {name: o for name, o in outcomes.items() if o[0] != "clean"}
    assert not bad, f"{len(bad)} of {len(outcomes)} cases not clean: {bad}"


def test_bad_input_in_real_processes_has_no_traceback(env):
    picks = ["train-seed=99999999999999999999", "train-data.corpus=/dev/zero", "eval-flip_middle",
             "quantum--damping -1"]
    table = dict(cases(env))
    before = snapshot(env.root)
    with ThreadPoolExecutor(len(picks)) as pool:  # processes in parallel: start-up dominates
        results = list(pool.map(lambda name: run_subprocess(table[name], timeout=300, cwd=env.root), picks))
    changed = snapshot(env.root) != before
    for name, (rc, err) in zip(picks, results):
        assert judge(rc, err, changed) == "clean", (name, rc, err)


def test_ctrl_c_during_start_up_is_one_line():
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    for delay in (0.2, 0.6, 1.2):
        proc = subprocess.Popen([sys.executable, "-m", "infogeom", "info"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True, env=env)
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert "Traceback" not in err and len(err.strip().splitlines()) <= 1, (delay, err)
        assert proc.returncode in (0, 130, -signal.SIGINT), (delay, proc.returncode)
