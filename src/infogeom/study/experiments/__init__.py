"""Registry of the study's experiments by id (``E1`` …); each module defines ``EXPERIMENT``."""

from __future__ import annotations

import importlib

from ..spec import Experiment

MODULES: dict[str, str] = {"E1": "e1", "E2": "e2", "E5": "e5"}


def experiments() -> dict[str, Experiment]:
    """All registered experiments, imported on demand, in id order."""
    return {eid: importlib.import_module(f"{__name__}.{mod}").EXPERIMENT for eid, mod in sorted(MODULES.items())}
