"""Models as functions of their parameters, for ``torch.func`` and double-backward curvature products.

A *batch* is ``(x, y)`` with ``x, y`` long tensors ``[B, T]`` (inputs and next-token targets); the model maps
``x -> logits [B, T, V]``. Tied weights appear once (``named_parameters`` de-duplicates them).
"""

from __future__ import annotations

import contextlib
import fnmatch
import re
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn as nn
from torch.func import functional_call

from ..errors import InfogeomError
from ..models.gpt import lm_loss, math_attention
from ..operators import suspend_captures

Batch = tuple[torch.Tensor, torch.Tensor]


def select_parameters(model: nn.Module, names: Sequence[str] | str | None = None) -> dict[str, torch.Tensor]:
    """Trainable parameters by name (all of them when ``names`` is None), in ``named_parameters`` order. A
    string ``names`` is a pattern (:func:`match_parameters`): every trainable parameter it matches."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if names is None:
        return params
    if isinstance(names, str):
        names = match_parameters(model, names)
    missing = [n for n in names if n not in params]
    if missing:
        raise InfogeomError(f"unknown parameter name(s): {', '.join(missing)}")
    return {n: params[n] for n in names}


def name_matcher(pattern: str) -> Callable[[str], bool]:
    """``name -> bool`` for ``pattern``: ``re:REGEX`` (``re.search``: anchor with ``^``/``$`` yourself) or
    comma-separated globs (``fnmatch``, case-sensitive), each tried on the name and on every dotted suffix of
    it, so ``transformer.h.3.*`` matches ``model.transformer.h.3.attn.c_attn.weight`` whatever wrapper
    (``model.``, PEFT's ``base_model.model.``) the name starts with."""
    if pattern.startswith("re:"):
        try:
            regex = re.compile(pattern[3:])
        except re.error as exc:
            raise InfogeomError(f"parameter pattern {pattern!r} is not a valid regular expression: {exc}") from None
        return lambda name: regex.search(name) is not None
    globs = [g.strip() for g in pattern.split(",") if g.strip()]
    if not globs:
        raise InfogeomError("empty parameter pattern; use globs like 'transformer.h.3.*' or 're:REGEX'")

    def match(name: str) -> bool:
        parts = name.split(".")
        suffixes = [".".join(parts[i:]) for i in range(len(parts))]
        return any(fnmatch.fnmatchcase(s, g) for g in globs for s in suffixes)
    return match


def match_parameters(model: nn.Module, pattern: str, what: str = "parameter pattern") -> list[str]:
    """Names of the trainable parameters matching ``pattern`` (:func:`name_matcher`), in ``named_parameters``
    order; none is an error naming ``what`` (the option or config key it came from) and a few valid names."""
    match = name_matcher(pattern)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    names = [n for n in trainable if match(n)]
    if not names:
        examples = ", ".join(trainable[:3]) + (", ..." if len(trainable) > 3 else "")
        raise InfogeomError(f"{what} {pattern!r} matches none of the {len(trainable)} trainable parameters "
                            f"(names look like: {examples or 'none'})")
    return names


def freeze_except(model: nn.Module, pattern: str, what: str = "parameter pattern") -> list[str]:
    """Keep only the trainable parameters matching ``pattern`` trainable (``requires_grad=False`` on the
    others, so every operator, optimizer and gradient sees just the subset); returns their names."""
    keep = set(match_parameters(model, pattern, what))
    for name, p in model.named_parameters():
        if name not in keep:
            p.requires_grad_(False)
    return [n for n, p in model.named_parameters() if n in keep]


@contextlib.contextmanager
def curvature_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode (no dropout), the math attention path and live captures suspended
    (:func:`~infogeom.operators.suspend_captures`), restored afterwards. Every curvature computation runs in it."""
    was_training = model.training
    model.eval()
    try:
        with math_attention(model), suspend_captures():
            yield model
    finally:
        model.train(was_training)


def logits_function(model: nn.Module, x: torch.Tensor) -> Callable[[dict[str, torch.Tensor]], torch.Tensor]:
    """``params -> logits [B, T, V]`` for fixed inputs ``x`` (other parameters and buffers as in ``model``)."""
    def f(params: dict[str, torch.Tensor]) -> torch.Tensor:
        return functional_call(model, params, (x,), strict=False)
    return f


def loss_function(model: nn.Module, batch: Batch,
                  loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = lm_loss
                  ) -> Callable[[dict[str, torch.Tensor]], torch.Tensor]:
    """``params -> mean token cross-entropy`` on ``batch``."""
    x, y = batch
    f = logits_function(model, x)
    return lambda params: loss(f(params), y)
