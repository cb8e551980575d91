"""Shared by the reliability tests and ``benchmarks/reliability.py``: a hostile-user environment (a tiny trained
run, damaged and malformed checkpoints, FIFOs, devices, files where folders belong) and a table of bad command
lines, each of which must end in exit code 2 with one line ``infogeom: error: ...``, no traceback and no file
changed; plus the bit-level helpers of the kill and byte-flip tests.
"""

from __future__ import annotations

import hashlib
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from infogeom.train import Callback, load_config, train
from infogeom.train.checkpoint import load_checkpoint, save_checkpoint

REPO = Path(__file__).resolve().parents[1]
TINY = {"data.batch_size": 8, "data.block_size": 16, "model.block_size": 16, "model.n_layer": 1, "model.n_head": 2,
        "model.n_embd": 16, "optim.warmup_steps": 2, "eval_batches": 2, "log_every": 4, "device": "cpu",
        "progress": "false", "tensorboard": "false"}


@dataclass
class Env:
    root: Path  # everything a case may touch; snapshotted around each case
    cache: Path  # token cache (outside root: a case that gets as far as preparing data may fill it)
    corpus: Path
    run: Path  # a finished 8-step run with checkpoints at steps 4 and 8
    ckpt: Path
    bad: dict[str, Path]  # damaged, foreign and malformed checkpoints by name


def tiny_sets(env: Env, **extra) -> list[str]:
    settings = {**TINY, "data.corpus": str(env.corpus), "data.cache_dir": str(env.cache), **extra}
    return [x for k, v in settings.items() for x in ("--set", f"{k}={v}")]


def flip_byte(data: bytes, pos: int, mask: int) -> bytes:
    return data[:pos] + bytes([data[pos] ^ mask]) + data[pos + 1:]


def _malformed(good: dict) -> dict[str, dict]:
    """Checkpoints with a valid checksum (written by ``save_checkpoint``) whose content is wrong."""
    def edit(**changes) -> dict:
        obj = {**good, **changes}
        return {k: v for k, v in obj.items() if v is not _DROP}

    def config(section: str, key: str, value) -> dict:
        cfg = {**good["config"], section: {**good["config"][section], key: value}}
        return edit(config=cfg)

    return {
        "step_text": edit(step="ten"), "step_negative": edit(step=-3), "config_text": edit(config="garbage"),
        "config_block_1e9": config("model", "block_size", 10**9),
        "config_layers_1e6": config("model", "n_layer", 10**6),
        "config_width_text": config("model", "n_embd", "wide"), "config_unknown_key": config("model", "colour", 1),
        "config_lr_nan": config("optim", "lr", float("nan")), "config_batch_1e9": config("data", "batch_size", 10**9),
        "tokenizer_garbage": edit(tokenizer={"x": 1}), "model_empty": edit(model={}),
        "model_missing": edit(model=_DROP), "vocab_text": edit(vocab_size="x"), "train_time_text": edit(train_time="x"),
        "last_eval_text": edit(last_eval="x"), "format_other": edit(format="other"), "tokens_negative": edit(tokens=-1),
        "model_wrong_shape": edit(model={k: torch.zeros(3) for k in good["model"]}),
    }


_DROP = object()


