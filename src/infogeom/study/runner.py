"""Run a plan: submit every to-do cell whose needs are done, as workers free up, with progress bars and ETA.

A cell that fails (its run function raised, or its worker died more often than the retries allow) is recorded
with its error; the cells that need it are skipped; everything else still runs. An interrupt stops the workers at
once: finished cells are kept, unfinished ones rerun (from their checkpoints) next time.
"""

from __future__ import annotations

from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from .cache import CellStore
from .plan import Plan, PlannedCell


@dataclass
class RunSummary:
    ran: list[str] = field(default_factory=list)  # labels of the cells computed in this run
    failed: dict[str, str] = field(default_factory=dict)  # label -> one-line error
    skipped: dict[str, str] = field(default_factory=dict)  # label -> the failed cell it needed


class Progress:
    """One bar overall and one per experiment, in estimated seconds of work (so tqdm's rate gives the ETA)."""

    def __init__(self, plan: Plan, enabled: bool = True):
        todo = plan.todo()
        ids = [e for e in plan.experiments if any(pc.cell.experiment == e for pc in todo)]
        fmt = "{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}]{postfix}"
        self.bars = {None: tqdm(total=sum(pc.est for pc in todo) or 1, desc="study", bar_format=fmt,
                                dynamic_ncols=True, disable=not enabled, position=0)}
        self.counts = {None: [0, len(todo)]}
        for i, e in enumerate(ids, 1):
            cells = [pc for pc in todo if pc.cell.experiment == e]
            self.bars[e] = tqdm(total=sum(pc.est for pc in cells) or 1, desc=f"  {e}", bar_format=fmt,
                                dynamic_ncols=True, disable=not enabled, position=i, leave=True)
            self.counts[e] = [0, len(cells)]
        for k in self.bars:
            self._postfix(k)

    def _postfix(self, k) -> None:
        done, total = self.counts[k]
        self.bars[k].set_postfix_str(f"{done}/{total} cells", refresh=True)

    def advance(self, pc: PlannedCell) -> None:
        for k in (None, pc.cell.experiment):
            self.counts[k][0] += 1
            self.bars[k].update(pc.est)
            self._postfix(k)

    def close(self) -> None:
        for bar in reversed(list(self.bars.values())):
            bar.close()


def job_of(plan: Plan, pc: PlannedCell, out: Path) -> dict:
    """The picklable description of ``pc`` that executors ship to a worker."""
    return {"out": str(out), "key": pc.key, "seed": pc.seed, "cell": {**asdict(pc.cell), "needs": list(pc.cell.needs)},
            "inputs": {n.cell.name: n.key for n in plan.needs(pc)}}


def _reason(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None) or exc  # Ray wraps the task's exception
    text = (str(cause).strip().splitlines() or [""])[0][:300]
    return text if type(cause).__name__ == "CellFailed" else f"{type(cause).__name__}: {text}"


def run_plan(plan: Plan, executor, out: Path, progress: bool = True) -> RunSummary:
    """Run the plan's to-do cells on ``executor``; update each cell's status; return what happened."""
    store, summary = CellStore(out), RunSummary()
    pending = plan.todo()
    running: dict[Future, PlannedCell] = {}
    bars = Progress(plan, progress)
    try:
        while pending or running:
            before = len(pending)
            for pc in list(pending):
                needs = plan.needs(pc)
                bad = [n.label for n in needs if n.label in summary.failed or n.label in summary.skipped]
                if bad:
                    summary.skipped[pc.label] = bad[0]
                    pending.remove(pc)
                elif all(store.done(n.key) for n in needs):
                    running[executor.submit(job_of(plan, pc, out))] = pc
                    pending.remove(pc)
            if not running:
                if len(pending) == before:  # nothing can start (a needed cell vanished from the cache)
                    summary.skipped.update({pc.label: "a needed cell that is not done" for pc in pending})
                    pending.clear()
                continue
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for f in finished:
                pc = running.pop(f)
                exc = f.exception()
                if exc is None and store.done(pc.key):
                    pc.status = "done"
                    if not f.result()["cached"]:
                        summary.ran.append(pc.label)
                else:
                    summary.failed[pc.label] = _reason(exc) if exc else "no result.json after the run"
                bars.advance(pc)
    except BaseException:
        executor.close(cancel=True)
        raise
    finally:
        bars.close()
    executor.close()
    return summary
