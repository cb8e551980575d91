"""``infogeom plot RUN...``: overlay the training and validation loss curves of runs in one figure."""

from __future__ import annotations

import argparse
from datetime import datetime
from pathlib import Path

from ..errors import InfogeomError
from ..plotting import plot_loss_curves
from ..train.metrics import METRICS_FILE, read_metrics


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "plot",
        help="overlay the loss curves (train and validation, vs step and vs tokens) of one or more runs",
        description="Read RUN/metrics.jsonl of each run folder and draw train and validation loss against "
        "optimizer steps and training tokens, one colour per run; writes a PNG and an SVG copy.",
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders (holding metrics.jsonl)")
    p.add_argument("--out", metavar="PNG", type=Path,
                   help="figure path (default: RUN/loss.png for one run, runs/plot-<date-time>/loss.png for several)")
    p.add_argument("--title", help="figure title (default: the run folders)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    runs = []
    for folder in map(Path, args.runs):
        records = read_metrics(folder / METRICS_FILE)
        if not any("loss" in r for r in records):
            raise InfogeomError(f"{folder} has no training records ({folder / METRICS_FILE} missing or empty); "
                                "pass run folders written by infogeom train")
        runs.append((folder.name, records))
    if args.out is not None and args.out.suffix.lower() != ".png":
        raise InfogeomError(f"--out must name a .png file, got {args.out}")
    out = args.out or (Path(args.runs[0]) / "loss.png" if len(runs) == 1
                       else Path("runs") / f"plot-{datetime.now():%Y%m%d-%H%M%S}" / "loss.png")
    plot_loss_curves(runs, out, args.title or "loss curves: " + ", ".join(str(r) for r in args.runs))
    print(f"wrote {out} and {out.with_suffix('.svg')}")
    return 0
