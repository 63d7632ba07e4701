"""ECG-MTL: a shared ECG encoder with one small MLP head per task, trained on binary classification and regression
tasks at once (the EHR paper's ECG-MTL, Section 3.5 and Appendix E).

Each head maps the encoder's pooled ECG embedding to one number: a logit for a binary classification task, a
standardised value for a regression task. The loss of a classification task is the binary cross-entropy over the
ECGs of the batch whose target is known, that of a regression task the mean squared error between the prediction
and the standardised target `(target - mean) / std` over the ECGs whose target is known; a NaN target is missing
and stays out of its task's loss. The task losses are combined with weights that sum to one over the tasks that
have at least one target in the batch:

* `loss_weighting="random"` (random loss weighting, Lin et al. 2022): in training mode, at every forward pass,
  `w = softmax(z)` with `z` drawn from a standard normal (torch's random generator) for those tasks; in eval mode
  the weights are equal, so evaluation is deterministic;
* `loss_weighting="equal"`: equal weights, i.e. the mean of the task losses.

Regression targets are given in their original units (`regression_labels`); the model standardises them with the
configuration's `regression_mean` / `regression_std` and predicts in standardised units
(`regression_predictions`); [`ECGEncoderForMultiTask.to_original_units`] and [`ECGEncoderForMultiTask.predict`]
give predictions in the original units.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from .configuration_ecg_encoder import ECGEncoderConfig
from .configuration_ecg_mtl import ECGMultiTaskConfig
from .modeling_ecg_encoder import ECGEncoderModel, mlp_hidden_layers


@dataclass
class ECGMultiTaskOutput(ModelOutput):
    """
    Output of [`ECGEncoderForMultiTask`].

    Args:
        loss (`torch.FloatTensor` of shape (), *optional*, returned when labels are given):
            The weighted sum of the task losses (weights summing to one over the tasks with a target in the batch).
        classification_loss (`torch.FloatTensor` of shape (), *optional*): Mean of the classification tasks'
            losses over those with a target in the batch (for logging; 0 when none has one).
        regression_loss (`torch.FloatTensor` of shape (), *optional*): The same for the regression tasks.
        task_losses (`torch.FloatTensor` of shape (num_tasks,), *optional*): Loss of every task (classification
            tasks first, then regression tasks, as `config.task_names`); 0 for a task without a target in the batch.
        loss_weights (`torch.FloatTensor` of shape (num_tasks,), *optional*): The weights of `task_losses` in `loss`
            (0 for a task without a target in the batch).
        classification_logits (`torch.FloatTensor` of shape (batch, num_classification_tasks)): One logit per
            binary task.
        regression_predictions (`torch.FloatTensor` of shape (batch, num_regression_tasks)): Predictions in
            standardised units (`to_original_units` converts them).
        pooler_output (`torch.FloatTensor` of shape (batch, hidden_size)): The encoder's pooled ECG embedding.
        hidden_states (`tuple(torch.FloatTensor)`, *optional*): The encoder's hidden states, when asked for.
    """

    loss: torch.FloatTensor | None = None
    classification_loss: torch.FloatTensor | None = None
    regression_loss: torch.FloatTensor | None = None
    task_losses: torch.FloatTensor | None = None
    loss_weights: torch.FloatTensor | None = None
    classification_logits: torch.FloatTensor | None = None
    regression_predictions: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None


class ECGTaskHead(nn.Module):
    """One task's MLP: `Linear -> ReLU -> Dropout` per hidden size, then a linear layer to one output."""

    def __init__(self, in_features: int, hidden_sizes: list[int], dropout: float) -> None:
        super().__init__()
        self.hidden_layers = mlp_hidden_layers(in_features, list(hidden_sizes), dropout)
        self.out_proj = nn.Linear(hidden_sizes[-1] if hidden_sizes else in_features, 1)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.out_proj(self.hidden_layers(pooled)).squeeze(-1)


