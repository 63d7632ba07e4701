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
