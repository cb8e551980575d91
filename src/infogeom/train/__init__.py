"""Training: configs, the :class:`Trainer`, checkpoints, callbacks.

``train(load_config("run.toml", ["optim.lr=1e-3"]))`` trains and returns a :class:`TrainResult`;
``load_model(checkpoint)`` gives back ``(model, tokenizer, config)``.
"""

from .callbacks import Callback
from .checkpoint import load_checkpoint, save_checkpoint
from .config import (
                     DataConfig,
                     ModelConfig,
                     OptimConfig,
                     TrainConfig,
                     apply_overrides,
                     config_from_dict,
                     config_to_dict,
                     dumps_toml,
                     load_config,
)
from .modeling import build_model, load_model
from .trainer import Trainer, TrainResult, train

__all__ = [
    "Callback", "DataConfig", "ModelConfig", "OptimConfig", "TrainConfig", "TrainResult", "Trainer",
    "apply_overrides", "build_model", "config_from_dict", "config_to_dict", "dumps_toml", "load_checkpoint",
    "load_config", "load_model", "save_checkpoint", "train",
]
