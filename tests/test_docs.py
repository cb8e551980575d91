"""Every documented snippet runs: the python and bash blocks of README.md and docs/*.md are executed in order,
one document at a time, in a fresh working directory (python blocks of a document share one namespace, as a
reader typing them into one session would; bash blocks see ``infogeom`` and ``python`` of this checkout).

Markers, on the line before a block's opening fence:

- ``<!-- skip-test: REASON -->`` — not executed (only for blocks that need a GPU, the network beyond the
  corpora, or a long run; the reason is required);
- ``<!-- file: NAME -->`` — the block (any language) is written to NAME in the working directory, so later
  blocks can use it (e.g. a TOML config).
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]
RUNNABLE = {"python": "python", "bash": "bash", "sh": "bash", "shell": "bash"}
FENCE = re.compile(r"^```(\S*)\s*$")
MARKER = re.compile(r"^<!--\s*(skip-test|file):\s*(.*?)\s*-->\s*$")


@dataclass
class Block:
    language: str
    code: str
    line: int  # 1-based line of the opening fence
    skip: str | None = None
    file: str | None = None


def parse_blocks(text: str) -> list[Block]:
    """Fenced blocks with their language and the marker on the line before the opening fence."""
    lines, blocks, i = text.splitlines(), [], 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        block = Block(match.group(1).lower(), "\n".join(lines[i + 1 : end]) + "\n", i + 1)
        marker = MARKER.match(lines[i - 1]) if i else None
        if marker:
            kind, value = marker.groups()
            if kind == "skip-test":
                block.skip = value
            else:
                block.file = value
        blocks.append(block)
        i = end + 1
    return blocks


def _environment(bin_dir: Path) -> dict:
    """PATH with ``infogeom`` and ``python`` of this interpreter and checkout first."""
    bin_dir.mkdir(exist_ok=True)
    scripts = {"infogeom": f'exec "{sys.executable}" -m infogeom "$@"', "python": f'exec "{sys.executable}" "$@"'}
    for name, body in scripts.items():
        script = bin_dir / name
        script.write_text(f"#!/bin/sh\n{body}\n")
        script.chmod(script.stat().st_mode | stat.S_IEXEC)
    env = dict(os.environ)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["MPLBACKEND"] = "Agg"
    env.setdefault("OMP_NUM_THREADS", "1")  # one intra-op thread per test worker, as in conftest.py
    return env


def run_document(name: str, text: str, workdir: Path) -> list[tuple[Block, dict]]:
    """Execute the runnable, unmarked blocks of ``text`` in ``workdir``; returns each python block with a
    shallow copy of the shared namespace right after it (later blocks may rebind names)."""
    env = _environment(workdir / ".bin")
    namespace: dict = {"__name__": "__docs__"}
    after: list[tuple[Block, dict]] = []
    previous = Path.cwd()
    os.chdir(workdir)
    try:
        for block in parse_blocks(text):
            where = f"{name}:{block.line}"
            if block.file:
                (workdir / block.file).write_text(block.code)
            elif block.skip is not None or block.language not in RUNNABLE:
                continue
            elif RUNNABLE[block.language] == "python":
                exec(compile(block.code, where, "exec"), namespace)
                after.append((block, dict(namespace)))
            else:
                proc = subprocess.run(["bash", "-euo", "pipefail", "-c", block.code], env=env, cwd=workdir,
                                      capture_output=True, text=True, timeout=900)
                assert proc.returncode == 0, f"{where} exited {proc.returncode}:\n{proc.stderr[-3000:]}"
    finally:
        os.chdir(previous)
    return after


def _after(blocks: list[tuple[Block, dict]], marker: str) -> dict:
    """The namespace right after the first python block containing ``marker``."""
    return next(ns for block, ns in blocks if marker in block.code)


def _check_readme(blocks: list[tuple[Block, dict]], workdir: Path) -> None:
    quickstart = _after(blocks, "eigsh(H, k=1)")
    lam, tr = quickstart["lam"], quickstart["tr"]
    assert lam.converged and float(lam.values[0]) > 0
    assert tr.value > 0 and tr.stderr < tr.value
    ekfac = _after(blocks, "EKFAC(")
    opt = ekfac["opt"]
    assert opt.core.steps == len(ekfac["batches"])
    assert all("exp_avg" in opt.state[layer.weight] for layer in opt.core.layers)
    run = workdir / "runs/curv-demo"
    assert (run / "loss.png").is_file() and (run / "curvature.png").is_file()
    report = json.loads((run / "curvature_monitor.json").read_text())
    assert report["measured"] >= 1 and report["overhead"] <= report["budget"] * 1.5  # within its budget (+ noise)


CHECKS = {"README.md": _check_readme}


@pytest.mark.parametrize("name", DOCUMENTS)
def test_documented_snippets_run(name, tmp_path):
    blocks = run_document(name, (ROOT / name).read_text(encoding="utf-8"), tmp_path)
    if name in CHECKS:
        CHECKS[name](blocks, tmp_path)


@pytest.mark.parametrize("name", DOCUMENTS)
def test_every_skip_has_a_reason_and_targets_a_runnable_block(name):
    blocks = parse_blocks((ROOT / name).read_text(encoding="utf-8"))
    for block in blocks:
        if block.skip is not None:
            assert block.skip, f"{name}:{block.line}: skip-test marker without a reason"
            assert block.language in RUNNABLE, f"{name}:{block.line}: skip-test on a {block.language!r} block"


def test_runner_fails_on_a_broken_block(tmp_path):
    """The runner can fail: a python NameError and a failing shell command are reported."""
    with pytest.raises(NameError):
        run_document("x.md", "```python\nprint(undefined_name)\n```\n", tmp_path)
    with pytest.raises(AssertionError, match="x.md:1 exited"):
        run_document("x.md", "```bash\nfalse\n```\n", tmp_path)
    skipped = "<!-- skip-test: long -->\n```bash\nfalse\n```\n<!-- file: a.toml -->\n```toml\nx = 1\n```\n"
    run_document("x.md", skipped, tmp_path)
    assert (tmp_path / "a.toml").read_text() == "x = 1\n"