def build_environment(root: Path, cache: Path) -> Env:
    from pydoc_data.topics import topics

    root.mkdir(parents=True, exist_ok=True)
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(topics[k] for k in sorted(topics))[:60_000], encoding="utf-8")
    run = root / "run"
    overrides = [f"{k}={v}" for k, v in {**TINY, "data.corpus": corpus, "data.cache_dir": cache, "out_dir": run,
                                         "max_steps": 8, "eval_every": 4, "ckpt_every": 4}.items()]
    result = train(load_config(None, overrides))
    ckpt = result.checkpoint
    good_bytes = ckpt.read_bytes()
    good = load_checkpoint(ckpt)
    bad_dir = root / "bad"
    bad_dir.mkdir()
    files = {
        "random": os.urandom(5000), "empty": b"", "truncated": good_bytes[: len(good_bytes) // 2],
        "flip_middle": flip_byte(good_bytes, len(good_bytes) // 2, 0x01),
        "flip_trailer": flip_byte(good_bytes, len(good_bytes) - 3, 0x04),
        "flip_first": flip_byte(good_bytes, 0, 0x80), "zip_header_only": b"PK\x03\x04 not really a zip",
        "text": b"hello world\n" * 10,
    }
    bad = {}
    for name, data in files.items():
        (bad_dir / f"{name}.pt").write_bytes(data)
        bad[name] = bad_dir / f"{name}.pt"
    torch.save({"weights": torch.ones(2)}, bad_dir / "foreign.pt")
    torch.save({**good}, bad_dir / "unchecksummed.pt")  # a real checkpoint dict, but no checksum trailer
    bad["foreign"], bad["unchecksummed"] = bad_dir / "foreign.pt", bad_dir / "unchecksummed.pt"
    for name, obj in _malformed(good).items():
        bad[name] = save_checkpoint(bad_dir / f"{name}.pt", obj)
    bad["folder"] = bad_dir / "folder.pt"
    bad["folder"].mkdir()
    bad["fifo"] = bad_dir / "fifo.pt"
    os.mkfifo(bad["fifo"])
    bad["missing"] = bad_dir / "missing.pt"
    (root / "fifo.txt").parent.mkdir(exist_ok=True)
    os.mkfifo(root / "fifo.txt")
    (root / "a_file").write_text("not a folder\n")
    (root / "binary.txt").write_bytes(b"\x00\x01\x02" * 100)
    (root / "latin1.txt").write_bytes("caf\xe9 ".encode("latin-1") * 100)
    (root / "empty.txt").write_text("")
    (root / "big.txt").write_text("abcdefghij\n" * 150_000)  # 1.6 MB: over a 1 MiB cap
    (root / "notxt").mkdir()
    (root / "notxt" / "a.md").write_text("no txt here\n")
    (root / "stopped").mkdir()  # a folder that is not a run
    return Env(root, cache, corpus, run, ckpt, bad)


def cases(env: Env) -> list[tuple[str, list[str]]]:
    """(name, argv) pairs; every one is bad input."""
    r, ck = env.root, str(env.ckpt)
    new = r / "new"
    table: list[tuple[str, list[str]]] = []

    def train_case(name: str, *args: str, out: Path = new, **settings) -> None:
        sets = tiny_sets(env, **{"max_steps": 4, **settings})
        table.append((f"train-{name}", ["train", "--out", str(out), *sets, *args]))

    for key, value in [
        ("seed", "99999999999999999999"), ("seed", "-1"), ("seed", "1.5"), ("model.n_layer", "1000000"),
        ("model.n_layer", "0"), ("model.n_embd", "0"), ("model.n_head", "3"), ("model.block_size", "1000000000"),
        ("data.block_size", "32"), ("data.batch_size", "1000000000"), ("data.batch_size", "0"),
        ("eval_batches", "100000000"), ("eval_batches", "0"), ("optim.lr", "nan"), ("optim.lr", "inf"),
        ("optim.lr", "-1"), ("optim.lr", "0"), ("optim.weight_decay", "-1"), ("optim.grad_clip", "nan"),
        ("optim.warmup_steps", "100"), ("optim.min_lr", "1"), ("max_steps", "0"), ("max_steps", "10000000000000"),
        ("max_seconds", "-1"), ("max_seconds", "nan"), ("model.dropout", "1.5"), ("data.val_fraction", "0"),
        ("data.val_fraction", "1"), ("grad_accum", "0"), ("grad_accum", "100000000"), ("keep_last", "0"),
        ("log_every", "0"), ("ckpt_every", "-1"), ("device", "tpu"), ("device", "cuda:7"),
        ("model.norm", "batchnorm"), ("model.attention", "flash"), ("model.arch", "rnn"),
        ("data.tokenizer", "wordpiece"), ("data.tokenizer", "bpe:0"), ("optim.name", "adamx"),
        ("optim.options.bogus", "1"), ("data.corpus", str(r / "fifo.txt")), ("data.corpus", "/dev/zero"),
        ("data.corpus", "/dev/null"), ("data.corpus", str(r / "missing.txt")), ("data.corpus", str(r / "empty.txt")),
        ("data.corpus", str(r / "binary.txt")), ("data.corpus", str(r / "latin1.txt")),
        ("data.corpus", str(r / "notxt")), ("data.corpus", " "), ("data.max_corpus_mb", "0"),
        ("model.n_embd", "65536"), ("model.bias", "maybe"), ("progress", "perhaps"), ("eval_every", "1.5"),
    ]:
        train_case(f"{key}={value}", **{key: value})
    train_case("big-corpus", **{"data.corpus": str(r / "big.txt"), "data.max_corpus_mb": 1})
    train_case("memory", **{"model.n_layer": 1024, "model.n_embd": 8192, "model.n_head": 8})
    train_case("memory-eval", **{"eval_batches": 1 << 20, "data.batch_size": 4096})
    train_case("out-is-file", out=r / "a_file")
    train_case("out-under-file", out=r / "a_file" / "run")
    train_case("existing-run", out=env.run)
    train_case("bad-override", "--set", "model.n_layer")
    train_case("unknown-key", "--set", "model.colour=red")
    train_case("missing-config", "--config", str(r / "missing.toml"))
    train_case("config-not-toml", "--config", str(env.corpus))
    train_case("config-fifo", "--config", str(r / "fifo.txt"))
    train_case("lr-flag", "--lr", "abc")
    train_case("seed-flag", "--seed", "99999999999999999999")
    train_case("unknown-flag", "--bogus")
    table += [
        ("resume-latest-no-out", ["train", "--resume", "latest"]),
        ("resume-latest-not-a-run", ["train", "--out", str(r / "stopped"), "--resume", "latest"]),
        ("resume-latest-missing", ["train", "--out", str(r / "nowhere"), "--resume", "latest"]),
        ("resume-mismatch", ["train", "--out", str(env.run), "--resume", "latest", "--set", "model.n_layer=2"]),
        ("resume-seed", ["train", "--out", str(env.run), "--resume", "latest", "--seed", "99999999999999999999"]),
        ("resume-optimizer", ["train", "--out", str(env.run), "--resume", "latest", "--optimizer", "sgd"]),
        ("resume-out-file", ["train", "--resume", ck, "--out", str(r / "a_file")]),
    ]
    for name, path in env.bad.items():
        p = str(path)
        table += [(f"eval-{name}", ["eval", p]), (f"sample-{name}", ["sample", p]), (f"info-{name}", ["info", p]),
                  (f"curvature-{name}", ["curvature", p, "--out", str(r / "curv")]),
                  (f"resume-{name}", ["train", "--resume", p, "--max-steps", "12"])]
    for args in [["--batches", "0"], ["--batches", "1000000000"], ["--batch-size", "0"],
                 ["--batch-size", "100000000"], ["--seed", "-1"], ["--seed", "99999999999999999999"],
                 ["--corpus", str(r / "fifo.txt")], ["--corpus", "/dev/zero"], ["--corpus", str(r / "missing.txt")],
                 ["--corpus", str(r / "binary.txt")], ["--split", "test"], ["--device", "tpu"],
                 ["--batches", "100000", "--batch-size", "100000"]]:
        table.append((f"eval{' '.join(args)}", ["eval", ck, *args]))
    for args in [["--tokens", "-1"], ["--tokens", "1000000000"], ["--num-samples", "0"],
                 ["--num-samples", "1000000000"], ["--temperature", "-1"], ["--temperature", "nan"],
                 ["--temperature", "inf"], ["--top-k", "0"], ["--seed", "99999999999999999999"], ["--seed", "-5"],
                 ["--tokens", "abc"], ["--num-samples", "100000", "--tokens", "1000000"], ["--device", "cuda:3"]]:
        table.append((f"sample{' '.join(args)}", ["sample", ck, *args]))
    for args in [["--batch-size", "0"], ["--batch-size", "1000000000"], ["--k", "0"], ["--k", "1000000"],
                 ["--probes", "0"], ["--tol", "0"], ["--tol", "nan"], ["--rho", "nan"], ["--span", "-1"],
                 ["--grid", "0"], ["--grid", "1000000"], ["--what", "bogus"], ["--what", "interpolate"],
                 ["--out", str(r / "a_file")], ["--out", str(r / "a_file" / "x")], ["--seed", "-1"],
                 ["--seed", "99999999999999999999"], ["--operator", "bogus"], ["--lanczos-steps", "100000000"],
                 ["--compare", str(env.bad["flip_middle"]), "--what", "interpolate"]]:
        table.append((f"curvature{' '.join(args)}", ["curvature", ck, *args]))
    q = ["quantum-ablation", "--steps", "2", "--seeds", "1", "--corpus", str(env.corpus), "--out", str(r / "q.json")]
    for args in [["--damping", "-1"], ["--damping", "nan"], ["--lr", "nan"], ["--lr", "0"], ["--lr", "inf"],
                 ["--qng-lr", "-1"], ["--n-embd", "0"], ["--n-qubits", "0"], ["--n-qubits", "100"], ["--seeds", "0"],
                 ["--steps", "0"], ["--steps", "1000000000"], ["--batch-size", "0"], ["--block-size", "0"],
                 ["--n-layers", "0"], ["--recompute-every", "0"], ["--max-inputs", "0"], ["--threads", "0"],
                 ["--out", str(r / "a_file" / "q.json")], ["--out", str(r / "a_file")],
                 ["--corpus", str(r / "fifo.txt")],
                 ["--corpus", "/dev/zero"], ["--arms", "bogus"], ["--task", "bogus"]]:
        table.append((f"quantum{' '.join(args)}", [*q, *args]))
    table += [("no-command", []), ("unknown-command", ["frobnicate"]), ("eval-no-checkpoint", ["eval"]),
              ("info-two-checkpoints", ["info", ck, ck])]
    return table


def snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root``: the SHA-256 of a regular file, or its kind."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_fifo():
            out[rel] = "fifo"
        elif p.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def judge(rc: int | None, err: str, changed: bool) -> str:
    """Outcome of one bad-input case: clean, traceback, accepted, hang, damaged or messy (extra lines)."""
    if rc is None:
        return "hang"
    if "Traceback" in err:
        return "traceback"
    if changed:
        return "damaged"
    if rc == 0:
        return "accepted"
    lines = err.strip().splitlines()
    if rc == 2 and len(lines) == 1 and lines[0].startswith("infogeom: error: "):
        return "clean"
    return "messy"


def run_subprocess(argv: list[str], timeout: float = 120.0, cwd: Path | None = None) -> tuple[int | None, str]:
    """(exit code or None on timeout, stderr) of ``python -m infogeom ARGV``."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "infogeom", *argv], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=cwd)
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        return None, err
    return proc.returncode, err


def random_flips(data: bytes, n: int, seed: int) -> list[tuple[int, int]]:
    """``n`` (position, xor mask) single-byte flips, positions uniform over the file."""
    rng = random.Random(seed)
    return [(rng.randrange(len(data)), rng.randrange(1, 256)) for _ in range(n)]


_ZYGOTE = r"""
import json, os, sys, time
import infogeom.cli as cli
cli.build_parser()  # import every command (torch included) once; children start in milliseconds
for line in sys.stdin:
    req = json.loads(line)
    if "argv" in req:
        pid = os.fork()
        if pid == 0:
            os.dup2(os.open(req["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), 2)
            os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
            os.chdir(req["cwd"])
            if req.get("kill_at_write"):  # kill -9 in the n-th checkpoint write, after its bytes, before rename
                left, real = [req["kill_at_write"]], os.fsync
                def fsync(fd):
                    real(fd)
                    path = os.readlink(f"/proc/self/fd/{fd}")
                    if "/checkpoints/." in path and path.endswith(".tmp"):
                        left[0] -= 1
                        if left[0] == 0:
                            os.kill(os.getpid(), 9)
                os.fsync = fsync
            os._exit(cli.main(req["argv"]))
        reply = {"pid": pid}
    else:
        deadline, rc = time.monotonic() + req["timeout"], None
        while rc is None and time.monotonic() < deadline:
            done, status = os.waitpid(req["wait"], os.WNOHANG)
            rc = os.waitstatus_to_exitcode(status) if done else time.sleep(0.005)
        reply = {"rc": rc}
    print(json.dumps(reply), flush=True)
"""


class ForkServer:
    """Runs ``infogeom`` commands as real processes forked from one pre-imported interpreter (one-thread
    torch), so a test can start, kill -9 and restart dozens of them cheaply."""

    def __init__(self):
        env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen([sys.executable, "-c", _ZYGOTE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, env=env)

    def _ask(self, req: dict) -> dict:
        import json

        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def start(self, argv: list[str], stderr: Path, cwd: Path, kill_at_write: int = 0) -> int:
        """Start ``infogeom ARGV``; ``kill_at_write=n``: the process kills itself (-9) in its n-th checkpoint
        write, between writing the temporary file and renaming it."""
        return self._ask({"argv": [str(a) for a in argv], "stderr": str(stderr), "cwd": str(cwd),
                          "kill_at_write": kill_at_write})["pid"]

    def wait(self, pid: int, timeout: float = 300.0) -> int | None:
        return self._ask({"wait": pid, "timeout": timeout})["rc"]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def same_state(a, b, path: str = "") -> list[str]:
    """Paths where two checkpoint objects differ (bit-exact tensors). Skipped: ``train_time``, ``config`` (its
    out_dir) and the Python/NumPy global RNG states, which the trainer carries over but never seeds or uses, so
    an independent reference process holds its own."""
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return [f"{path}: keys {sorted(set(a) ^ set(b), key=str)}"]
        keys = [k for k in a if k not in ("train_time", "config", "python", "numpy")]
        return [d for k in keys for d in same_state(a[k], b[k], f"{path}.{k}")]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [f"{path}: lengths {len(a)} != {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in same_state(x, y, f"{path}[{i}]")]
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return [] if a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b) else [path]
    return [] if a == b or (a != a and b != b) else [path]


@dataclass
class KillReport:
    kills: int = 0
    during_writes: int = 0  # kills that left a temporary checkpoint file behind
    checked: int = 0  # checkpoint files verified after kills
    corrupt: int = 0
    resumes: int = 0
    failed_resumes: int = 0
    bit_exact: int = 0  # checked checkpoints equal to the uninterrupted run's at the same step
    final_exact: bool = False


def _check_folder(run: Path, reference: dict[int, dict], report: KillReport) -> None:
    from infogeom.errors import InfogeomError
    from infogeom.train.checkpoint import list_checkpoints

    for path in list_checkpoints(run):
        report.checked += 1
        try:
            obj = load_checkpoint(path)
        except InfogeomError:
            report.corrupt += 1
            continue
        report.bit_exact += not same_state(obj, reference[obj["step"]])


def _temp_files(run: Path) -> list[str]:
    folder = run / "checkpoints"
    return [n for n in os.listdir(folder) if n.endswith(".tmp")] if folder.is_dir() else []


def _lock_pid(run: Path) -> str:
    try:
        return (run / ".lock").read_text().strip()
    except OSError:
        return ""


def kill_chain(server: ForkServer, run: Path, sets: list[str], reference: dict[int, dict], kills: int,
               targeted: int, duration: float, seed: int) -> KillReport:
    """Train into ``run``, kill -9 it ``kills`` times at random moments (``targeted`` of them the moment a
    process is in a checkpoint write: after the temporary file, before the rename), resuming each time; then
    let it finish."""
    rng, report = random.Random(seed), KillReport()
    err = run.parent / f"{run.name}.stderr"
    plan = ["write"] * targeted + ["random"] * (kills - targeted)
    rng.shuffle(plan)
    attempts = 0
    while plan and attempts < 4 * kills:
        attempts += 1
        argv = ["train", "--out", run, *sets] + (["--resume", "latest"] if run.exists() else [])
        old_temps = set(_temp_files(run))
        pid = server.start(argv, err, run.parent, kill_at_write=rng.randint(1, 6) if plan[0] == "write" else 0)
        if plan[0] == "random":
            deadline = time.monotonic() + 5 + 5 * duration  # moments count from the folder's take-over (lock)
            while time.monotonic() < deadline and _lock_pid(run) != str(pid):
                time.sleep(0.001)
            time.sleep(rng.uniform(0.0, duration))
            os.kill(pid, signal.SIGKILL)
        rc = server.wait(pid)
        report.resumes += "--resume" in argv
        if rc != -signal.SIGKILL:  # finished (or failed) before the kill landed
            report.failed_resumes += rc != 0
            if rc == 0:  # the run completed before the kill: start it over (its checks are done)
                _check_folder(run, reference, report)
                shutil.rmtree(run)
            continue
        report.kills += 1
        plan.pop(0)
        report.during_writes += bool(set(_temp_files(run)) - old_temps)
        _check_folder(run, reference, report)
    pid = server.start(["train", "--out", run, *sets, "--resume", "latest"], err, run.parent)
    rc = server.wait(pid)
    report.resumes += 1
    report.failed_resumes += rc != 0
    from infogeom.train.checkpoint import list_checkpoints

    final = list_checkpoints(run)
    report.final_exact = bool(final) and not same_state(load_checkpoint(final[-1]), reference[max(reference)])
    _check_folder(run, reference, report)
    return report


class PoisonGradient(Callback):
    """Makes the gradient of the first parameter NaN in step ``at``; records the weights around it."""

    def __init__(self, at: int):
        self.at, self.before, self.after = at, None, None

    def on_step_end(self, trainer, metrics):
        params = list(trainer.model.parameters())
        if trainer.step == self.at - 1:
            self.before = [p.detach().clone() for p in params]
            handle = {}
            handle["h"] = params[0].register_hook(lambda g: (handle["h"].remove(), g * math.nan)[1])
        elif trainer.step == self.at:
            self.after = [p.detach().clone() for p in params]


class BlowUpLearningRate(Callback):
    def __init__(self, at: int):
        self.at = at

    def on_step_end(self, trainer, metrics):
        if trainer.step == self.at:
            trainer.scheduler.base_lrs = [lr * 1e30 for lr in trainer.scheduler.base_lrs]
