"""The optimisers (AdamW, SGD with momentum) with weight-decay exclusion and the learning-rate schedules of the
training loop."""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR, LRScheduler
from transformers import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup

from .config import TrainingConfig

NORM_LAYERS: tuple[type[torch.nn.Module], ...] = (
    torch.nn.modules.batchnorm._NormBase,
    torch.nn.LayerNorm,
    torch.nn.GroupNorm,
    torch.nn.LocalResponseNorm,
    torch.nn.RMSNorm,
)


def decay_parameter_names(model: torch.nn.Module) -> set[str]:
    """Names of the trainable parameters that receive weight decay: matrices and kernels, not biases,
    normalisation weights, scalars (``logit_scale``) or other 1-D parameters."""
    no_decay: set[str] = set()
    for module_name, module in model.named_modules():
        if isinstance(module, NORM_LAYERS) or "norm" in type(module).__name__.lower():
            prefix = f"{module_name}." if module_name else ""
            no_decay.update(prefix + n for n, _ in module.named_parameters(recurse=False))
    return {
        name
        for name, param in model.named_parameters()
        if param.requires_grad and param.ndim >= 2 and name not in no_decay and not name.endswith("bias")
    }


def build_optimizer(model: torch.nn.Module, config: TrainingConfig) -> torch.optim.Optimizer:
    """``config.optimizer`` (AdamW, or SGD with ``momentum`` as CLERC trains) over the trainable parameters, with
    weight decay on :func:`decay_parameter_names` only.

    Frozen parameters (``requires_grad=False``) are left out: a backbone unfrozen later (e.g. after a head
    warm-up) needs a new optimiser, i.e. a second training run.
    """
    decay = decay_parameter_names(model)
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("the model has no trainable parameter")
    groups = [
        {"params": [p for n, p in trainable if n in decay], "weight_decay": config.weight_decay},
        {"params": [p for n, p in trainable if n not in decay], "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.learning_rate, momentum=config.momentum)
    return torch.optim.AdamW(
        groups,
        lr=config.learning_rate,
        betas=(config.adam_beta1, config.adam_beta2),
        eps=config.adam_epsilon,
    )


class PlateauScheduleWithWarmup(LRScheduler):
    """Linear warm-up, then a constant learning rate multiplied by ``factor`` whenever the monitored validation
    metric has not improved for ``patience`` consecutive evaluations (ReduceLROnPlateau-style; the sEHR-BERT
    recipe halves the rate after 2 evaluations without improvement).

    Call :meth:`step` after every optimiser step and :meth:`report` after every evaluation. Its whole state
    (best value, evaluations without improvement, current scale) is in :meth:`state_dict`, so a resumed run
    continues the same schedule.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        num_warmup_steps: int,
        factor: float = 0.5,
        patience: int = 2,
        mode: str = "min",
        threshold: float = 0.0,
        last_epoch: int = -1,
    ) -> None:
        self.num_warmup_steps = num_warmup_steps
        self.factor = factor
        self.patience = patience
        self.mode = mode
        self.threshold = threshold
        self.scale = 1.0
        self.best = math.inf if mode == "min" else -math.inf
        self.num_bad_evaluations = 0
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        step = self.last_epoch
        warmup = step / max(1, self.num_warmup_steps) if step < self.num_warmup_steps else 1.0
        return [base_lr * warmup * self.scale for base_lr in self.base_lrs]

    def report(self, value: float) -> bool:
        """Record a validation value; returns ``True`` when the learning rate was just reduced."""
        improved = value < self.best - self.threshold if self.mode == "min" else value > self.best + self.threshold
        if improved:
            self.best = value
            self.num_bad_evaluations = 0
            return False
        self.num_bad_evaluations += 1
        if self.num_bad_evaluations < self.patience:
            return False
        self.num_bad_evaluations = 0
        self.scale *= self.factor
        for group, lr in zip(self.optimizer.param_groups, self.get_lr()):
            group["lr"] = lr
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]
        return True


def step_schedule_with_warmup(
    optimizer: torch.optim.Optimizer, num_warmup_steps: int, step_size: int, factor: float
) -> LambdaLR:
    """Linear warm-up, then the rate multiplied by ``factor`` every ``step_size`` optimiser steps (``StepLR`` counted
    in steps, so that a run resumed mid-epoch continues the same schedule)."""

    def scale(step: int) -> float:
        warm = step / max(1, num_warmup_steps) if step < num_warmup_steps else 1.0
        return warm * factor ** (step // step_size)

    return LambdaLR(optimizer, scale)


def build_lr_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainingConfig, num_training_steps: int, steps_per_epoch: int = 1
) -> LRScheduler:
    """The schedule named by ``config.lr_schedule`` over ``num_training_steps`` optimiser steps.

    Warm-up lasts ``warmup_steps``, or ``ceil(warmup_ratio * num_training_steps)`` when ``warmup_steps`` is 0.
    ``step`` multiplies the rate by ``lr_step_factor`` every ``lr_step_epochs`` epochs of ``steps_per_epoch``
    optimiser steps.
    """
    warmup = config.warmup_steps or math.ceil(config.warmup_ratio * num_training_steps)
    if config.lr_schedule == "step":
        return step_schedule_with_warmup(
            optimizer, warmup, max(1, round(config.lr_step_epochs * steps_per_epoch)), config.lr_step_factor
        )
    if config.lr_schedule == "cosine":
        return get_cosine_schedule_with_warmup(optimizer, warmup, num_training_steps)
    if config.lr_schedule == "constant":
        return get_constant_schedule_with_warmup(optimizer, warmup)
    return PlateauScheduleWithWarmup(
        optimizer, warmup, factor=config.plateau_factor, patience=config.plateau_patience, mode=config.monitor_mode
    )
