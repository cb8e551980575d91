"""Run PyHessian (Yao et al. 2020; ``pip install --no-deps pyhessian``) on an infogeom model, for comparisons.

PyHessian 0.1 expects ``criterion(model(x), y)`` and float32 parameters (its probes are float32), and its SLQ
calls ``torch.eig``, which torch ≥ 2 removed. :func:`pyhessian_session` supplies the criterion (mean token
cross-entropy), switches the model to the double-backward-capable math attention path, and provides a faithful
``torch.eig`` replacement for symmetric matrices while PyHessian runs: eigenvalues in column 0 of an [n, 2]
tensor (imaginary parts 0) and eigenvectors as columns, as the removed function returned them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn as nn

from infogeom.errors import InfogeomError
from infogeom.geometry.functional import Batch
from infogeom.models.gpt import lm_loss, math_attention


def _symmetric_eig(T: torch.Tensor, eigenvectors: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    values, vectors = torch.linalg.eigh(T)
    return torch.stack([values, torch.zeros_like(values)], dim=1), vectors


def _criterion(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return lm_loss(logits, targets)


@contextlib.contextmanager
def pyhessian_session(model: nn.Module, batch: Batch) -> Iterator[object]:
    """``pyhessian.hessian`` for ``model`` on ``batch`` (CPU), valid inside the ``with`` block."""
    try:
        from pyhessian import hessian
    except ImportError as exc:
        raise InfogeomError("PyHessian is not installed: pip install --no-deps pyhessian") from exc
    had_eig, old_eig = hasattr(torch, "eig"), getattr(torch, "eig", None)
    torch.eig = _symmetric_eig
    try:
        with math_attention(model):
            yield hessian(model, _criterion, data=batch, cuda=False)
    finally:
        if had_eig:
            torch.eig = old_eig
        else:
            del torch.eig
        model.zero_grad(set_to_none=True)  # PyHessian leaves create_graph gradients in .grad
