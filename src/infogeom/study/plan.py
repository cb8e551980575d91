"""The study's plan: every cell of the chosen experiments with its hash, seed, scaled cost and status, and the
budget cut (``--budget-minutes`` drops the least important cells, and every cell that needs them, until the
estimated wall time fits)."""

from __future__ import annotations

from dataclasses import dataclass, field

from .. import __version__
from ..data.cache import sha256_hex
from ..errors import InfogeomError
from .cache import CellStore
from .spec import Cell, Experiment, canonical_json

PROFILES = ("quick", "full")
#: fixed cost of a run besides its cells (starting workers, analysis, report), seconds on the reference machine
OVERHEAD_SECONDS = 30.0


@dataclass
class PlannedCell:
    """A cell with its cache key, its seed, its estimated cost here (seconds) and its status."""

    cell: Cell
    key: str
    seed: int
    est: float
    status: str = "todo"  # "done" | "todo" | "dropped"

    @property
    def label(self) -> str:
        return f"{self.cell.experiment}/{self.cell.name}"


@dataclass
class Plan:
    profile: str
    seed: int
    jobs: int
    slowdown: float  # this machine's time / the reference machine's time for the same work
    experiments: dict[str, Experiment]
    cells: list[PlannedCell] = field(default_factory=list)
    budget_minutes: float | None = None
    model: dict | None = None  # --model hf:PATH (infogeom.study.model.study_model), None: the char GPTs
    skipped: dict[str, str] = field(default_factory=dict)  # experiment id -> why it was left out (--model)

    def of(self, experiment: str) -> list[PlannedCell]:
        return [pc for pc in self.cells if pc.cell.experiment == experiment]

    def todo(self) -> list[PlannedCell]:
        return [pc for pc in self.cells if pc.status == "todo"]

    def dropped(self) -> list[PlannedCell]:
        return [pc for pc in self.cells if pc.status == "dropped"]

    def needs(self, pc: PlannedCell) -> list[PlannedCell]:
        """The planned cells ``pc`` reads (same experiment)."""
        by_name = {p.cell.name: p for p in self.of(pc.cell.experiment)}
        return [by_name[n] for n in pc.cell.needs]

    def estimate_seconds(self, cells: list[PlannedCell] | None = None) -> float:
        """Wall-time estimate of running ``cells`` (default: all to do) on ``jobs`` workers, plus the overhead."""
        cells = self.todo() if cells is None else cells
        return sum(pc.est for pc in cells) / max(1, min(self.jobs, len(cells) or 1)) + OVERHEAD_SECONDS * self.slowdown

    def longest_chain_seconds(self, experiment: str) -> float:
        """The largest summed estimate along a chain of to-do cells of ``experiment`` linked by ``needs``: a wall-time
        floor however many jobs run (done cells cost nothing)."""
        cells = {pc.cell.name: pc for pc in self.of(experiment)}
        memo: dict[str, float] = {}

        def finish(name: str) -> float:
            if name not in memo:
                pc = cells[name]
                memo[name] = (pc.est if pc.status == "todo" else 0.0) + max(
                    (finish(n) for n in pc.cell.needs), default=0.0)
            return memo[name]

        return max((finish(n) for n, pc in cells.items() if pc.status == "todo"), default=0.0)

    def to_json(self) -> dict:
        return {
            "profile": self.profile, "seed": self.seed, "jobs": self.jobs, "slowdown": self.slowdown,
            "budget_minutes": self.budget_minutes, "version": __version__, "model": self.model,
            "skipped_experiments": self.skipped,
            "estimated_seconds": self.estimate_seconds(),
            "cells": [{
                "experiment": pc.cell.experiment, "name": pc.cell.name, "hash": pc.key, "seed": pc.seed,
                "fn": pc.cell.fn, "params": pc.cell.params, "replicate": pc.cell.replicate,
                "priority": pc.cell.priority, "est_seconds_reference": pc.cell.est_seconds, "est_seconds": pc.est,
                "needs": list(pc.cell.needs), "num_cpus": pc.cell.num_cpus, "num_gpus": pc.cell.num_gpus,
                "status": pc.status,
            } for pc in self.cells],
        }


def select(registry: dict[str, Experiment], only: str | None) -> dict[str, Experiment]:
    """The experiments named in ``--only E1,E3`` (all if ``None``); an unknown name is an :class:`InfogeomError`."""
    if not registry:
        raise InfogeomError("no experiments are registered")
    if only is None:
        return dict(registry)
    names = [s.strip() for s in only.split(",") if s.strip()]
    unknown = [n for n in names if n not in registry]
    if unknown or not names:
        raise InfogeomError(f"unknown experiment {', '.join(unknown) or repr(only)} in --only "
                            f"(known: {', '.join(registry)})")
    return {n: registry[n] for n in registry if n in names}


