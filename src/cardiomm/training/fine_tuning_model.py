"""The model side of fine-tuning: a classifier on a pretrained ECG encoder, its LoRA variant and the head warm-up.

- :func:`build_classifier` puts the EHR paper's head (an MLP 128 → 64 with ReLU and dropout 0.2, then a linear
  layer; ``classifier_head: linear`` for a linear probe) on the weights of any :class:`~cardiomm.ECGEncoderModel`,
  or on a freshly initialised copy of its architecture (the from-scratch baseline).
- :func:`wrap_with_lora` adds a PEFT LoRA adapter to the encoder's convolutions (ResNets) or attention and MLP
  projections (ViTs); the head and the ResNets' batch norms are trained and saved whole with the adapter.
- :class:`HeadWarmup` freezes the backbone for the first ``steps`` optimiser steps: its parameters stop requiring
  gradients (AdamW then leaves them untouched, weight decay included) and the whole backbone runs in eval mode
  (batch norms use and keep their running statistics, no dropout). Whether a forward pass is in the warm-up is
  read from the training loop's ``global_step`` at that very pass, so a run resumed from any checkpoint, on
  either side of the boundary, takes exactly the path of the uninterrupted run. With LoRA the warm-up trains the
  head alone too; the adapter (and the batch-norm copies) train after it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

HEAD_ATTRIBUTE = "classifier"
"""Attribute of :class:`~cardiomm.ECGEncoderForSequenceClassification` holding the classification head."""


def build_classifier(
    encoder: Any,
    id2label: Mapping[int, str],
    problem_type: str,
    head: Mapping[str, Any] | None = None,
    from_scratch: bool = False,
) -> Any:
    """An :class:`~cardiomm.ECGEncoderForSequenceClassification` whose encoder carries ``encoder``'s weights.

    Args:
        encoder: an :class:`~cardiomm.ECGEncoderModel` (e.g. from
            :func:`~cardiomm.evaluation.checkpoint.load_ecg_encoder`); it is not modified.
        id2label: ``{index: label name}`` of the task.
        problem_type: ``"multi_label_classification"`` (BCE) or ``"single_label_classification"`` (cross-entropy).
        head: ``classifier_head`` (``"mlp"`` or ``"linear"``), ``classifier_hidden_sizes``, ``classifier_dropout``.
        from_scratch: keep the freshly initialised weights (the same architecture, random initialisation: the
            baseline fine-tuning is compared with) instead of copying ``encoder``'s.

    The head is initialised from PyTorch's global generator (seed it first for a reproducible run).
    """
    from ..modeling.configuration_ecg_encoder import ECGEncoderConfig
    from ..modeling.modeling_ecg_encoder import ECGEncoderForSequenceClassification

    values = encoder.config.to_dict()
    for key in ("architectures", "auto_map", "id2label", "label2id", "num_labels", "problem_type", "custom_pipelines",
                "transformers_version", "model_type", "_name_or_path", "dtype", "torch_dtype"):
        values.pop(key, None)
    head = dict(head or {})
    values.update(
        classifier_head=head.get("classifier_head", "mlp"),
        classifier_hidden_sizes=list(head.get("classifier_hidden_sizes", (128, 64))),
        classifier_dropout=float(head.get("classifier_dropout", 0.2)),
    )
    labels = {int(i): str(name) for i, name in id2label.items()}
    config = ECGEncoderConfig(**values, id2label=labels, label2id={v: k for k, v in labels.items()},
                              problem_type=problem_type)
    model = ECGEncoderForSequenceClassification(config)
    if not from_scratch:
        missing, unexpected = model.ecg_encoder.load_state_dict(encoder.state_dict(), strict=False)
        if missing or unexpected:
            raise ValueError(f"the encoder's weights do not fit its own configuration (missing {missing}, "
                             f"unexpected {unexpected})")
    return model.train()


def wrap_with_lora(model: Any, lora: Mapping[str, Any] | None = None) -> Any:
    """``model`` (an :class:`~cardiomm.ECGEncoderForSequenceClassification`) wrapped in a PEFT LoRA adapter.

    ``lora`` takes ``r`` (8), ``lora_alpha`` (16), ``lora_dropout`` (0.0), ``target_modules`` (default: the
    model's ``lora_target_modules``) and ``modules_to_save`` (default: ``lora_modules_to_save``: the head and the
    ResNets' batch norms).
    """
    from peft import LoraConfig, get_peft_model

    lora = dict(lora or {})
    config = LoraConfig(
        r=int(lora.get("r", 8)),
        lora_alpha=float(lora.get("lora_alpha", 16)),
        lora_dropout=float(lora.get("lora_dropout", 0.0)),
        target_modules=list(lora.get("target_modules") or model.lora_target_modules),
        modules_to_save=list(lora.get("modules_to_save") or model.lora_modules_to_save),
    )
    return get_peft_model(model, config)


def base_classifier(model: Any) -> Any:
    """The :class:`~cardiomm.ECGEncoderForSequenceClassification` inside ``model`` (itself, or a PEFT model's)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def count_parameters(parameters: Sequence[torch.nn.Parameter]) -> int:
    """Number of values in ``parameters`` (each tensor counted once)."""
    seen: dict[int, int] = {id(p): p.numel() for p in parameters}
    return sum(seen.values())


class HeadWarmup:
    """Train the head alone for the first ``steps`` optimiser steps, then everything that is trainable.

    Args:
        model: the model being trained (plain classifier or PEFT model); the parameters that require gradients
            when this object is made are the trainable set (the head's plus the backbone's).
        steps: optimiser steps of the warm-up (0: no warm-up).
        global_step: returns the number of optimiser steps completed so far (the loop's ``state.global_step``).

    Build it after the optimiser (which must hold every trainable parameter: a frozen parameter left out of it
    could never be unfrozen). A forward pre-hook sets, before every forward pass, ``requires_grad`` of the
    backbone's trainable parameters and, in training mode, the backbone's mode; :meth:`remove` detaches it.
    """

    def __init__(self, model: torch.nn.Module, steps: int, global_step: Callable[[], int]) -> None:
        if steps < 0:
            raise ValueError(f"the head warm-up must be >= 0 steps, got {steps}")
        self.steps = int(steps)
        self.global_step = global_step
        classifier = base_classifier(model)
        head_ids = {id(p) for p in getattr(classifier, HEAD_ATTRIBUTE).parameters()}
        trainable = [p for p in model.parameters() if p.requires_grad]
        self.head_parameters = [p for p in trainable if id(p) in head_ids]
        self.backbone_parameters = [p for p in trainable if id(p) not in head_ids]
        if not self.head_parameters:
            raise ValueError("the classification head has no trainable parameter")
        self.backbone = classifier.ecg_encoder
        self.frozen: bool | None = None
        self._handle = model.register_forward_pre_hook(self._before_forward)

    @property
    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """Every parameter fine-tuning trains (head and backbone), whatever the current phase."""
        return self.head_parameters + self.backbone_parameters

    def in_warmup(self, step: int | None = None) -> bool:
        """Whether optimiser step ``step + 1`` (default: the next one) trains the head alone."""
        return (self.global_step() if step is None else step) < self.steps

    def apply(self, training: bool) -> None:
        """Set the backbone's ``requires_grad`` and (when ``training``) its mode for the next forward pass."""
        frozen = self.in_warmup()
        if frozen != self.frozen:
            for parameter in self.backbone_parameters:
                parameter.requires_grad_(not frozen)
            self.frozen = frozen
        if training:
            self.backbone.train(not frozen)

    def remove(self) -> None:
        """Detach the hook and leave every trainable parameter trainable."""
        self._handle.remove()
        for parameter in self.backbone_parameters:
            parameter.requires_grad_(True)
        self.frozen = None

    def _before_forward(self, module: torch.nn.Module, args: Any) -> None:
        self.apply(module.training)


__all__ = [
    "HEAD_ATTRIBUTE",
    "HeadWarmup",
    "base_classifier",
    "build_classifier",
    "count_parameters",
    "wrap_with_lora",
]
