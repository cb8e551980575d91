"""``infogeom`` command line: ``infogeom <command> [options]``; ``infogeom <command> --help`` explains each option.

Each command lives in its own module under ``infogeom.cli`` exposing ``register(subparsers)``, which adds a parser
whose ``func(args) -> int`` runs it. Bad input raises :class:`infogeom.errors.InfogeomError`; ``main`` prints it as
one line ``infogeom: error: ...`` and exits with code 2 (no traceback).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ..errors import InfogeomError

# Command modules, in the order ``--help`` lists them.
COMMAND_MODULES = ["train", "evaluate", "sample", "info", "quantum", "curvature", "plot", "study"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="infogeom",
        description="Information geometry for language-model training: train GPTs with natural-gradient "
        "optimizers, measure curvature, compute quantum metrics.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except InfogeomError as exc:
        print(f"infogeom: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("infogeom: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
