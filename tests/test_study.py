"""The study engine on a synthetic experiment (tests/study_synthetic.py): plan, cache, budget, executors (local
worker processes and a real Ray head), kill -9 and resume, faults, the report (checked in headless Chromium)."""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
import study_synthetic as synth
from PIL import Image

from infogeom import __version__
from infogeom.cli import main
from infogeom.study import Cell, Experiment, Section
from infogeom.study.cache import CellStore, open_study
from infogeom.study.calibrate import slowdown
from infogeom.study.executors import run_cell
from infogeom.study.experiments import experiments
from infogeom.study.plan import make_plan
from infogeom.study.report import build_report
from infogeom.study.runner import job_of

TESTS = Path(__file__).parent
SRC = TESTS.parent / "src"
FAST = ["--calibration-seconds", "0", "--no-progress", "--jobs", "1"]


@pytest.fixture
def env(monkeypatch, tmp_path) -> Path:
    """Register X1; log every cell start to tmp_path/log (returned)."""
    log = tmp_path / "log"
    monkeypatch.setenv("INFOGEOM_STUDY_EXPERIMENTS", "X1=study_synthetic")
    monkeypatch.setenv("INFOGEOM_STUDY_BUILTINS", "0")  # the engine's tests run the synthetic experiment only
    monkeypatch.setenv("STUDY_SYNTH_LOG", str(log))
    for var in ("STUDY_SYNTH_SLEEP", "STUDY_SYNTH_CRASH_AT", "STUDY_SYNTH_FAIL"):
        monkeypatch.delenv(var, raising=False)
    return log


def starts(log: Path) -> list[str]:
    return [line.split()[0] for line in log.read_text().splitlines()] if log.exists() else []


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("infogeom: error: ")
    return err


def populate(out: Path, experiments_: dict, seed: int = 0, profile: str = "quick"):
    """Plan and run every cell in this process (no workers): a fast way to a filled cache."""
    open_study(out, {"version": __version__, "seed": seed})
    store = CellStore(out)
    plan = make_plan(experiments_, profile, seed, 1, 1.0, store)
    for pc in plan.cells:  # plan order lists needs first in the synthetic experiment
        run_cell(job_of(plan, pc, out))
    return make_plan(experiments_, profile, seed, 1, 1.0, store)


def results_bytes(out: Path) -> dict[str, tuple[bytes, int]]:
    return {p.parent.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in (out / "cells").glob("*/result.json")}


# ---------------------------------------------------------------------------------------------------- plan, cache


def test_hashes_seeds_and_pairing():
    c = Cell("X1", "a/r0", "m:f", {"lr": 0.1})
    assert c.key("1", study_seed=0) == Cell("X1", "a/r0", "m:f", {"lr": 0.1}, priority=5, est_seconds=9).key("1")
    assert len({c.key("1"), c.key("2"), c.key("1", study_seed=1), replace(c, params={"lr": 0.2}).key("1"),
                replace(c, replicate=1).key("1"), c.key("1", data_hash="x")}) == 6
    gd, ng = (Cell("X1", f"{m}/r0", "m:f", {"pair_key": "k"}) for m in ("gd", "ngd"))
    assert gd.seed(0) == ng.seed(0) != gd.seed(1)  # paired arms share seeds; the study seed changes them
    assert replace(gd, replicate=1).seed(0) != gd.seed(0)
    quick, full = (make_plan({"X1": synth.EXPERIMENT}, p, 0, 1, 1.0, CellStore(Path("/nonexistent"))) for p in
                   ("quick", "full"))
    qk = {pc.cell.name: pc.key for pc in quick.cells}
    fk = {pc.cell.name: pc.key for pc in full.cells}
    assert all(fk[n] == k for n, k in qk.items() if n != "sum")  # quick cells are full cells ...
    assert fk["sum"] != qk["sum"]  # ... except one reading more inputs: its key hashes its needs' keys


