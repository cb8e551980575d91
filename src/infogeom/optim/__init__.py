"""Optimizers (all ``torch.optim.Optimizer``s), the name registry used by the trainer and CLI, and every
optimizer's metric as a :class:`~infogeom.operators.CurvatureOperator` (:func:`preconditioner`).

Registered names: 'adamw', 'sgd' (torch's, registry), 'muon' (Muon + AdamW baseline), 'kfac', 'ekfac'
(Kronecker-factored natural gradient), 'fisher-muon' (Muon's orthogonalized step in
the K-FAC-whitened coordinates), 'ngcg' (conjugate gradient on Fisher-vector products), 'qng' (quantum
natural gradient on a model's quantum layers + AdamW).
"""

from .ekfac import EKFAC
from .fisher_muon import FisherMuon
from .hybrid import HybridOptimizer
from .kfac import KFAC
from .muon import MuonAdamW
from .ngcg import NaturalGradientCG
from .preconditioner import PreconditionerPart, preconditioner, preconditioner_parts, stability_operator
from .qng import QNGAdamW, QuantumNaturalGradient
from .registry import OPTIMIZERS, build_optimizer, register_optimizer

__all__ = ["EKFAC", "KFAC", "OPTIMIZERS", "FisherMuon", "HybridOptimizer", "MuonAdamW", "NaturalGradientCG",
           "PreconditionerPart", "QNGAdamW", "QuantumNaturalGradient", "build_optimizer", "preconditioner",
           "preconditioner_parts", "register_optimizer", "stability_operator"]
