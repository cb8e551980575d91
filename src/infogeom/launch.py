"""``python -m infogeom.launch [torchrun options] -m infogeom train ...``: ``torchrun`` with one-line endings.

The same elastic agent as ``torchrun`` (``torch.distributed.run``), but an interrupt (Ctrl-C, SIGTERM) ends in
one line ``infogeom: interrupted`` (exit code 130) instead of torchrun's ``SignalException`` traceback, and a
worker that failed on bad input (it printed its own one-line error) ends with that worker's exit code instead of
torchrun's multi-line ``ChildFailedError`` report. The agent's log chatter is silenced; ``OMP_NUM_THREADS``
defaults to 1 per process, as torchrun sets it (without its warning).
"""

from __future__ import annotations

import logging
import os
import sys


def main(argv: list[str] | None = None) -> int:
    try:
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        from torch.distributed.elastic.agent.server import api  # noqa: F401 - its logger is silenced below
        from torch.distributed.elastic.multiprocessing.api import SignalException
        from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
        from torch.distributed.run import parse_args, run

        for name in list(logging.root.manager.loggerDict):
            if name.startswith("torch.distributed"):
                logging.getLogger(name).setLevel(logging.CRITICAL)

        try:
            run(parse_args(argv))
        except SignalException:
            raise KeyboardInterrupt from None
        except ChildFailedError as exc:
            codes = [f.exitcode for f in exc.failures.values()]
            return next((c for c in codes if c > 0), 1)
    except KeyboardInterrupt:
        print("infogeom: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
