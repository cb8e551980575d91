"""Keep live captures out of curvature computations.

Optimizers and monitors attach *live* hooks to a model (K-FAC factor captures, the batch capture of NGCG,
quantum-layer input recorders): they record the training forwards and backwards. A curvature computation runs
extra forwards and backwards on the same model (Hessian-vector products, probe batches); those must neither reach
live hooks (vmapped double backward cannot run through them, and a probe batch must not enter an optimizer's
factors or consume its random generator) nor change anything the optimizer will see. Every curvature computation
runs inside :func:`suspend_captures` (through :func:`infogeom.geometry.curvature_mode`, which every operator
uses), and every live capture asks :func:`capture_active` before it records. An operator's own temporary capture
(the K-FAC operator's) is not live and works as usual.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

_LEVEL = [0]


@contextlib.contextmanager
def suspend_captures() -> Iterator[None]:
    """Silence every live capture for the duration of the block (nests)."""
    _LEVEL[0] += 1
    try:
        yield
    finally:
        _LEVEL[0] -= 1


def capture_active(live: bool = True) -> bool:
    """Whether a capture may record now: always for a temporary one, outside :func:`suspend_captures` for a
    live one."""
    return not live or _LEVEL[0] == 0
