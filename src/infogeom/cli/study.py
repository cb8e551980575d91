"""``infogeom study``: run the study's experiments (cached, resumable, in parallel) and write its report."""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import __version__
from ..errors import InfogeomError


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "study", help="the paper's claims as pre-registered experiments: run them, write one report",
        description="Plan every cell (one training or measurement run) of the chosen experiments, run the ones "
        "not yet cached in OUT/cells/<hash>/ on worker processes or Ray, and write OUT/report/index.html, "
        "OUT/results.json and OUT/results.csv. A killed study rerun with the same command redoes only the "
        "unfinished cells.")
    prof = p.add_mutually_exclusive_group()
    prof.add_argument("--quick", dest="profile", action="store_const", const="quick",
                      help="the quick profile: every experiment at small scale (default)")
    prof.add_argument("--full", dest="profile", action="store_const", const="full",
                      help="the full profile (reuses the quick profile's cells where they coincide)")
    p.set_defaults(profile="quick")
    p.add_argument("--only", metavar="E1,E3", help="comma-separated experiment ids to run (default: all)")
    p.add_argument("--model", metavar="hf:PATH",
                   help="run the cells that train or probe one language model on this local transformers "
                   "checkpoint and its tokenizer instead of the char GPTs (E1b, E2, E5 spectra); experiments that "
                   "cannot (E3's size ladder, E4's grid, E6's circuits) are skipped with a note, or an error "
                   "if --only names them; cells are keyed by the folder's content hash")
    p.add_argument("--out", type=Path, default=Path("study-out"), metavar="DIR",
                   help="output folder: cell cache, results and report (default: ./study-out)")
    p.add_argument("--jobs", type=int, default=2, metavar="N", help="cells run at once (default: 2)")
    p.add_argument("--executor", choices=("local", "ray"), default="local",
                   help="local: worker processes on this machine (default); ray: Ray tasks (pip install "
                   "'infogeom[ray]')")
    p.add_argument("--ray-address", metavar="HOST:PORT",
                   help="Ray cluster to use (default with --executor ray: start a local Ray instance)")
    p.add_argument("--retries", type=int, default=2, metavar="K",
                   help="times a cell whose worker process died is rerun, resuming from its folder (default: 2)")
    p.add_argument("--budget-minutes", type=float, metavar="M",
                   help="drop the lowest-priority cells until the estimated wall time fits in M minutes; the "
                   "report lists what was dropped")
    p.add_argument("--seed", type=int, default=0, help="study seed: every cell's seed derives from it (default: 0)")
    p.add_argument("--calibration-seconds", type=float, default=20.0, metavar="S",
                   help="length of the probe that measures this machine's speed to scale the estimates; 0 skips "
                   "it (default: 20; reused for an hour)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true",
                      help="print the plan with estimated minutes per experiment and in total; run nothing")
    mode.add_argument("--status", action="store_true", help="print done / running / failed / to do per experiment")
    mode.add_argument("--report-only", action="store_true", help="rebuild the report from the cached results")
    p.add_argument("--self-contained", action="store_true",
                   help="inline the figures in index.html (one file to share)")
    p.add_argument("--force", action="store_true",
                   help="use an --out folder that holds another study (other infogeom version or seed): its cells "
                   "are kept but not reused")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


def _print_plan(plan) -> None:
    from ..study.model import model_label

    print(f"plan: {plan.profile} profile, seed {plan.seed}, {plan.jobs} job(s), this machine {plan.slowdown:.2f}× "
          f"the reference time" + (f", budget {plan.budget_minutes:g} min" if plan.budget_minutes else ""))
    if plan.model:
        print(f"model: {model_label(plan.model)}")
    for eid, why in plan.skipped.items():
        print(f"  {eid:<4} skipped with --model: {why}")
    for eid, exp in plan.experiments.items():
        cells = plan.of(eid)
        todo = [pc for pc in cells if pc.status == "todo"]
        done = sum(pc.status == "done" for pc in cells)
        dropped = sum(pc.status == "dropped" for pc in cells)
        est = sum(pc.est for pc in todo) / max(1, min(plan.jobs, len(todo) or 1))
        print(f"  {eid:<4} {exp.title[:44]:<44} {len(cells):4d} cells: {done} done, {len(todo)} to do"
              + (f", {dropped} dropped" if dropped else "") + f"  ~{_minutes(est)}"
              + (f" (longest chain ~{_minutes(plan.longest_chain_seconds(eid))})" if todo else ""))
    print(f"  total (with workers and report): ~{_minutes(plan.estimate_seconds())}")
    dropped = plan.dropped()
    if dropped:
        print(f"dropped by the budget ({len(dropped)}): " + ", ".join(pc.label for pc in dropped))


