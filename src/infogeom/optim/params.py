"""Which parameters a matrix optimizer (Muon, K-FAC) takes, and AdamW groups for the rest."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn as nn

from ..models.linear import linear_kind

#: Modules treated as output heads by default (GPT and Hugging Face causal LMs both call it ``lm_head``).
HEAD_NAMES = ("lm_head",)


def linear_layers(model: nn.Module, include_head: bool = False, head_names: Sequence[str] = HEAD_NAMES,
                  ) -> dict[str, nn.Module]:
    """Trainable linear maps (``nn.Linear``, transformers' ``Conv1D``) by name. Heads (last name component in
    ``head_names``) only with ``include_head`` (tied or not); other weights shared with an ``nn.Embedding``
    never."""
    embedded = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    layers = {}
    for name, module in model.named_modules():
        if linear_kind(module) is None or not module.weight.requires_grad:
            continue
        is_head = name.rsplit(".", 1)[-1] in head_names
        if (is_head and not include_head) or (not is_head and id(module.weight) in embedded):
            continue
        layers[name] = module
    return layers


def adamw_groups(model: nn.Module, exclude: Iterable[torch.Tensor], weight_decay: float,
                 **options) -> list[dict]:
    """Groups of the trainable parameters not in ``exclude``: decay on matrices (≥2-D), none on vectors."""
    skip = {id(p) for p in exclude}
    params = [p for p in model.parameters() if p.requires_grad and id(p) not in skip]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay, **options},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0, **options}]
    return [g for g in groups if g["params"]]
