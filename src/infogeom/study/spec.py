"""The study's data model: cells (one training or measurement run each), experiments and report sections.

A :class:`Cell` is pure data; its content hash names its folder ``OUT/cells/<hash>/`` and its seed is derived from
(study seed, experiment, pair key, replicate) so that arms differing only in the method share seeds (paired).
An :class:`Experiment` declares its cells for a profile (``quick`` or ``full``) and turns their results into a
:class:`Section` of the report with :class:`Claim` verdicts fixed by rules written before any run.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

VERDICTS = ("consistent", "inconsistent", "inconclusive")


def canonical_json(obj: Any) -> str:
    """Deterministic JSON (sorted keys, no whitespace) used for hashing."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


@dataclass(frozen=True)
class Cell:
    """One run of the study.

    ``fn`` is the dotted path ``module:function`` of ``run(params, seed, workdir, inputs) -> dict``; ``params`` holds
    everything that determines the result; ``needs`` names cells of the same experiment whose results (and folders)
    this one reads; ``priority``: lower is more important (a budget drops the highest first); ``est_seconds``: cost
    on the reference quiet 2-core machine with one torch thread; ``num_cpus``/``num_gpus``: resources the cell
    asks of the executor (Ray schedules on them; they do not change the result, so they are not hashed).
    """

    experiment: str
    name: str
    fn: str
    params: dict = field(default_factory=dict)
    replicate: int = 0
    priority: int = 0
    est_seconds: float = 1.0
    needs: tuple[str, ...] = ()
    num_cpus: float = 1.0
    num_gpus: float = 0.0

    def key(self, version: str, data_hash: str = "", study_seed: int = 0) -> str:
        """sha256 of the cell's content (experiment, name, fn, params, replicate), its seed and the code/data
        versions: a different study seed or infogeom version never reuses a cached result."""
        payload = canonical_json(
            {
                "seed": self.seed(study_seed),
                "experiment": self.experiment,
                "name": self.name,
                "fn": self.fn,
                "params": self.params,
                "replicate": self.replicate,
                "version": version,
                "data": data_hash,
            }
        )
        return hashlib.sha256(payload.encode()).hexdigest()

    def seed(self, study_seed: int) -> int:
        """Seed from (study seed, experiment, pair key, replicate); arms with one ``params["pair_key"]`` are paired."""
        pair = self.params.get("pair_key", self.name)
        digest = hashlib.sha256(canonical_json([study_seed, self.experiment, pair, self.replicate]).encode())
        return int.from_bytes(digest.digest()[:4], "little") & 0x7FFFFFFF


@dataclass
class Claim:
    """One row of the report's claims table; ``verdict`` is one of :data:`VERDICTS`."""

    id: str
    text: str
    verdict: str
    measured: str
    prediction: str
    citation: str
    rule: str

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {self.verdict!r}")


@dataclass
class Section:
    """One experiment's part of the report: claims, figures (file in the figure folder, caption), tables, numbers."""

    experiment: str
    title: str
    claims: list[Claim] = field(default_factory=list)
    figures: list[tuple[str, str]] = field(default_factory=list)
    tables: list[tuple[str, list[str], list[list[str]]]] = field(default_factory=list)
    numbers: dict = field(default_factory=dict)
    text: str = ""


@dataclass(frozen=True)
class Experiment:
    """An experiment: ``plan(profile) -> cells`` and ``analyze([(cell, result)], figdir) -> Section``.

    ``on_model(cells, model) -> cells`` rewrites the plan for ``study --model hf:PATH`` (``model``: the spec of
    :func:`infogeom.study.model.study_model`): the cells that train or probe one language model get
    ``params["model"]``; ``None`` means the experiment cannot run on another model. ``model_note`` says what the
    model changes (or, with ``on_model=None``, why it cannot); the report prints it.
    """

    id: str
    title: str
    claim: str
    plan: Callable[[str], list[Cell]]
    analyze: Callable[[list[tuple[Cell, dict]], Path], Section]
    on_model: Callable[[list[Cell], dict], list[Cell]] | None = None
    model_note: str = ""