def for_model(experiments: dict[str, Experiment], model: dict | None, explicit: bool
               ) -> tuple[dict[str, Experiment], dict[str, str]]:
    """(experiments that run, {id: why skipped}) for ``--model``: an experiment without ``on_model`` (a size ladder,
    quantum circuits) is skipped, or, when the user named it in ``--only`` (``explicit``), an error."""
    if model is None:
        return dict(experiments), {}
    skipped = {eid: exp.model_note or "cannot run on another model" for eid, exp in experiments.items()
               if exp.on_model is None}
    if explicit and skipped:
        eid, why = next(iter(skipped.items()))
        raise InfogeomError(f"experiment {eid} cannot run with --model ({why}); leave it out of --only")
    return {eid: exp for eid, exp in experiments.items() if eid not in skipped}, skipped


def _check(exp: Experiment, cells: list[Cell]) -> None:
    names = [c.name for c in cells]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise InfogeomError(f"experiment {exp.id}: duplicate cell names {', '.join(dup)}")
    known = set(names)
    for c in cells:
        if c.experiment != exp.id:
            raise InfogeomError(f"experiment {exp.id}: cell {c.name} says experiment {c.experiment!r}")
        missing = [n for n in c.needs if n not in known]
        if missing:
            raise InfogeomError(f"experiment {exp.id}: cell {c.name} needs unknown cell(s) {', '.join(missing)}")
    state: dict[str, int] = {}  # 1 = on the current path, 2 = checked
    by_name = {c.name: c for c in cells}

    def visit(name: str) -> None:
        if state.get(name) == 1:
            raise InfogeomError(f"experiment {exp.id}: cells depend on each other in a cycle through {name}")
        if state.get(name) != 2:
            state[name] = 1
            for n in by_name[name].needs:
                visit(n)
            state[name] = 2

    for n in names:
        visit(n)


def _keys(cells: list[Cell], seed: int) -> dict[str, str]:
    """Each cell's cache key; a cell that needs others hashes their keys too, so it is recomputed when they change."""
    by_name, keys = {c.name: c for c in cells}, {}

    def key(name: str) -> str:
        if name not in keys:
            c = by_name[name]
            inputs = sha256_hex(canonical_json({n: key(n) for n in c.needs})) if c.needs else ""
            keys[name] = c.key(__version__, data_hash=inputs, study_seed=seed)
        return keys[name]

    for c in cells:
        key(c.name)
    return keys


def make_plan(experiments: dict[str, Experiment], profile: str, seed: int, jobs: int, slowdown: float,
              store: CellStore, budget_minutes: float | None = None, model: dict | None = None,
              skipped: dict[str, str] | None = None) -> Plan:
    """Plan every cell of ``experiments`` for ``profile`` (on ``model``, :func:`for_model`'s experiments, their
    ``on_model`` applied; ``skipped`` is recorded for the report); mark cached cells done; apply the budget."""
    if profile not in PROFILES:
        raise InfogeomError(f"unknown profile {profile!r} (known: {', '.join(PROFILES)})")
    plan = Plan(profile, seed, jobs, slowdown, experiments, budget_minutes=budget_minutes, model=model,
                skipped=dict(skipped or {}))
    for exp in experiments.values():
        cells = list(exp.plan(profile))
        if model is not None:
            if exp.on_model is None:
                raise InfogeomError(f"experiment {exp.id} cannot run with --model ({exp.model_note or 'no on_model'})")
            cells = list(exp.on_model(cells, model))
        _check(exp, cells)
        keys = _keys(cells, seed)
        for c in cells:
            plan.cells.append(PlannedCell(c, keys[c.name], c.seed(seed), c.est_seconds * slowdown,
                                          "done" if store.done(keys[c.name]) else "todo"))
    if budget_minutes is not None:
        apply_budget(plan, budget_minutes * 60.0)
    return plan


def apply_budget(plan: Plan, seconds: float) -> None:
    """Drop to-do cells, highest ``priority`` number first (later cells first among equals), with every to-do cell
    that needs them, until :meth:`Plan.estimate_seconds` fits in ``seconds``."""
    while plan.todo() and plan.estimate_seconds() > seconds:
        todo = plan.todo()
        victim = max(reversed(todo), key=lambda pc: pc.cell.priority)
        doomed = {id(victim)}
        changed = True
        while changed:  # every to-do cell that (transitively) needs a dropped one goes too
            changed = False
            for pc in todo:
                if id(pc) not in doomed and any(id(n) in doomed for n in plan.needs(pc)):
                    doomed.add(id(pc))
                    changed = True
        for pc in todo:
            if id(pc) in doomed:
                pc.status = "dropped"