def test_budget_drops_lowest_priority_cells_and_their_dependents(tmp_path):
    exps = {"X1": synth.EXPERIMENT}
    store = CellStore(tmp_path)
    plan = make_plan(exps, "quick", 0, 1, 1.0, store)
    assert plan.estimate_seconds() == pytest.approx(4 * 2 + 3 + 1 + 30)  # cells + overhead, 1 job
    assert plan.longest_chain_seconds("X1") == pytest.approx(2 + 1)  # a value, then the sum (train: 3 alone)
    plan.cells[0].status = "done"
    for pc in plan.cells[1:4]:
        pc.est = 0.5
    assert plan.longest_chain_seconds("X1") == pytest.approx(3.0)  # now train; a done value costs nothing
    assert [pc.cell.name for pc in make_plan(exps, "quick", 0, 1, 1.0, store, 41.9 / 60).dropped()] == ["train"]
    plan = make_plan(exps, "quick", 0, 1, 1.0, store, 38.5 / 60)  # train (priority 2), then r3 and sum (needs r3)
    assert [pc.cell.name for pc in plan.dropped()] == ["value/r3", "train", "sum"]
    assert plan.estimate_seconds() <= 38.5
    assert make_plan(exps, "quick", 0, 1, 2.0, store).estimate_seconds() == pytest.approx(2 * 42)  # calibration
    assert len(make_plan(exps, "quick", 0, 1, 1.0, store, 0.01).dropped()) == 6


def test_calibration_probe_measures_and_is_reused(tmp_path):
    path = tmp_path / "calibration.json"
    s, measured = slowdown(0.3, path)
    assert measured and 0.01 < s < 100
    assert slowdown(0.3, path) == (s, False)
    assert slowdown(0, path) == (1.0, False)


def test_two_workers_never_run_one_cell(tmp_path, env, monkeypatch):
    monkeypatch.setenv("STUDY_SYNTH_SLEEP", "0.5")
    plan = make_plan({"X1": synth.EXPERIMENT}, "quick", 0, 2, 1.0, CellStore(tmp_path))
    job = job_of(plan, plan.cells[0], tmp_path)
    got, store = [], CellStore(tmp_path)
    threads = [threading.Thread(target=lambda: got.append(run_cell(job))) for _ in range(2)]
    assert not store.running(job["key"])
    for t in threads:
        t.start()
    _wait(lambda: bool(starts(env)), 30, "the cell to start")
    assert store.running(job["key"])  # what --status reports as running
    for t in threads:
        t.join()
    assert not store.running(job["key"])
    assert starts(env) == ["value/r0"]  # the second waited on the lock, then found the result
    assert sorted(g["cached"] for g in got) == [False, True]


# ---------------------------------------------------------------------------------------------------- the CLI


