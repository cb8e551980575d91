"""A synthetic study experiment for the engine's tests (registered as ``X1`` through ``INFOGEOM_STUDY_EXPERIMENTS``).

Cells: ``value/r{i}`` (a seeded number, after ``sleep`` seconds; ``fail`` names one that raises), ``train`` (a
resumable "training" loop that checkpoints every step in its folder and, with ``crash_at``, kills its own process
once at that step) and ``sum`` (reads the ``value`` cells through ``needs``). Every start of a cell is appended to
``$STUDY_SYNTH_LOG``; ``$STUDY_SYNTH_SLEEP``, ``$STUDY_SYNTH_CRASH_AT`` and ``$STUDY_SYNTH_FAIL`` set plan options.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch

from infogeom.study import Cell, Claim, Experiment, Section


def _log(name: str) -> None:
    if os.environ.get("STUDY_SYNTH_LOG"):
        with open(os.environ["STUDY_SYNTH_LOG"], "a") as f:
            f.write(f"{name} {os.getpid()}\n")


def run_value(params: dict, seed: int, workdir: Path, inputs: dict) -> dict:
    _log(params["name"])
    time.sleep(params.get("sleep", 0.0))
    if params.get("fail"):
        raise ValueError("this cell fails on purpose")
    g = torch.Generator().manual_seed(seed)
    return {"value": float(torch.randn(params["n"], generator=g, dtype=torch.float64).sum()), "seed": seed,
            "threads": torch.get_num_threads()}


def run_train(params: dict, seed: int, workdir: Path, inputs: dict) -> dict:
    """x_{k+1} = x_k / 2 + 1 from x_0 = seed mod 7, one checkpoint per step; resumes from the last one."""
    _log(params["name"])
    ckpt = workdir / "ckpt.json"
    state = json.loads(ckpt.read_text()) if ckpt.exists() else {"step": 0, "x": float(seed % 7)}
    resumed_from = state["step"]
    while state["step"] < params["steps"]:
        if state["step"] == params.get("crash_at") and not (workdir / "crashed").exists():
            (workdir / "crashed").write_text("1")
            os._exit(3)  # the worker process dies mid-run, as under kill -9 or the OOM killer
        state = {"step": state["step"] + 1, "x": state["x"] / 2 + 1}
        tmp = workdir / "ckpt.json.tmp"
        tmp.write_text(json.dumps(state))
        os.replace(tmp, ckpt)
    return {"x": state["x"], "resumed_from": resumed_from, "pid": os.getpid()}


def run_sum(params: dict, seed: int, workdir: Path, inputs: dict) -> dict:
    _log(params["name"])
    assert all(Path(v["dir"]).is_dir() for v in inputs.values())
    return {"total": sum(v["result"]["value"] for v in inputs.values()), "inputs": sorted(inputs)}


def plan(profile: str, eid: str = "X1", n_values: int | None = None, sleep: float = 0.0, crash_at=None,
         fail: str | None = None) -> list[Cell]:
    n = n_values if n_values is not None else (4 if profile == "quick" else 6)
    sleep = float(os.environ.get("STUDY_SYNTH_SLEEP", sleep))
    crash_at = os.environ.get("STUDY_SYNTH_CRASH_AT", crash_at)
    fail = os.environ.get("STUDY_SYNTH_FAIL", fail)
    values = [Cell(eid, f"value/r{i}", "study_synthetic:run_value",
                   {"name": f"value/r{i}", "n": 5, "sleep": sleep, "fail": fail == f"value/r{i}"},
                   replicate=i, priority=0 if i < 2 else 1, est_seconds=2.0 + sleep) for i in range(n)]
    train = Cell(eid, "train", "study_synthetic:run_train",
                 {"name": "train", "steps": 6, "crash_at": None if crash_at is None else int(crash_at)},
                 priority=2, est_seconds=3.0)
    total = Cell(eid, "sum", "study_synthetic:run_sum", {"name": "sum"}, needs=tuple(c.name for c in values),
                 est_seconds=1.0)
    return [*values, train, total]


def analyze(results: list[tuple[Cell, dict]], figdir: Path) -> Section:
    from matplotlib.figure import Figure

    values = [r["value"] for c, r in results if c.name.startswith("value/")]
    figdir.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(4, 3))
    ax = fig.add_subplot()
    ax.plot(range(len(values)), values, "o-")
    ax.set_xlabel("replicate")
    ax.set_ylabel("value (a.u.)")
    fig.savefig(figdir / "x1_values.png", dpi=80)
    mean = sum(values) / max(1, len(values))
    claim = Claim("X1.a", "values are finite", "consistent" if values else "inconclusive", f"{mean:.3f} [n/a]",
                  "finite <values> & such", "Nobody 2024", "consistent if every value is finite")
    return Section("X1", "Synthetic", [claim], [("x1_values.png", "values by replicate")],
                   [("values", ["cell", "value"], [[c.name, f"{r['value']:.3f}"] for c, r in results
                                                   if c.name.startswith("value/")])],
                   {"mean": mean, "n": len(values)}, text="A synthetic experiment.\n\nSecond paragraph <b>.")


EXPERIMENT = Experiment("X1", "Synthetic experiment", "values are finite", plan, analyze)
