"""The study: the claims of arXiv 2506.15830 as pre-registered, seeded, cached experiments with one report."""

from .spec import Cell, Claim, Experiment, Section

__all__ = ["Cell", "Claim", "Experiment", "Section"]