def test_study_runs_caches_and_reports(tmp_path, env, capsys):
    out = tmp_path / "out"
    assert main(["study", "--only", "X1", "--out", str(out), *FAST]) == 0
    printed = capsys.readouterr().out
    assert f"report:      {out / 'report' / 'index.html'}" in printed
    assert sorted(starts(env)) == sorted(["value/r0", "value/r1", "value/r2", "value/r3", "train", "sum"])
    res = json.loads((out / "results.json").read_text())
    cells = {c["name"]: c for c in res["cells"]}
    assert all(c["status"] == "done" and c["wall_s"] >= 0 and c["cpu_s"] >= 0 and len(c["hash"]) == 64
               for c in cells.values())
    assert {c["result"]["threads"] for n, c in cells.items() if n.startswith("value")} == {1}  # one torch thread
    assert cells["sum"]["result"]["total"] == pytest.approx(sum(cells[f"value/r{i}"]["result"]["value"]
                                                                for i in range(4)))
    assert res["environment"]["packages"]["torch"] and res["environment"]["cpu_count"] == os.cpu_count()
    assert res["experiments"]["X1"]["numbers"]["n"] == 4
    assert (out / "results.csv").read_text().startswith("experiment,cell,hash,seed,key,value\n")
    assert len(json.loads((out / "plan.json").read_text())["cells"]) == 6
    info = json.loads(next((out / "cells").glob("*/cell.json")).read_text())
    assert {"cell", "seed", "wall_s", "cpu_s", "started", "finished"} <= set(info)

    before = results_bytes(out)
    assert main(["study", "--out", str(out), *FAST]) == 0  # everything cached: nothing runs
    assert "0 computed, 6 of 6 done" in capsys.readouterr().out
    assert len(starts(env)) == 6 and results_bytes(out) == before

    assert main(["study", "--full", "--out", str(out), *FAST]) == 0  # reuses the quick cells
    assert sorted(starts(env)[6:]) == ["sum", "value/r4", "value/r5"]
    capsys.readouterr()

    assert main(["study", "--status", "--out", str(out)]) == 0
    assert "X1   6 done, 0 running, 0 failed, 0 to do (of 6)" in capsys.readouterr().out
    assert main(["study", "--status", "--full", "--out", str(out), "--seed", "0"]) == 0
    assert "8 done" in capsys.readouterr().out

    assert main(["study", "--dry-run", "--full", "--seed", "3", "--out", str(tmp_path / "new"),
                 "--calibration-seconds", "0", "--budget-minutes", "0.7", "--jobs", "1"]) == 0
    dry = capsys.readouterr().out
    assert "8 cells: 0 done, 5 to do, 3 dropped" in dry
    assert "dropped by the budget (3): X1/value/r5, X1/train, X1/sum" in dry
    assert not (tmp_path / "new").exists()  # a dry run writes nothing

    assert main(["study", "--report-only", "--self-contained", "--out", str(out)]) == 0
    page = (out / "report" / "index.html").read_text()
    png = base64.b64decode(page.split("data:image/png;base64,")[1].split('"')[0])
    assert png.startswith(b"\x89PNG") and "<script" not in page
    assert "consistent</span>" in page and "&lt;values&gt;" in page  # badge; text escaped


def test_bad_input_is_one_line_exit_2_and_nothing_lost(tmp_path, env, capsys):
    out = tmp_path / "out"
    populate(out, {"X1": synth.EXPERIMENT})
    before = results_bytes(out)
    assert main(["study", "--only", "X1,E9", "--out", str(out), *FAST]) == 2
    assert "unknown experiment E9" in one_error_line(capsys)
    assert main(["study", "--out", str(out), "--seed", "1", *FAST]) == 2  # another study's folder
    assert "holds another study" in one_error_line(capsys)
    assert main(["study", "--status", "--out", str(out), "--seed", "1"]) == 2
    one_error_line(capsys)
    assert main(["study", "--out", str(out), "--ray-address", "127.0.0.1:1", *FAST]) == 2
    assert "needs --executor ray" in one_error_line(capsys)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nobody listens there once closed
    assert main(["study", "--out", str(out), "--executor", "ray", "--ray-address", f"127.0.0.1:{port}", *FAST]) == 2
    err = one_error_line(capsys)
    assert "does not answer" in err or "needs Ray" in err
    victim = next(iter(before))
    (out / "cells" / victim / "result.json").write_text('{"value": 1.')  # truncated
    assert main(["study", "--out", str(out), *FAST]) == 2
    assert f"corrupt result {out / 'cells' / victim / 'result.json'}" in one_error_line(capsys)
    assert main(["study", "--report-only", "--out", str(out)]) == 2
    one_error_line(capsys)
    assert {k: v for k, v in results_bytes(out).items() if k != victim} == {k: v for k, v in before.items()
                                                                            if k != victim}
    assert starts(env).count("value/r0") == 1  # nothing recomputed
    (out / "cells" / victim / "result.json").unlink()
    assert main(["study", "--out", str(out), "--seed", "1", "--force", *FAST]) == 0  # beside it; no cell shared
    assert len(starts(env)) == 12
    assert {k: v for k, v in results_bytes(out).items() if k in before} == {k: v for k, v in before.items()
                                                                           if k != victim}


