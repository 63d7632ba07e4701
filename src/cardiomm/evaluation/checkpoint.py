"""Loading an ECG–text checkpoint folder for evaluation without running code shipped in the folder.

A checkpoint's ``auto_map`` points at Python files saved next to the weights; ``trust_remote_code=True`` lets
``transformers`` import them, which runs whatever they contain. cardiomm's own model types never need that:
``import cardiomm`` registers their classes with the Auto classes, and the installed classes are used. A folder
whose model type is neither a cardiomm nor a ``transformers`` one loads only with ``trust_remote_code=True``
(``cardiomm evaluate --trust-remote-code``), which is for code the user trusts.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..hub.remote_code import remote_code_files


def checkpoint_model_type(folder: str | os.PathLike) -> str | None:
    """The ``model_type`` in ``folder/config.json``; ``FileNotFoundError`` / ``ValueError`` name the file."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such checkpoint folder")
    config = root / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"{config}: missing, so {root} is not a saved checkpoint")
    try:
        return json.loads(config.read_text(encoding="utf-8")).get("model_type")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as err:
        raise ValueError(f"{config}: not a valid config ({err})") from err


def require_known_model_type(folder: str | os.PathLike) -> None:
    """Raise ``ValueError`` when the model type of ``folder`` has no installed class (cardiomm registers its
    own), so that loading it would import the Python files shipped in the folder."""
    from transformers import CONFIG_MAPPING  # holds the cardiomm types too: importing cardiomm registers them

    model_type = checkpoint_model_type(folder)
    if model_type in CONFIG_MAPPING:
        return
    code = remote_code_files(folder).files
    shipped = f"the Python files shipped in the folder ({', '.join(code)})" if code else "code shipped with it"
    raise ValueError(
        f"{Path(folder) / 'config.json'}: model type {model_type!r} is not a cardiomm or transformers model; "
        f"loading it would import and run {shipped}. Pass --trust-remote-code (trust_remote_code=True) only if "
        "you trust that code."
    )


def check_loadable_model_type(folder: str | os.PathLike, trust_remote_code: bool = False) -> None:
    """Read the model type of ``folder`` (``ValueError`` for a missing or invalid config) and, without
    ``trust_remote_code``, refuse a type whose loading would run code shipped in the folder
    (:func:`require_known_model_type`)."""
    if trust_remote_code:
        checkpoint_model_type(folder)
    else:
        require_known_model_type(folder)


def load_ecg_text_checkpoint(folder: str | os.PathLike, trust_remote_code: bool = False) -> tuple[Any, Any]:
    """Load ``(model, processor)`` of an ECG–text dual encoder saved with its processor.

    Without ``trust_remote_code`` no Python file of the folder is imported: cardiomm and ``transformers`` model
    types load with the installed classes, and any other model type raises ``ValueError`` (see
    :func:`require_known_model_type`). The model is returned in eval mode.
    """
    from transformers import AutoModel, AutoProcessor

    root = Path(folder)
    check_loadable_model_type(root, trust_remote_code)
    try:
        model = AutoModel.from_pretrained(root, trust_remote_code=trust_remote_code).eval()
        processor = AutoProcessor.from_pretrained(root, trust_remote_code=trust_remote_code)
    except OSError as err:
        raise ValueError(f"{root}: cannot load the checkpoint: {err}") from err
    if not all(hasattr(model, name) for name in ("get_ecg_features", "get_text_features")) or not all(
        getattr(processor, name, None) is not None for name in ("feature_extractor", "tokenizer")
    ):
        raise ValueError(
            f"{root}: evaluation needs an ECG–text dual encoder saved with its processor (feature extractor and "
            f"tokenizer); this folder holds {type(model).__name__} with {type(processor).__name__}"
        )
    return model, processor


def find_ecg_encoder(model: Any) -> Any:
    """The :class:`~cardiomm.ECGEncoderModel` inside ``model``: the model itself, or the one ECG encoder it holds
    (the ECG tower of a dual encoder, K-MERL, CLERC or a self-supervised model, the encoder of a classifier or a
    multi-task model). ``ValueError`` when it holds none or several at the top level."""
    from ..modeling.modeling_ecg_encoder import ECGEncoderModel

    if isinstance(model, ECGEncoderModel):
        return model
    found: list[tuple[str, Any]] = []
    for name, module in model.named_modules():
        if isinstance(module, ECGEncoderModel) and not any(name.startswith(f"{outer}.") for outer, _ in found):
            found.append((name, module))
    if len(found) != 1:
        held = ", ".join(name for name, _ in found) or "none"
        raise ValueError(f"{type(model).__name__} must hold exactly one ECG encoder (ECGEncoderModel); it holds {held}")
    return found[0][1]


def load_ecg_encoder(folder: str | os.PathLike, trust_remote_code: bool = False) -> tuple[Any, Any]:
    """``(encoder, feature_extractor)`` from any cardiomm checkpoint folder that contains an ECG encoder.

    Works for a plain encoder, a classifier, a multi-task model and the ECG tower of every multimodal and
    self-supervised model: ``encoder`` is an :class:`~cardiomm.ECGEncoderModel` (in eval mode) whose
    ``pooler_output`` is the ECG representation, ``feature_extractor`` the checkpoint's
    :class:`~cardiomm.ECGFeatureExtractor` (its own, or its processor's). Without ``trust_remote_code`` no Python
    file of the folder is imported (:func:`check_loadable_model_type`). ``ValueError`` naming the folder when it
    is not a checkpoint, holds no ECG encoder, or has no ECG feature extractor.
    """
    from transformers import AutoFeatureExtractor, AutoModel, AutoModelForSequenceClassification, AutoProcessor

    root = Path(folder)
    try:
        check_loadable_model_type(root, trust_remote_code)
    except FileNotFoundError as err:
        raise ValueError(str(err)) from err
    architectures = json.loads((root / "config.json").read_text(encoding="utf-8")).get("architectures") or []
    # a classifier loads as one, so that its head's weights are expected rather than reported as unused
    auto_class = (AutoModelForSequenceClassification
                  if any(str(name).endswith("ForSequenceClassification") for name in architectures) else AutoModel)
    try:
        model = auto_class.from_pretrained(root, trust_remote_code=trust_remote_code)
    except (OSError, KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{root}: cannot load the checkpoint: {err}") from err
    try:
        encoder = find_ecg_encoder(model).eval()
    except ValueError as err:
        raise ValueError(f"{root}: {err}") from err
    feature_extractor = None
    for auto_class in (AutoFeatureExtractor, AutoProcessor):
        try:
            loaded = auto_class.from_pretrained(root, trust_remote_code=trust_remote_code)
        except (OSError, KeyError, TypeError, ValueError):
            continue
        loaded = getattr(loaded, "feature_extractor", None) or loaded
        if all(hasattr(loaded, name) for name in ("lead_names", "sampling_rate", "crop_length")):
            feature_extractor = loaded
            break
    if feature_extractor is None:
        raise ValueError(f"{root}: no ECG feature extractor (preprocessor_config.json of an ECGFeatureExtractor, or "
                         "a processor holding one) was saved with the model")
    return encoder, feature_extractor