def masked_task_losses(
    classification_logits: torch.Tensor,
    regression_predictions: torch.Tensor,
    classification_labels: torch.Tensor | None,
    regression_targets: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`(task_losses, present)`, each (num_tasks,): the loss of every task over the rows whose target is not NaN
    (binary cross-entropy with logits for the classification columns, squared error for the standardised
    regression columns, each averaged over its known targets), and whether the task has any known target (its loss
    is 0 otherwise). A labels tensor that is `None` counts as all missing."""
    losses, present = [], []
    for outputs, targets, kind in ((classification_logits, classification_labels, "bce"),
                                   (regression_predictions, regression_targets, "mse")):
        if outputs.shape[1] == 0:
            continue
        if targets is None:
            targets = torch.full_like(outputs, float("nan"))
        targets = targets.to(device=outputs.device, dtype=outputs.dtype)
        if targets.shape != outputs.shape:
            raise ValueError(f"{'classification' if kind == 'bce' else 'regression'} labels must have shape "
                             f"{tuple(outputs.shape)} (batch, tasks), got {tuple(targets.shape)}.")
        known = ~torch.isnan(targets)
        clean = torch.where(known, targets, torch.zeros_like(targets))  # no NaN reaches the loss or its gradient
        if kind == "bce":
            elementwise = F.binary_cross_entropy_with_logits(outputs, clean, reduction="none")
        else:
            elementwise = (outputs - clean) ** 2
        counts = known.sum(dim=0)
        sums = torch.where(known, elementwise, torch.zeros_like(elementwise)).sum(dim=0)
        losses.append(sums / counts.clamp(min=1).to(sums.dtype))
        present.append(counts > 0)
    return torch.cat(losses), torch.cat(present)


def task_loss_weights(present: torch.Tensor, weighting: str, training: bool, dtype: torch.dtype) -> torch.Tensor:
    """Weights of the task losses, (num_tasks,), summing to one over the `present` tasks (0 elsewhere):
    `softmax(z)` with `z ~ N(0, 1)` drawn from torch's generator for `weighting="random"` in training mode, equal
    weights otherwise. All zeros when no task is present."""
    if weighting == "random" and training:
        logits = torch.randn(present.shape, device=present.device, dtype=torch.float32)
    else:
        logits = torch.zeros(present.shape, device=present.device, dtype=torch.float32)
    logits = logits.masked_fill(~present, float("-inf"))
    if not bool(present.any()):
        return torch.zeros(present.shape, device=present.device, dtype=dtype)
    return torch.softmax(logits, dim=0).to(dtype)


class ECGEncoderForMultiTask(PreTrainedModel):
    """A shared ECG encoder (`ecg_encoder`, an [`ECGEncoderModel`]) with one MLP head per classification task
    (`classification_heads`) and per regression task (`regression_heads`); see the module docstring.

    Args:
        config: the model configuration (at least one task).
        ecg_encoder: an existing encoder to use instead of building one from `config.ecg_config`.
    """

    config_class = ECGMultiTaskConfig
    config: ECGMultiTaskConfig
    base_model_prefix = "ecg_multitask"
    main_input_name = "input_values"
    input_modalities = ("ecg",)
    supports_gradient_checkpointing = True  # the encoder's blocks / layers are GradientCheckpointingLayers

    def __init__(self, config: ECGMultiTaskConfig, ecg_encoder: ECGEncoderModel | None = None) -> None:
        super().__init__(config)
        if not config.task_names:
            raise ValueError("ECGEncoderForMultiTask needs at least one task: set classification_tasks or "
                             "regression_tasks in its ECGMultiTaskConfig.")
        if ecg_encoder is not None and ecg_encoder.config.hidden_size != config.ecg_config.hidden_size:
            raise ValueError(f"ecg_encoder pools {ecg_encoder.config.hidden_size} features, config.ecg_config says "
                             f"{config.ecg_config.hidden_size}.")
        self.ecg_encoder = ecg_encoder if ecg_encoder is not None else ECGEncoderModel(config.ecg_config)
        # the encoder uses the composite configuration's sub-config, keeping its attention implementation
        config.ecg_config._attn_implementation = self.ecg_encoder.config._attn_implementation
        self.ecg_encoder.config = config.ecg_config
        hidden = config.ecg_config.hidden_size

        def heads(count: int) -> nn.ModuleList:
            return nn.ModuleList(ECGTaskHead(hidden, config.head_hidden_sizes, config.head_dropout)
                                 for _ in range(count))

        self.classification_heads = heads(len(config.classification_tasks))
        self.regression_heads = heads(len(config.regression_tasks))
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Heads: hidden layers Kaiming normal (fan-in, ReLU), output layers truncated normal with std
        `initializer_range`, biases 0 (the encoder initialises itself)."""
        if isinstance(module, nn.Linear):
            std = self.config.initializer_range
            init.trunc_normal_(module.weight, std=std, a=-2 * std, b=2 * std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, ECGTaskHead):
            for layer in module.hidden_layers:
                if isinstance(layer, nn.Linear):
                    init.kaiming_normal_(layer.weight, mode="fan_in", nonlinearity="relu")
                    init.zeros_(layer.bias)

    @property
    def lora_target_modules(self) -> list[str]:
        """Module-name suffixes of the encoder layers LoRA adapts (the encoder's `lora_target_modules`)."""
        return self.ecg_encoder.lora_target_modules

    @property
    def lora_modules_to_save(self) -> list[str]:
        """Modules trained whole next to LoRA weights: the encoder's (its batch norms) and the task heads."""
        return [*self.ecg_encoder.lora_modules_to_save, "classification_heads", "regression_heads"]

    def _scaling(self, reference: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = torch.tensor(self.config.regression_mean, dtype=reference.dtype, device=reference.device)
        std = torch.tensor(self.config.regression_std, dtype=reference.dtype, device=reference.device)
        return mean, std

    def standardize(self, regression_values: torch.Tensor) -> torch.Tensor:
        """Regression values (..., num_regression_tasks) in original units → standardised `(x - mean) / std`."""
        values = torch.as_tensor(regression_values)
        values = values.to(torch.float32) if not values.is_floating_point() else values
        mean, std = self._scaling(values)
        return (values - mean) / std

    def to_original_units(self, regression_predictions: torch.Tensor) -> torch.Tensor:
        """Standardised regression predictions (..., num_regression_tasks) → original units `x * std + mean`."""
        values = torch.as_tensor(regression_predictions)
        mean, std = self._scaling(values)
        return values * std + mean

    def forward(
        self,
        input_values: torch.Tensor,
        lead_mask: torch.Tensor | None = None,
        time_mask: torch.Tensor | None = None,
        classification_labels: torch.Tensor | None = None,
        regression_labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> ECGMultiTaskOutput | tuple:
        """
        Args:
            input_values (`torch.FloatTensor` of shape (batch, num_leads, time)): ECG samples.
            lead_mask (`torch.BoolTensor` of shape (batch, num_leads), *optional*): True for recorded leads.
            time_mask (`torch.LongTensor` of shape (batch, time), *optional*): 1 for recorded samples, 0 for padding.
            classification_labels (`torch.FloatTensor` of shape (batch, num_classification_tasks), *optional*):
                0/1 targets, NaN where unknown.
            regression_labels (`torch.FloatTensor` of shape (batch, num_regression_tasks), *optional*): targets in
                their original units (standardised here with `config.regression_mean` / `regression_std`), NaN
                where unknown.
            output_hidden_states (`bool`, *optional*): return the encoder's hidden states.
            return_dict (`bool`, *optional*): return an [`ECGMultiTaskOutput`] instead of a tuple.

        The loss is computed when either labels tensor is given (the other one then counts as all missing).
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        outputs = self.ecg_encoder(input_values, lead_mask=lead_mask, time_mask=time_mask,
                                   output_hidden_states=output_hidden_states, return_dict=True)
        pooled = outputs.pooler_output
        batch = pooled.shape[0]

        def run(heads: nn.ModuleList) -> torch.Tensor:
            if len(heads) == 0:
                return pooled.new_zeros(batch, 0)
            return torch.stack([head(pooled) for head in heads], dim=1)

        logits = run(self.classification_heads)
        predictions = run(self.regression_heads)
        loss = classification_loss = regression_loss = task_losses = weights = None
        if classification_labels is not None or regression_labels is not None:
            targets = None
            if regression_labels is not None:
                targets = self.standardize(regression_labels.to(device=predictions.device,
                                                                dtype=predictions.dtype))
            task_losses, present = masked_task_losses(logits, predictions, classification_labels, targets)
            weights = task_loss_weights(present, self.config.loss_weighting, self.training, task_losses.dtype)
            loss = (weights * task_losses).sum()
            n_cls = logits.shape[1]
            classification_loss = _mean_present(task_losses[:n_cls], present[:n_cls])
            regression_loss = _mean_present(task_losses[n_cls:], present[n_cls:])
            task_losses, weights = task_losses.detach(), weights.detach()
        result = ECGMultiTaskOutput(
            loss=loss, classification_loss=classification_loss, regression_loss=regression_loss,
            task_losses=task_losses, loss_weights=weights, classification_logits=logits,
            regression_predictions=predictions, pooler_output=pooled, hidden_states=outputs.hidden_states,
        )
        return result if return_dict else result.to_tuple()

    @torch.no_grad()
    def predict(
        self,
        input_values: torch.Tensor,
        lead_mask: torch.Tensor | None = None,
        time_mask: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """`{task name: (batch,) tensor}`: the probability of every classification task (sigmoid of its logit) and
        the prediction of every regression task in its original unit (`config.regression_units`)."""
        out = self(input_values, lead_mask=lead_mask, time_mask=time_mask, return_dict=True)
        probabilities = torch.sigmoid(out.classification_logits)
        values = self.to_original_units(out.regression_predictions)
        result = {task: probabilities[:, j] for j, task in enumerate(self.config.classification_tasks)}
        result.update({task: values[:, j] for j, task in enumerate(self.config.regression_tasks)})
        return result

    @classmethod
    def from_encoder_pretrained(
        cls,
        ecg_model_name_or_path: str | os.PathLike | ECGEncoderConfig | ECGEncoderModel,
        ecg_model_kwargs: dict[str, Any] | None = None,
        **config_kwargs: Any,
    ) -> ECGEncoderForMultiTask:
        """A model around an existing encoder; the task heads start fresh.

        Args:
            ecg_model_name_or_path: a saved ECG encoder (folder or Hub id), an `ECGEncoderModel`, or an
                `ECGEncoderConfig` (random weights).
            ecg_model_kwargs: extra arguments of the encoder's `from_pretrained`.
            config_kwargs: other fields of [`ECGMultiTaskConfig`] (`classification_tasks`, `regression_tasks`, ...).
        """
        if isinstance(ecg_model_name_or_path, ECGEncoderModel):
            encoder = ecg_model_name_or_path
        elif isinstance(ecg_model_name_or_path, ECGEncoderConfig):
            encoder = ECGEncoderModel(ecg_model_name_or_path)
        else:
            encoder = ECGEncoderModel.from_pretrained(ecg_model_name_or_path, **(ecg_model_kwargs or {}))
        config = cls.config_class(ecg_config=encoder.config.to_dict(), **config_kwargs)
        return cls(config, ecg_encoder=encoder)


def _mean_present(losses: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Mean of `losses` over the `present` entries (0 when none)."""
    count = present.sum().clamp(min=1).to(losses.dtype)
    return torch.where(present, losses, torch.zeros_like(losses)).sum() / count


ECGEncoderForMultiTask.register_for_auto_class("AutoModel")

__all__ = [
    "ECGMultiTaskOutput",
    "ECGEncoderForMultiTask",
    "ECGTaskHead",
    "masked_task_losses",
    "task_loss_weights",
]
