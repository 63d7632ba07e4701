"""The Accelerate training loop shared by every cardiomm objective.

Usage::

    from cardiomm.training import TrainingLoop, TrainingConfig, load_config

    experiment = load_config("configs/merl.yaml")          # {model, data, evaluation, training}
    result = TrainingLoop(model, experiment, train_set, collate_fn, eval_dataset=val_set).train()
"""

from .checkpointing import VerifiedCheckpoint, completed_checkpoints, resolve_resume_checkpoint, verify_checkpoint
from .config import ExperimentConfig, TrainingConfig, load_config, save_config
from .loop import TrainingLoop, TrainingState, TrainResult
from .sampling import EpochShuffleSampler, ModalityGroupedBatchSampler
from .optimization import PlateauScheduleWithWarmup, build_lr_scheduler, build_optimizer, decay_parameter_names
from .text_feature_cache import TextFeatureCache

__all__ = [
    "EpochShuffleSampler",
    "ExperimentConfig",
    "ModalityGroupedBatchSampler",
    "PlateauScheduleWithWarmup",
    "TextFeatureCache",
    "TrainResult",
    "TrainingConfig",
    "TrainingLoop",
    "TrainingState",
    "VerifiedCheckpoint",
    "build_lr_scheduler",
    "build_optimizer",
    "completed_checkpoints",
    "decay_parameter_names",
    "load_config",
    "resolve_resume_checkpoint",
    "save_config",
    "verify_checkpoint",
]
