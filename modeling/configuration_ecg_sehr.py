"""Configuration of the ECG–sEHR dual encoder (the ECG-sEHR model of Lalam et al., Section 3.3).

An ECG encoder and sEHR-BERT (the BERT over medical-code timelines, [`SEHRBertConfig`]) are aligned in one joint
ECG–sEHR space with the ConVIRT loss (Eq. 1). Paper settings, the defaults here: the EHR paper's 8-conv 1D ResNet
(`ecg_config=ECGEncoderConfig(backbone="resnet1d_8")`), sEHR-BERT initialised from its MLM pre-training, global
average pooling of both towers, MLP projections, λ_es = 0.5, a fixed τ = 0.1 (`logit_scale_init_value =
log(1 / 0.1)`), the first 3 sEHR-BERT layers (and its embeddings) frozen, no uni-modal alignment.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

from transformers.configuration_utils import SubConfigSpec

from .configuration_ecg_contrastive import ECGDualEncoderConfig
from .configuration_ecg_encoder import ECGEncoderConfig
from .configuration_sehr_bert import SEHRBertConfig


class ECGSEHRDualEncoderConfig(ECGDualEncoderConfig):
    r"""
    Configuration of [`ECGSEHRDualEncoder`].

    Args:
        ecg_config (`ECGEncoderConfig` or `dict`, *optional*): ECG tower; defaults to the 8-conv 1D ResNet.
        ehr_config (`SEHRBertConfig` or `dict`, *optional*): sEHR-BERT tower; defaults to the paper's shape
            (5 layers, hidden 320, 5 heads). Its vocabulary and time table must match the `MedicalCodeTokenizer`.
        ehr_model_name_or_path (`str`, *optional*): Where the sEHR tower's pretrained weights come from;
            informative only (set by [`ECGSEHRDualEncoder.from_ecg_ehr_pretrained`]).
        ehr_pooling (`str`, defaults to `"mean"`): sEHR embedding fed to the projection: `"mean"` (global average of
            the final code states, the paper), `"cls"` or `"pooler"` (the tower's `pooler_output`).
        freeze_ehr_layers (`int`, defaults to 3): Freeze sEHR-BERT's embeddings and first `N` layers (`-1`: the whole
            tower, `0`: nothing). The paper freezes 3 of 5.
        projection_dim (`int`, defaults to 256): Dimension of the joint ECG–sEHR space Ω_es.
        projection_hidden_size (`int`, defaults to 256): Hidden width of the MLP projections.
        projection_type (`str`, defaults to `"mlp"`): `"mlp"` or `"linear"` (see [`ECGDualEncoderConfig`]).
        logit_scale_init_value (`float`, defaults to `log(1 / 0.1)`): Log of the inverse temperature (τ = 0.1).
        learnable_temperature (`bool`, defaults to `False`): Learn `logit_scale` instead of keeping τ fixed.
        loss (`str`, defaults to `"convirt"`): `"convirt"` (Eq. 1 of the paper) or `"clip"`.
        convirt_lambda (`float`, defaults to 0.5): λ_es, the weight of the ECG→sEHR direction.
        unimodal_alignment (`bool`, defaults to `False`): Add MERL's uni-modal alignment loss (not in the paper).
        uma_dropout (`float`, defaults to 0.1) / uma_weight (`float`, defaults to 1.0): UMA settings.
        freeze_ecg (`bool`, defaults to `False`): Freeze the ECG tower.

    Example:

    ```python
    >>> config = ECGSEHRDualEncoderConfig(ehr_config=SEHRBertConfig.from_tokenizer(tokenizer))
    >>> model = ECGSEHRDualEncoder(config)
    ```
    """

    model_type: ClassVar[str] = "ecg_sehr_dual_encoder"
    partner_modalities: ClassVar[tuple[str, ...]] = ("ehr",)
    sub_configs_defaults: ClassVar[dict[str, SubConfigSpec]] = {
        "ecg_config": SubConfigSpec(config_class=ECGEncoderConfig, init_kwargs={"backbone": "resnet1d_8"}),
        "ehr_config": SubConfigSpec(config_class=SEHRBertConfig),
    }

    ehr_config: SEHRBertConfig | dict | None = None
    ehr_model_name_or_path: str | None = None
    ehr_pooling: str = "mean"
    freeze_ehr_layers: int = 3
    logit_scale_init_value: int | float = math.log(1 / 0.1)
    loss: str = "convirt"
    unimodal_alignment: bool = False

    @classmethod
    def from_ecg_ehr_configs(
        cls, ecg_config: ECGEncoderConfig, ehr_config: SEHRBertConfig, **kwargs: Any
    ) -> ECGSEHRDualEncoderConfig:
        """Build the configuration from the two tower configurations (copied as dicts)."""
        return cls(ecg_config=ecg_config.to_dict(), ehr_config=ehr_config.to_dict(), **kwargs)


__all__ = ["ECGSEHRDualEncoderConfig"]

ECGSEHRDualEncoderConfig.register_for_auto_class()
