"""The study's report, rebuilt from the cached results alone.

- ``OUT/report/index.html``: static HTML, no JavaScript: the claims table (verdict badge, measured ± CI, the
  literature's prediction with its citation, the pre-registered rule), then one section per experiment (text,
  figures from ``OUT/report/figures/``, tables, the cells behind it with hashes and seeds), then the dropped cells.
  ``self_contained`` inlines the PNGs as base64 so the one file can be mailed.
- ``OUT/results.json``: every number (sections' ``numbers`` and every cell's result) with cell hashes, seeds,
  git commit, package versions, CPU, load and per-cell wall/CPU time; ``OUT/results.csv``: the same, flat
  (experiment, cell, hash, seed, key, value); ``OUT/plan.json``: the plan.

An experiment whose ``analyze`` raises gets its error in its section; the other sections still render.
"""

from __future__ import annotations

import base64
import csv
import html
import importlib.metadata
import io
import os
import platform
import subprocess
import traceback
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from .. import __version__
from ..data.cache import atomic_write
from .cache import CellStore, write_json
from .plan import Plan, PlannedCell
from .runner import RunSummary
from .spec import Section

PACKAGES = ("infogeom", "torch", "numpy", "scipy", "matplotlib", "tqdm", "ray")
BADGE = {"consistent": "#1a7f37", "inconsistent": "#cf222e", "inconclusive": "#9a6700"}


@dataclass
class Part:
    """One experiment's analysis: its section, or the error its ``analyze`` raised."""

    experiment: str
    title: str
    cells: list[PlannedCell]
    section: Section | None
    error: str | None


