"""hessian-eigenthings v1 (PyPI ``hessian-eigenthings``, pre-release; ``pip install --no-deps --pre``) on an
infogeom model, for comparisons.

Its ``HessianOperator(model, batches, loss_fn)`` averages ``loss_fn(model, batch)``'s Hessian over the batches
and rebuilds the gradient graph on every product (one forward, one backward with ``create_graph``, one double
backward per vector). :func:`eigenthings_hessian` gives it the mean token cross-entropy on one batch and the
math attention path (double backward cannot run through SDPA's fused kernels).
"""

from __future__ import annotations

import torch.nn as nn

from infogeom.errors import InfogeomError
from infogeom.geometry.functional import Batch
from infogeom.models.gpt import lm_loss


def _loss(model: nn.Module, batch: Batch):
    x, y = batch
    return lm_loss(model(x), y)


def eigenthings_hessian(model: nn.Module, batch: Batch) -> object:
    """hessian-eigenthings' Hessian of the mean token cross-entropy of ``model`` on ``batch``."""
    try:
        import hessian_eigenthings as he
    except ImportError as exc:
        raise InfogeomError("hessian-eigenthings is not installed: pip install --no-deps --pre hessian-eigenthings"
                            ) from exc
    if hasattr(model, "set_attention"):
        model.set_attention("math")
    return he.HessianOperator(model, [batch], _loss)