def test_failed_cell_dead_worker_and_broken_analysis(tmp_path, env, monkeypatch, capsys):
    monkeypatch.setenv("STUDY_SYNTH_FAIL", "value/r1")
    monkeypatch.setenv("STUDY_SYNTH_CRASH_AT", "2")  # the train cell's worker dies once, at step 2
    out = tmp_path / "out"
    assert main(["study", "--out", str(out), *FAST]) == 1
    printed = capsys.readouterr().out
    assert "failed: X1/value/r1: ValueError: this cell fails on purpose" in printed
    assert "failed: X1/sum: skipped: needs X1/value/r1" in printed
    res = {c["name"]: c for c in json.loads((out / "results.json").read_text())["cells"]}
    assert res["value/r1"]["status"] == "failed" and res["sum"]["status"] == "skipped"
    assert res["train"]["result"]["resumed_from"] == 2  # retried in a new worker, from its checkpoint
    x = float(res["train"]["seed"] % 7)
    for _ in range(6):
        x = x / 2 + 1
    assert res["train"]["result"]["x"] == x
    assert starts(env).count("train") == 2
    assert "Traceback" in (out / "cells" / res["value/r1"]["hash"] / "error.txt").read_text()
    page = (out / "report" / "index.html").read_text()
    assert "failed: ValueError: this cell fails on purpose" in page

    def broken(results, figdir) -> Section:
        raise RuntimeError("analysis exploded")

    exps = {**experiments(), "X2": Experiment("X2", "Broken", "-", lambda p: synth.plan(p, "X2", 1), broken)}
    plan = make_plan(exps, "quick", 0, 1, 1.0, CellStore(out))
    page = build_report(plan, out).read_text()
    assert "RuntimeError: analysis exploded" in page and page.count("<img ") == 1  # X1 still renders


def _wait(predicate, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return not Path(f"/proc/{pid}/stat").exists() or Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def test_kill_9_then_rerun_redoes_only_unfinished_cells(tmp_path, env, monkeypatch, capsys):
    out = tmp_path / "out"
    sub_env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), str(TESTS)]), "STUDY_SYNTH_SLEEP": "0.6"}
    proc = subprocess.Popen([sys.executable, "-m", "infogeom", "study", "--out", str(out), *FAST], env=sub_env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait(lambda: len(list((out / "cells").glob("*/result.json"))) >= 2 or proc.poll() is not None, 120,
              "two finished cells")
        proc.kill()  # kill -9 of the study process; its workers notice and exit
    finally:
        proc.kill()
        proc.wait()
    workers = {int(line.split()[1]) for line in env.read_text().splitlines()}
    _wait(lambda: not any(_alive(p) for p in workers), 10, "the orphaned workers to exit")
    finished = results_bytes(out)
    assert 2 <= len(finished) < 6, "the study was not killed while running"
    ran_before = starts(env)

    monkeypatch.setenv("STUDY_SYNTH_SLEEP", "0.6")  # the same plan as the killed run
    assert main(["study", "--out", str(out), *FAST]) == 0
    assert f"{6 - len(finished)} computed, 6 of 6 done" in capsys.readouterr().out
    after = results_bytes(out)
    assert len(after) == 6 and all(after[k] == v for k, v in finished.items())  # byte for byte, never rewritten
    reran = starts(env)[len(ran_before):]
    done_names = {json.loads((out / "cells" / k / "cell.json").read_text())["cell"]["name"] for k in finished}
    assert not done_names & set(reran) and len(reran) == 6 - len(finished)


# ---------------------------------------------------------------------------------------------------- Ray


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head(tmp_path, monkeypatch):
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'infogeom[ray]')")
    ray_bin = Path(sys.executable).with_name("ray")
    if not ray_bin.exists():
        pytest.skip(f"no ray command next to {sys.executable}")
    port = _free_port()
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # a token in ~/.ray (from another Ray run) must not lock us out
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), str(TESTS)]), "RAY_USAGE_STATS_ENABLED": "0"}
    temp = Path("/tmp") / f"ray-{os.getpid()}"  # Ray's socket paths must stay short
    cmd = [str(ray_bin), "start", "--head", "--num-cpus", "2", "--port", str(port), "--include-dashboard=false",
           "--disable-usage-stats", f"--temp-dir={temp}"]
    started = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([str(ray_bin), "stop", "--force"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(temp, ignore_errors=True)


def test_ray_executor_on_a_real_head_retries_and_resumes(tmp_path, env, ray_head):
    out = tmp_path / "out"
    sub_env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), str(TESTS)]), "STUDY_SYNTH_CRASH_AT": "3"}
    run = subprocess.run([sys.executable, "-m", "infogeom", "study", "--out", str(out), "--executor", "ray",
                          "--ray-address", ray_head, "--jobs", "2", "--calibration-seconds", "0", "--no-progress"],
                         env=sub_env, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stdout + run.stderr
    res = {c["name"]: c for c in json.loads((out / "results.json").read_text())["cells"]}
    assert all(c["status"] == "done" for c in res.values())
    assert res["train"]["result"]["resumed_from"] == 3 and starts(env).count("train") == 2  # Ray retried it
    pids = {json.loads((out / "cells" / c["hash"] / "cell.json").read_text())["pid"] for c in res.values()}
    assert os.getpid() not in pids  # the cells ran in Ray's worker processes
    # the same cells through the local executor give the same numbers
    local = tmp_path / "local"
    populate(local, {"X1": synth.EXPERIMENT})
    for c in res.values():
        if c["name"] != "train":
            assert CellStore(local).result(c["hash"]) == c["result"]


# ---------------------------------------------------------------------------------------------------- browser


def _chromium() -> str | None:
    return next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)


