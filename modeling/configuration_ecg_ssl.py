"""Configuration of the ECG-only self-supervised model: an ECG encoder, a projection head and a multi-positive
contrastive loss over the batch.

The positives of an anchor are the other ECGs of the (gathered) batch that share its `positive_ids` (views of the
same ECG, the same patient, demographic group or rhythm), whose wave attributes lie within `attribute_threshold`
of its own (the wave-attribute strategy of the "good views" paper, `||a_i - a_j||_2 <= h`), or that an explicit
mask names. The loss is `-log(sum_{p in P(i)} exp(s_ip / tau) / sum_{k != i} exp(s_ik / tau))` ("good views"
Eq. 1, `positive_aggregation="sum"`) or SupCon's mean over the positives of the log-probabilities
(`"mean"`); with one positive per anchor either is NT-Xent (SimCLR).

Paper settings ("good views"): ResNet encoder, 128-dimensional embeddings, tau = 0.07, batch 64.
"""

from __future__ import annotations

from typing import Any, ClassVar

from transformers import PreTrainedConfig
from transformers.activations import ACT2FN
from transformers.configuration_utils import SubConfigSpec

from .configuration_ecg_encoder import ECGEncoderConfig

#: How the positives of an anchor enter the loss: "sum" ("good views" Eq. 1) or "mean" (SupCon L_out).
POSITIVE_AGGREGATIONS: tuple[str, ...] = ("sum", "mean")


class ECGSelfSupervisedConfig(PreTrainedConfig):
    r"""
    Configuration of [`ECGSelfSupervisedModel`].

    Args:
        ecg_config (`ECGEncoderConfig` or `dict`, *optional*):
            The ECG encoder; defaults to `ECGEncoderConfig()` (1D ResNet18).
        projection_dim (`int`, defaults to 128): Dimension of the embedding the loss compares (`embeds`).
        projection_hidden_size (`int`, *optional*):
            Hidden width of the SimCLR projection head `Linear -> activation -> Linear`; `None` uses the encoder's
            pooled size (`ecg_config.hidden_size`, SimCLR's choice), `0` makes the head one linear layer.
        projection_activation (`str`, defaults to `"relu"`): Activation of the head's hidden layer (a name of
            transformers' `ACT2FN`).
        temperature (`float`, defaults to 0.07): Temperature `tau` of the contrastive loss.
        positive_aggregation (`str`, defaults to `"sum"`):
            `"sum"`: `-log` of the summed probability of the positives ("good views" Eq. 1); `"mean"`: mean of the
            positives' `-log` probabilities (SupCon).
        attribute_threshold (`float`, defaults to 1.0):
            Cut-off `h` of the wave-attribute strategy: two ECGs whose `positive_attributes` lie within this
            Euclidean distance are positives.

    Example:

    ```python
    >>> config = ECGSelfSupervisedConfig(ecg_config=ECGEncoderConfig(backbone="resnet1d_18"), projection_dim=128)
    >>> model = ECGSelfSupervisedModel(config)
    ```
    """

    model_type: ClassVar[str] = "ecg_self_supervised"
    sub_configs_defaults: ClassVar[dict[str, SubConfigSpec]] = {
        "ecg_config": SubConfigSpec(config_class=ECGEncoderConfig),
    }

    ecg_config: ECGEncoderConfig | dict | None = None
    projection_dim: int = 128
    projection_hidden_size: int | None = None
    projection_activation: str = "relu"
    temperature: int | float = 0.07
    positive_aggregation: str = "sum"
    attribute_threshold: int | float = 1.0

    def __post_init__(self, **kwargs: Any) -> None:
        super().__post_init__(**kwargs)
        self.validate_self_supervised_fields()

    def validate_self_supervised_fields(self) -> None:
        """Check the head, the temperature, the aggregation and the threshold."""
        if self.projection_dim < 1:
            raise ValueError(f"projection_dim must be positive, got {self.projection_dim}.")
        if self.projection_hidden_size is not None and self.projection_hidden_size < 0:
            raise ValueError(
                "projection_hidden_size must be None (the encoder's pooled size), 0 (one linear layer) or positive, "
                f"got {self.projection_hidden_size}."
            )
        if self.projection_activation not in ACT2FN:
            raise ValueError(f"projection_activation {self.projection_activation!r} is not an activation name of "
                             "transformers' ACT2FN (e.g. 'relu', 'gelu').")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}.")
        if self.positive_aggregation not in POSITIVE_AGGREGATIONS:
            raise ValueError(
                f"positive_aggregation must be one of {POSITIVE_AGGREGATIONS}, got {self.positive_aggregation!r}."
            )
        if not self.attribute_threshold >= 0:
            raise ValueError(f"attribute_threshold must be >= 0, got {self.attribute_threshold}.")

    @property
    def resolved_projection_hidden_size(self) -> int:
        """Hidden width of the projection head: `projection_hidden_size`, or the encoder's pooled size when it is
        `None` (0: the head is one linear layer)."""
        if self.projection_hidden_size is None:
            return self.ecg_config.hidden_size
        return self.projection_hidden_size


__all__ = ["ECGSelfSupervisedConfig", "POSITIVE_AGGREGATIONS"]

ECGSelfSupervisedConfig.register_for_auto_class()