def _print_status(plan, store) -> None:
    print(f"study in {store.root.parent} ({plan.profile} profile, seed {plan.seed}):")
    for eid in plan.experiments:
        counts = {"done": 0, "running": 0, "failed": 0, "to do": 0}
        for pc in plan.of(eid):
            if store.done(pc.key):
                counts["done"] += 1
            elif store.running(pc.key):
                counts["running"] += 1
            elif store.error(pc.key):
                counts["failed"] += 1
            else:
                counts["to do"] += 1
        print(f"  {eid:<4} " + ", ".join(f"{v} {k}" for k, v in counts.items()) + f" (of {sum(counts.values())})")


def run(args: argparse.Namespace) -> int:
    from ..study.cache import CellStore, open_study, read_manifest, write_json
    from ..study.calibrate import CALIBRATION, slowdown
    from ..study.executors import make_executor
    from ..study.experiments import experiments
    from ..study.model import study_model
    from ..study.plan import for_model, make_plan, select
    from ..study.report import build_report
    from ..study.runner import run_plan

    if args.jobs < 1:
        raise InfogeomError(f"--jobs must be at least 1, got {args.jobs}")
    if args.retries < 0:
        raise InfogeomError(f"--retries must be at least 0, got {args.retries}")
    if args.budget_minutes is not None and args.budget_minutes <= 0:
        raise InfogeomError(f"--budget-minutes must be positive, got {args.budget_minutes:g}")
    if args.ray_address and args.executor != "ray":
        raise InfogeomError("--ray-address needs --executor ray")
    model = study_model(args.model)
    chosen, skipped = for_model(select(experiments(), args.only), model, explicit=args.only is not None)
    out, store = args.out, CellStore(args.out)
    manifest = {"version": __version__, "seed": args.seed}
    if args.status or args.report_only or args.dry_run:
        old = read_manifest(out) if (out / "study.json").exists() else None
        if args.status or args.report_only:
            if old is None:
                raise InfogeomError(f"{out} holds no study (no study.json)")
            if {k: old.get(k) for k in manifest} != manifest:
                raise InfogeomError(f"{out} holds another study (version {old.get('version')!r}, seed "
                                    f"{old.get('seed')!r}); pass the same --seed, or another --out")
        speed = slowdown(args.calibration_seconds, out / CALIBRATION if old else None)[0] if args.dry_run else 1.0
        plan = make_plan(chosen, args.profile, args.seed, args.jobs, speed, store,
                         args.budget_minutes if args.dry_run else None, model, skipped)
        if args.dry_run:
            _print_plan(plan)
        elif args.status:
            _print_status(plan, store)
        else:
            print(f"report:      {build_report(plan, out, None, args.self_contained)}")
        return 0

    open_study(out, manifest, args.force)
    speed = slowdown(args.calibration_seconds, out / CALIBRATION)[0]
    plan = make_plan(chosen, args.profile, args.seed, args.jobs, speed, store, args.budget_minutes, model, skipped)
    for pc in plan.cells:  # a corrupt cached result stops the study here, before anything runs
        if pc.status == "done":
            store.result(pc.key, pc.label)
    _print_plan(plan)
    write_json(out / "plan.json", plan.to_json())
    executor = make_executor(args.executor, args.jobs, args.ray_address, args.retries)
    summary = run_plan(plan, executor, out, progress=not args.no_progress)
    index = build_report(plan, out, summary, args.self_contained)
    print(f"cells:       {len(summary.ran)} computed, {sum(pc.status == 'done' for pc in plan.cells)} of "
          f"{len(plan.cells)} done" + (f", {len(plan.dropped())} dropped by the budget" if plan.dropped() else ""))
    for label, reason in {**summary.failed, **{k: f"skipped: needs {v}" for k, v in summary.skipped.items()}}.items():
        print(f"  failed: {label}: {reason}")
    print(f"results:     {out / 'results.json'}")
    print(f"report:      {index}")
    return 1 if summary.failed or summary.skipped else 0
