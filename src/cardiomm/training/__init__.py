"""The Accelerate training loop shared by every cardiomm objective.

Usage::

    from cardiomm.training import Trainer, TrainingConfig, load_config

    experiment = load_config("configs/merl.yaml")          # {model, data, evaluation, training}
    result = Trainer(model, experiment, train_set, collate_fn, eval_dataset=val_set).train()
"""

from .checkpointing import completed_checkpoints, verify_checkpoint
from .config import ExperimentConfig, TrainingConfig, load_config, save_config
from .loop import Trainer, TrainerState, TrainResult
from .sampling import EpochShuffleSampler
from .optimization import PlateauScheduleWithWarmup, build_lr_scheduler, build_optimizer, decay_parameter_names

__all__ = [
    "EpochShuffleSampler",
    "ExperimentConfig",
    "PlateauScheduleWithWarmup",
    "TrainResult",
    "Trainer",
    "TrainerState",
    "TrainingConfig",
    "build_lr_scheduler",
    "build_optimizer",
    "completed_checkpoints",
    "decay_parameter_names",
    "load_config",
    "save_config",
    "verify_checkpoint",
]