CHECK = """<script>window.addEventListener('load', () => {const im = [...document.images];
document.body.setAttribute('data-check', 'images=' + im.length + ' broken=' +
im.filter(i => !(i.complete && i.naturalWidth > 0)).length);});</script></body>"""


def _browser(browser: str, tmp_path: Path, *args: str) -> str:
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
           f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000", *args]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    return run.stdout


def _image_check(browser: str, tmp_path: Path, page: Path, extra: str = "") -> str:
    """Load a copy of ``page`` (same folder) with a test-only script that counts images that did not decode."""
    probe = page.with_name("check.html")
    probe.write_text(page.read_text().replace("</body>", extra + CHECK))
    dom = _browser(browser, tmp_path, "--dump-dom", probe.as_uri())
    probe.unlink()
    return dom.split('data-check="')[1].split('"')[0]


def test_report_renders_in_headless_chromium(tmp_path, env):
    browser = _chromium()
    if browser is None:
        pytest.skip("no chromium binary found (apt-get install -y chromium)")
    out = tmp_path / "out"
    plan = populate(out, {"X1": synth.EXPERIMENT})
    page = build_report(plan, out)
    assert _image_check(browser, tmp_path, page) == "images=1 broken=0"
    (page.parent / "figures" / "garbage.png").write_bytes(b"\x89PNG not really")
    assert _image_check(browser, tmp_path, page, '<img src="figures/garbage.png">') == "images=2 broken=1"
    shot = tmp_path / "report.png"
    _browser(browser, tmp_path, f"--screenshot={shot}", "--window-size=1200,1600", page.as_uri())
    with Image.open(shot) as im:
        assert im.size == (1200, 1600)
        lo, hi = im.convert("L").getextrema()
        assert hi - lo > 100  # not a blank page

    page = build_report(plan, out, self_contained=True)
    shutil.rmtree(page.parent / "figures")  # the inlined figure must not need the file
    assert _image_check(browser, tmp_path, page) == "images=1 broken=0"
