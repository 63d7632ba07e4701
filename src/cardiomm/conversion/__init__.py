"""Porting of original research checkpoints to cardiomm models (``save_pretrained`` folders that load with
``AutoModel.from_pretrained``)."""

from .merl import (
    MERL_LOGIT_SCALE,
    MERL_MAX_TEXT_LENGTH,
    MERL_TEXT_MODEL,
    MERLConversion,
    convert_merl_checkpoint,
    merl_state_dict_to_cardiomm,
)

__all__ = [
    "MERL_LOGIT_SCALE",
    "MERL_MAX_TEXT_LENGTH",
    "MERL_TEXT_MODEL",
    "MERLConversion",
    "convert_merl_checkpoint",
    "merl_state_dict_to_cardiomm",
]
