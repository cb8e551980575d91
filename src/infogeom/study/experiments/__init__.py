"""Registry of the study's experiments by id (``E1`` …); each module defines ``EXPERIMENT``.

``MODULES`` maps an id to a module of this package (``"e1"``) or, if there is no such module, to an absolute
module path (``"mypkg.my_experiment"``). More experiments can be added without editing the package through the
environment variable ``INFOGEOM_STUDY_EXPERIMENTS="X1=mypkg.x1,X2=mypkg.x2"`` (read on every call, so
subprocesses see the same registry) or :func:`register`; ``INFOGEOM_STUDY_BUILTINS=0`` leaves the built-in
experiments out (a study of one's own experiments only, and the engine's tests).
"""

from __future__ import annotations

import importlib
import importlib.util
import os

from ...errors import InfogeomError
from ..spec import Experiment

MODULES: dict[str, str] = {"E1": "e1", "E2": "e2", "E3": "e3", "E4": "e4", "E5": "e5", "E6": "e6"}
ENV_VAR = "INFOGEOM_STUDY_EXPERIMENTS"


def register(experiment_id: str, module: str) -> None:
    """Add (or replace) experiment ``experiment_id`` defined by ``module.EXPERIMENT``."""
    MODULES[experiment_id] = module


def _env_modules() -> dict[str, str]:
    extra = {}
    for item in filter(None, (s.strip() for s in os.environ.get(ENV_VAR, "").split(","))):
        eid, sep, mod = item.partition("=")
        if not sep or not eid.strip() or not mod.strip():
            raise InfogeomError(f"{ENV_VAR}: expected ID=module[,ID=module...], got {item!r}")
        extra[eid.strip()] = mod.strip()
    return extra


def _load(eid: str, mod: str) -> Experiment:
    path = f"{__name__}.{mod}"
    try:
        if importlib.util.find_spec(path) is None:
            path = mod
    except ImportError:
        path = mod
    try:
        exp = importlib.import_module(path).EXPERIMENT
    except (ImportError, AttributeError) as exc:
        raise InfogeomError(f"experiment {eid}: cannot load {path}.EXPERIMENT ({exc})") from None
    if exp.id != eid:
        raise InfogeomError(f"experiment {eid}: module {path} defines EXPERIMENT with id {exp.id!r}")
    return exp


def experiments() -> dict[str, Experiment]:
    """All registered experiments, imported on demand, in id order."""
    builtin = MODULES if os.environ.get("INFOGEOM_STUDY_BUILTINS", "1") != "0" else {}
    modules = {**builtin, **_env_modules()}
    return {eid: _load(eid, mod) for eid, mod in sorted(modules.items())}
