"""Reliability counts, in the form of issue 15: hostile inputs, kill -9, byte flips, divergence, concurrency.

* **Bad input**: every case of ``tests/reliability_cases.py`` (≥ 300 command lines over train, resume, eval,
  sample, info, curvature, quantum-ablation) as a real process, forked from one pre-imported interpreter;
  ``--fresh N`` of them also as fresh interpreters (start-up path). Outcome per case: clean (exit 2, one line
  ``infogeom: error: ...``), traceback, accepted (exit 0), hang (no exit within ``--timeout``), damaged (a file
  of the environment changed), messy (any other exit or extra stderr lines).
* **Kill -9**: ``--chains`` runs of 60 steps (checkpoint every 2, keep 3), each killed ``--kills`` times at
  random moments (a third of them the moment a temporary checkpoint file exists), resumed after every kill;
  every checkpoint on disk after each kill is verified and compared bit for bit with an uninterrupted run.
* **Byte flips**: ``--flips`` single-byte flips at uniform positions of a checkpoint; each must be refused.
* **Divergence**: per optimizer, a NaN gradient at step 6 (must be skipped) and the learning rate ×1e30 after
  step 5 (the run must stop naming the step, with a last good checkpoint whose loss is finite, or train on).
* **Concurrency**: two processes started together on one folder (exactly one may train).
* **Start-up Ctrl-C**: SIGINT at random moments of ``infogeom info`` start-up (one line at most, no traceback).
* **torchrun**: ``python -m infogeom.launch --nproc_per_node=2 -m infogeom train``, Ctrl-C to the process group
  once it has a checkpoint (exit 130, at most one line per rank plus one, no traceback), and a bad input (each
  rank's one error line, exit 2).

    python benchmarks/reliability.py [--quick] [--out benchmarks/results/reliability.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from reliability_cases import (  # noqa: E402
    REPO,
    TINY,
    BlowUpLearningRate,
    ForkServer,
    PoisonGradient,
    build_environment,
    cases,
    flip_byte,
    judge,
    kill_chain,
    random_flips,
    run_subprocess,
    snapshot,
)

from infogeom.errors import InfogeomError  # noqa: E402
from infogeom.optim import OPTIMIZERS  # noqa: E402
from infogeom.train import load_config, load_model, train  # noqa: E402
from infogeom.train.checkpoint import list_checkpoints, load_checkpoint  # noqa: E402
from infogeom.train.evaluation import eval_batches, mean_loss  # noqa: E402
from infogeom.train.modeling import prepare_run_data  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "reliability.json"
COMMANDS = ("train", "resume", "eval", "sample", "info", "curvature", "quantum")


def command_of(name: str) -> str:
    return next((c for c in COMMANDS if name.startswith(c)), "other")


def fuzz(env, server: ForkServer, timeout: float, fresh: int, seed: int) -> dict:
    table = cases(env)
    outcomes, messages = {}, {}
    for name, argv in table:
        before = snapshot(env.root)
        err_path = env.root.parent / "case.stderr"
        pid = server.start(argv, err_path, env.root)
        rc = server.wait(pid, timeout)
        if rc is None:
            os.kill(pid, signal.SIGKILL)
            server.wait(pid)
        err = err_path.read_text()
        outcomes[name] = judge(rc, err, snapshot(env.root) != before)
        messages[name] = err.strip()[-300:]
    picks = random.Random(seed).sample(table, min(fresh, len(table)))
    before = snapshot(env.root)
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda case: run_subprocess(case[1], timeout, env.root), picks))
    changed = snapshot(env.root) != before
    fresh_outcomes = {name: judge(rc, err, changed) for (name, _), (rc, err) in zip(picks, results)}
    by_command = {}
    for name, outcome in outcomes.items():
        c = by_command.setdefault(command_of(name), Counter())
        c["cases"] += 1
        c[outcome] += 1
    total = Counter(outcomes.values())
    return {"cases": len(table), "clean": total["clean"], "tracebacks": total["traceback"],
            "accepted": total["accepted"], "hangs": total["hang"], "damaged": total["damaged"],
            "messy": total["messy"], "by_command": {k: dict(v) for k, v in by_command.items()},
            "fresh_processes": len(picks), "fresh_clean": sum(o == "clean" for o in fresh_outcomes.values()),
            "not_clean": {n: (o, messages[n]) for n, o in outcomes.items() if o != "clean"}
            | {f"fresh:{n}": (o, "") for n, o in fresh_outcomes.items() if o != "clean"}}


def tiny(corpus: Path, **extra) -> dict:
    return {**TINY, "data.corpus": corpus, "data.cache_dir": corpus.parent / "cache", **extra}


def kills(corpus: Path, root: Path, server: ForkServer, chains: int, per_chain: int, seed: int) -> dict:
    settings = tiny(corpus, max_steps=60, eval_every=20, ckpt_every=2, keep_last=3)
    start = time.perf_counter()
    train(load_config(None, [f"{k}={v}" for k, v in {**settings, "keep_last": 10**6, "out_dir": root / "ref"}.items()]))
    duration = time.perf_counter() - start
    reference = {load_checkpoint(p)["step"]: load_checkpoint(p) for p in list_checkpoints(root / "ref")}
    sets = [x for k, v in settings.items() for x in ("--set", f"{k}={v}")]
    totals = Counter()
    exact_chains = 0
    for chain in range(chains):
        r = kill_chain(server, root / f"chain{chain}", sets, reference, per_chain, max(1, per_chain // 3),
                       duration + 0.3, seed + chain)
        for key in ("kills", "during_writes", "checked", "corrupt", "resumes", "failed_resumes", "bit_exact"):
            totals[key] += getattr(r, key)
        exact_chains += r.final_exact
    return {**dict(totals), "chains": chains, "final_bit_exact_chains": exact_chains}


def flips(corpus: Path, root: Path, n: int, seed: int) -> dict:
    result = train(load_config(None, [f"{k}={v}" for k, v in tiny(
        corpus, max_steps=4, eval_every=4, ckpt_every=4, out_dir=root / "flip").items()]))
    good = result.checkpoint.read_bytes()
    bad, refused = root / "flipped.pt", 0
    for pos, mask in random_flips(good, n, seed):
        bad.write_bytes(flip_byte(good, pos, mask))
        try:
            load_checkpoint(bad)
        except InfogeomError:
            refused += 1
    return {"total": n, "refused": refused, "checkpoint_bytes": len(good)}


def finite_loss(ckpt) -> float:
    model, _, cfg = load_model(ckpt)
    batches = eval_batches(prepare_run_data(cfg.data), "val", 2, 8, cfg.data.block_size, cfg.seed)
    return float(mean_loss(model, batches, torch.device("cpu")))


def divergence(corpus: Path, root: Path) -> dict:
    out = {}
    def cfg(name: str, tag: str):
        values = tiny(corpus, out_dir=root / f"{name}-{tag}", **{"optim.name": name, "optim.lr": 1e-2},
                      max_steps=12, eval_every=4, ckpt_every=4)
        return load_config(None, [f"{k}={v}" for k, v in values.items()])

    for name in sorted(set(OPTIMIZERS) - {"qng"}):
        poison = PoisonGradient(at=6)
        train(cfg(name, "nan"), callbacks=[poison])
        skipped = all(torch.equal(a, b) for a, b in zip(poison.before, poison.after))
        row = {"nan_gradient_skipped": skipped}
        try:
            train(cfg(name, "lr"), callbacks=[BlowUpLearningRate(at=5)])
            row["lr_1e30"] = "trained on"
        except InfogeomError as exc:
            m = re.search(r" at step (\d+);.* last good checkpoint is (\S+) \(step (\d+)\)", str(exc))
            row["lr_1e30"] = f"stopped at step {m.group(1)}" if m else f"stopped: {exc}"
        losses = [finite_loss(p) for p in list_checkpoints(root / f"{name}-lr")]
        row["checkpoints_finite"] = f"{sum(math.isfinite(v) for v in losses)}/{len(losses)}"
        out[name] = row
    return out


def concurrency(corpus: Path, root: Path, server: ForkServer, trials: int) -> dict:
    refused = 0
    for t in range(trials):
        run = root / f"together{t}"
        argv = ["train", "--out", run, *[x for k, v in tiny(corpus, max_steps=20, eval_every=10,
                                                           ckpt_every=10).items() for x in ("--set", f"{k}={v}")]]
        pids = [server.start(argv, root / f"t{t}-{i}.stderr", root) for i in range(2)]
        refused += sorted(server.wait(p) for p in pids) == [0, 2]
    return {"trials": trials, "one_refused": refused}


def startup_interrupts(trials: int, seed: int) -> dict:
    rng, clean = random.Random(seed), 0
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    for _ in range(trials):
        proc = subprocess.Popen([sys.executable, "-m", "infogeom", "info"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True, env=env)
        time.sleep(rng.uniform(0.05, 2.0))
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
        clean += "Traceback" not in err and len(err.strip().splitlines()) <= 1
    return {"trials": trials, "clean": clean}


def launcher(corpus: Path, root: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    sets = [x for k, v in tiny(corpus, eval_every=0, ckpt_every=20).items() for x in ("--set", f"{k}={v}")]
    out = {}
    for case, extra in (("interrupt", []), ("bad_input", ["--set", "model.n_layer=0"])):
        run = root / f"ddp-{case}"
        argv = [sys.executable, "-m", "infogeom.launch", "--nproc_per_node=2", "-m", "infogeom", "train", "--out",
                str(run), *sets, "--max-steps", "100000", *extra]
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
                                start_new_session=True)
        if case == "interrupt":
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline and not list_checkpoints(run):
                time.sleep(0.2)
            os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: every process of the group
        _, err = proc.communicate(timeout=300)
        lines = err.strip().splitlines()
        ok = "Traceback" not in err and (
            proc.returncode == 130 and 1 <= len(lines) <= 3 if case == "interrupt"
            else proc.returncode == 2 and len(lines) == 2 and all(x.startswith("infogeom: error: ") for x in lines))
        out[case] = {"clean": ok, "exit": proc.returncode, "stderr_lines": len(lines)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer kills, flips and fresh processes")
    parser.add_argument("--chains", type=int, default=2)
    parser.add_argument("--kills", type=int, default=12, help="kills per chain")
    parser.add_argument("--flips", type=int, default=1000)
    parser.add_argument("--fresh", type=int, default=12, help="cases also run in fresh interpreters")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds before a case counts as a hang")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.quick:
        args.chains, args.kills, args.flips, args.fresh = 1, 10, 200, 4
    torch.set_num_threads(1)
    server = ForkServer()
    with tempfile.TemporaryDirectory(prefix="infogeom-reliability-") as tmp:
        tmp = Path(tmp)
        env = build_environment(tmp / "hostile", tmp / "cache")
        t0 = time.perf_counter()
        result = {"fuzz": fuzz(env, server, args.timeout, args.fresh, args.seed)}
        result["kill"] = kills(env.corpus, tmp, server, args.chains, args.kills, args.seed)
        result["flips"] = flips(env.corpus, tmp, args.flips, args.seed)
        result["divergence"] = divergence(env.corpus, tmp)
        result["concurrency"] = concurrency(env.corpus, tmp, server, 3)
        result["startup_interrupts"] = startup_interrupts(4 if args.quick else 8, args.seed)
        result["torchrun"] = launcher(env.corpus, tmp)
        result["seconds"] = time.perf_counter() - t0
    server.close()
    f, k, b = result["fuzz"], result["kill"], result["flips"]
    print(f"bad inputs:   {f['cases']} cases: {f['clean']} clean (exit 2, one line), {f['tracebacks']} tracebacks, "
          f"{f['accepted']} accepted, {f['hangs']} hangs, {f['damaged']} damaged, {f['messy']} messy; "
          f"fresh interpreters {f['fresh_clean']}/{f['fresh_processes']} clean")
    print("  by command: " + ", ".join(f"{c} {v.get('clean', 0)}/{v['cases']}" for c, v in f["by_command"].items()))
    print(f"kill -9:      {k['kills']} kills ({k['during_writes']} during checkpoint writes), {k['checked']} "
          f"checkpoint files checked: {k['corrupt']} corrupt, {k['failed_resumes']} failed resumes of {k['resumes']}, "
          f"{k['bit_exact']}/{k['checked']} bit-exact; final state bit-exact in "
          f"{k['final_bit_exact_chains']}/{k['chains']} chains")
    print(f"byte flips:   {b['refused']}/{b['total']} refused")
    print(f"{'optimizer':<10} {'NaN gradient':<14} {'lr x1e30 after step 5':<24} checkpoints finite")
    for name, row in result["divergence"].items():
        print(f"{name:<10} {'skipped' if row['nan_gradient_skipped'] else 'APPLIED':<14} {row['lr_1e30']:<24} "
              f"{row['checkpoints_finite']}")
    c, s = result["concurrency"], result["startup_interrupts"]
    print(f"concurrency:  two started together, exactly one refused in {c['one_refused']}/{c['trials']}")
    print(f"start-up ^C:  {s['clean']}/{s['trials']} clean")
    for case, row in result["torchrun"].items():
        print(f"launch {case}: {'clean' if row['clean'] else 'NOT clean'} (exit {row['exit']}, "
              f"{row['stderr_lines']} stderr lines)")
    if f["not_clean"]:
        print("not clean: " + json.dumps(f["not_clean"])[:3000])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
