"""Optimizers (all ``torch.optim.Optimizer``s) and the name registry used by the trainer and CLI.

Registered names: 'adamw', 'sgd' (registry), 'muon' (Muon + AdamW baseline), 'kfac', 'ekfac'
(Kronecker-factored natural gradient), 'ngcg' (conjugate gradient on Fisher-vector products).
"""

from .ekfac import EKFAC
from .hybrid import HybridOptimizer
from .kfac import KFAC
from .muon import MuonAdamW
from .ngcg import NaturalGradientCG
from .qng import QNGAdamW as QNGAdamW  # registers 'qng'
from .registry import OPTIMIZERS, build_optimizer, register_optimizer

__all__ = ["EKFAC", "KFAC", "OPTIMIZERS", "HybridOptimizer", "MuonAdamW", "NaturalGradientCG",
           "build_optimizer", "register_optimizer"]