def git_commit() -> str:
    """The commit of the infogeom source tree (``+dirty`` if modified), or ``"unknown"`` outside a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+dirty" if dirty else "") if head else "unknown"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def environment() -> dict:
    """Where and with what the report was made."""
    versions = {}
    for p in PACKAGES:
        try:
            versions[p] = importlib.metadata.version(p)
        except importlib.metadata.PackageNotFoundError:
            versions[p] = "not installed"
    versions["infogeom"] = __version__
    return {"commit": git_commit(), "python": platform.python_version(), "packages": versions,
            "platform": platform.platform(), "cpu": _cpu_model(), "cpu_count": os.cpu_count(),
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def analyze(plan: Plan, store: CellStore, figdir: Path) -> list[Part]:
    """Each experiment's section from its done cells' results (errors of ``analyze`` are caught and kept)."""
    parts = []
    for eid, exp in plan.experiments.items():
        cells = plan.of(eid)
        results = [(pc.cell, store.result(pc.key, pc.label)) for pc in cells if store.done(pc.key)]
        try:
            section, error = exp.analyze(results, figdir), None
            if not isinstance(section, Section):
                raise TypeError(f"analyze returned {type(section).__name__}, not a Section")
        except Exception:
            section, error = None, traceback.format_exc()
        parts.append(Part(eid, exp.title, cells, section, error))
    return parts


def _flat(prefix: str, value, rows: list) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flat(f"{prefix}.{k}" if prefix else str(k), v, rows)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _flat(f"{prefix}.{i}", v, rows)
    else:
        rows.append((prefix, value))


def _cell_record(pc: PlannedCell, store: CellStore, summary: RunSummary | None) -> dict:
    info = store.info(pc.key) if store.done(pc.key) else {}
    status = "done" if store.done(pc.key) else pc.status
    if summary and pc.label in summary.failed:
        status = "failed"
    elif summary and pc.label in summary.skipped:
        status = "skipped"
    return {"experiment": pc.cell.experiment, "name": pc.cell.name, "hash": pc.key, "seed": pc.seed,
            "replicate": pc.cell.replicate, "params": pc.cell.params, "status": status,
            "error": (summary.failed.get(pc.label) if summary else None) or store.error(pc.key),
            "wall_s": info.get("wall_s"), "cpu_s": info.get("cpu_s"), "started": info.get("started"),
            "finished": info.get("finished"), "host": info.get("host"),
            "result": store.result(pc.key, pc.label) if status == "done" else None}


def write_results(out: Path, plan: Plan, parts: list[Part], cells: list[dict], env: dict) -> None:
    """``results.json`` (everything, with provenance) and ``results.csv`` (flat)."""
    experiments = {}
    for part in parts:
        s = part.section
        experiments[part.experiment] = {
            "title": part.title, "error": part.error,
            "claims": [asdict(c) for c in s.claims] if s else [], "numbers": s.numbers if s else {},
            "cells": [{"name": pc.cell.name, "hash": pc.key, "seed": pc.seed} for pc in part.cells]}
    write_json(out / "results.json", {"study": {"profile": plan.profile, "seed": plan.seed, "version": __version__,
                                                "slowdown": plan.slowdown, "jobs": plan.jobs,
                                                "budget_minutes": plan.budget_minutes, "model": plan.model,
                                                "skipped_experiments": plan.skipped},
                                      "environment": env, "experiments": experiments, "cells": cells})
    rows: list[tuple] = []
    for eid, e in experiments.items():
        flat: list = []
        _flat("", e["numbers"], flat)
        rows += [(eid, "", "", "", k, v) for k, v in flat]
    for c in cells:
        flat = []
        _flat("", {"result": c["result"], "wall_s": c["wall_s"], "cpu_s": c["cpu_s"]}, flat)
        rows += [(c["experiment"], c["name"], c["hash"], c["seed"], k, v) for k, v in flat if v is not None]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["experiment", "cell", "hash", "seed", "key", "value"])
    writer.writerows(rows)
    atomic_write(out / "results.csv", lambda f: f.write(buf.getvalue().encode()))


CSS = """
body{font-family:system-ui,sans-serif;max-width:72rem;margin:2rem auto;padding:0 1rem;color:#1f2328;line-height:1.45}
table{border-collapse:collapse;margin:1rem 0;font-size:.92rem}th,td{border:1px solid #d0d7de;padding:.3rem .5rem;
text-align:left;vertical-align:top}th{background:#f6f8fa}.badge{color:#fff;border-radius:.8rem;padding:.1rem .6rem;
font-weight:600;white-space:nowrap}figure{margin:1rem 0}figure img{max-width:100%;height:auto;border:1px solid #d0d7de}
pre{background:#fff0f0;border:1px solid #cf222e;padding:.5rem;overflow-x:auto;white-space:pre-wrap}
code,.mono{font-family:ui-monospace,monospace;font-size:.85rem}.muted{color:#59636e}
"""


def _e(x) -> str:
    return html.escape(str(x))


def _table(header: list[str], rows: list[list], raw: bool = False) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c if raw else _e(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _badge(verdict: str) -> str:
    return f'<span class="badge" style="background:{BADGE.get(verdict, "#59636e")}">{_e(verdict)}</span>'


def _image(figdir: Path, name: str, self_contained: bool) -> str | None:
    path = figdir / name
    if not path.is_file():
        return None
    if self_contained:
        return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()
    return _e(os.path.relpath(path, figdir.parent))


def _model_part(plan: Plan) -> list[str]:
    """The report's lines on ``--model``: which checkpoint the language-model cells ran on, what was skipped."""
    if not plan.model:
        return ["<p>Model: the study's own char-level GPT ladder (no <code>--model</code>).</p>"]
    from .model import model_label

    out = [f"<p>Model: the language-model cells ran on <code>{_e(model_label(plan.model))}</code> and its "
           f"tokenizer (sha256 of the folder <code>{_e(plan.model['sha256'])}</code>).</p>"]
    if plan.skipped:
        out.append("<p>Skipped with <code>--model</code>: " + "; ".join(
            f"{_e(eid)} ({_e(why)})" for eid, why in plan.skipped.items()) + ".</p>")
    return out


def render_html(plan: Plan, parts: list[Part], cells: list[dict], env: dict, figdir: Path,
                self_contained: bool = False) -> str:
    """The report page (a string of static HTML)."""
    status = {(c["experiment"], c["name"]): c for c in cells}
    claims = [[_e(c.id), _badge(c.verdict), _e(c.text), f"<span class=mono>{_e(c.measured)}</span>",
               f"{_e(c.prediction)} <span class=muted>({_e(c.citation)})</span>", _e(c.rule)]
              for p in parts if p.section for c in p.section.claims]
    done = sum(c["status"] == "done" for c in cells)
    out = [f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>infogeom study</title>"
           f"<style>{CSS}</style></head><body>",
           "<h1>infogeom study: the claims of arXiv 2506.15830 as pre-registered experiments</h1>",
           f"<p class=muted>profile {_e(plan.profile)}, seed {plan.seed}, {done} of {len(cells)} cells done; "
           f"infogeom {_e(__version__)}, commit <code>{_e(env['commit'])}</code>, torch "
           f"{_e(env['packages']['torch'])}; {_e(env['cpu'])} × {env['cpu_count']}; made {_e(env['created'])}</p>",
           *_model_part(plan),
           "<h2 id=claims>Claims</h2>",
           _table(["claim", "verdict", "statement", "measured (95% CI)", "prediction (citation)", "rule"], claims,
                  raw=True) if claims else "<p>No claim has a verdict yet.</p>"]
    for p in parts:
        out.append(f"<h2 id={_e(p.experiment)}>{_e(p.experiment)}: {_e(p.title)}</h2>")
        s = p.section
        note = plan.experiments[p.experiment].model_note if plan.model else ""
        if note:
            out.append(f"<p><b>On the model:</b> {_e(note)}.</p>")
        if p.error:
            out.append(f"<p>The analysis of {_e(p.experiment)} failed:</p><pre>{_e(p.error)}</pre>")
        if s:
            out += [f"<p>{_e(par.strip())}</p>" for par in s.text.split("\n\n") if par.strip()]
            for name, caption in s.figures:
                src = _image(figdir, name, self_contained)
                out.append(f'<figure><img src="{src}" alt="{_e(caption)}"><figcaption>{_e(caption)}</figcaption>'
                           f"</figure>" if src else f"<p class=muted>figure {_e(name)} is missing ({_e(caption)})</p>")
            for caption, header, rows in s.tables:
                out.append(f"<h3>{_e(caption)}</h3>{_table(header, rows)}")
        rows = []
        for pc in p.cells:
            c = status[(pc.cell.experiment, pc.cell.name)]
            wall = f"{c['wall_s']:.1f}" if c["wall_s"] is not None else ""
            rows.append([pc.cell.name, f'<span class=mono title="{pc.key}">{pc.key[:12]}</span>', pc.seed,
                         _e(c["status"]) + (f": {_e(c['error'])}" if c["error"] else ""), wall])
        out.append(f"<details><summary>{len(p.cells)} cells behind {_e(p.experiment)}</summary>"
                   + _table(["cell", "hash", "seed", "status", "wall s"],
                            [[_e(r[0]), r[1], r[2], r[3], r[4]] for r in rows], raw=True) + "</details>")
    dropped = plan.dropped()
    out.append("<h2 id=dropped>Dropped cells</h2>")
    out.append(_table(["experiment", "cell", "priority", "estimated s"],
                      [[pc.cell.experiment, pc.cell.name, pc.cell.priority, f"{pc.est:.0f}"] for pc in dropped])
               if dropped else f"<p>None{' (no budget)' if plan.budget_minutes is None else ''}.</p>")
    out.append("<p class=muted>Every number, with its cell hash and seed: <a href=../results.json>results.json</a>, "
               "<a href=../results.csv>results.csv</a>; the plan: <a href=../plan.json>plan.json</a>.</p>")
    out.append("</body></html>")
    return "\n".join(out)


def build_report(plan: Plan, out: Path, summary: RunSummary | None = None, self_contained: bool = False) -> Path:
    """Analyze the cached results and write the report, ``results.json``/``.csv`` and ``plan.json``."""
    out = Path(out)
    store, figdir = CellStore(out), out / "report" / "figures"
    figdir.mkdir(parents=True, exist_ok=True)
    parts = analyze(plan, store, figdir)
    cells = [_cell_record(pc, store, summary) for pc in plan.cells]
    env = environment()
    write_json(out / "plan.json", plan.to_json())
    write_results(out, plan, parts, cells, env)
    page = render_html(plan, parts, cells, env, figdir, self_contained).encode()
    index = out / "report" / "index.html"
    atomic_write(index, lambda f: f.write(page))
    return index
