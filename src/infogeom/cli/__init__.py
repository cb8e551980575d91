"""``infogeom`` command line: ``infogeom <command> [options]``; ``infogeom <command> --help`` explains each option.

Each command lives in its own module under ``infogeom.cli`` exposing ``register(subparsers)``, which adds a parser
whose ``func(args) -> int`` runs it. Bad input raises :class:`infogeom.errors.InfogeomError`; ``main`` prints it as
one line ``infogeom: error: ...`` and exits with code 2 (no traceback), as it does for an operating-system error
(disk full, permission denied) or an allocation failure. Warnings (ours, torch's, transformers') are one line
``infogeom: warning: ...`` each, shown once; Ctrl-C at any moment, start-up imports included (held back until
they finish), is one line and exit code 130.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import signal
import sys
import threading
import warnings
from collections.abc import Iterator

from ..errors import InfogeomError

# Command modules, in the order ``--help`` lists them.
COMMAND_MODULES = ["train", "evaluate", "sample", "export", "info", "quantum", "curvature", "plot", "study"]


class Parser(argparse.ArgumentParser):
    """Usage errors are one line too: ``infogeom: error: <what> (see: <prog> --help)``, exit code 2."""

    def error(self, message: str):
        print(f"infogeom: error: {message} (see: {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="infogeom",
        description="Information geometry for language-model training: train GPTs with natural-gradient "
        "optimizers, measure curvature, compute quantum metrics.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    text = " ".join(str(message).split())
    print(f"infogeom: warning: {text[:300]}", file=sys.stderr)


@contextlib.contextmanager
def _deferred_interrupt() -> Iterator[None]:
    """Hold Ctrl-C back while the command modules (torch, numpy, ...) import — an interrupt inside a C extension's
    initialization can abort the process or leave a half-imported module — then raise it as KeyboardInterrupt."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


def _error(text: str) -> int:
    if "tqdm" in sys.modules:  # clear any progress bar still on the terminal, so the error stands alone
        for bar in list(getattr(sys.modules["tqdm"].tqdm, "_instances", ())):
            bar.leave = False
            bar.close()
    print(f"infogeom: error: {' '.join(text.split())[:1000]}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("once")
            warnings.showwarning = _one_line_warning
            with _deferred_interrupt():
                parser = build_parser()
            try:
                args = parser.parse_args(argv)
            except SystemExit as exc:  # --help, or a usage error already printed as one line
                return exc.code if isinstance(exc.code, int) else 2
            return int(args.func(args) or 0)
    except InfogeomError as exc:
        return _error(str(exc))
    except OSError as exc:  # the environment, not the input: disk full, permissions, ...
        where = f" ({exc.filename})" if exc.filename else ""
        return _error(f"{exc.strerror or exc}{where}")
    except (MemoryError, RuntimeError) as exc:
        if isinstance(exc, RuntimeError) and type(exc).__name__ != "OutOfMemoryError":
            raise  # a bug, not the input: keep the traceback
        return _error("out of memory; use a smaller model, batch or --device")
    except KeyboardInterrupt:
        print("infogeom: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
