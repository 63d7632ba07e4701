"""Uploading a saved checkpoint (weights, config, processor, remote code, model card) to the Hub."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "adapter_model.safetensors")
PREPROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json", "tokenizer_config.json")


def check_checkpoint(folder: str | os.PathLike) -> list[str]:
    """Return the problems that would make ``folder`` a broken Hub checkpoint (empty list: ready to push).

    A cardiomm checkpoint needs its config, weights, preprocessor, a model card, and every Python file named in
    the ``auto_map`` of its config and preprocessor config, so that ``trust_remote_code`` loading works.
    """
    root = Path(folder)
    if not root.is_dir():
        return [f"{root}: not a folder"]
    problems = []
    config = root / "config.json"
    if not config.is_file() and not (root / "adapter_config.json").is_file():
        problems.append("config.json is missing")
    if not any((root / f).is_file() for f in WEIGHT_FILES):
        problems.append(f"no weights file (one of {', '.join(WEIGHT_FILES)})")
    if not any((root / f).is_file() for f in PREPROCESSOR_FILES):
        problems.append("no preprocessor (feature extractor / processor / tokenizer config)")
    if not (root / "README.md").is_file():
        problems.append("README.md (model card) is missing")
    for name in ("config.json", *PREPROCESSOR_FILES):
        path = root / name
        if not path.is_file():
            continue
        auto_map: dict[str, Any] = json.loads(path.read_text()).get("auto_map", {})
        for ref in auto_map.values():
            for entry in ref if isinstance(ref, (list, tuple)) else [ref]:
                if entry and "--" not in entry and not (root / f"{entry.rsplit('.', 1)[0]}.py").is_file():
                    problems.append(f"{name} auto_map names {entry} but its .py file is missing")
    return problems


def push_checkpoint(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    commit_message: str = "Upload cardiomm checkpoint",
    api: Any = None,
) -> str:
    """Create ``repo_id`` if needed and upload ``folder`` to it; returns the commit URL.

    The folder is checked first (:func:`check_checkpoint`) and nothing is uploaded if it is incomplete.
    ``api`` defaults to ``huggingface_hub.HfApi(token=token)``.
    """
    problems = check_checkpoint(folder)
    if problems:
        raise ValueError(f"{folder}: not a complete checkpoint: " + "; ".join(problems))
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
    api.create_repo(repo_id=repo_id, repo_type="model", private=private, exist_ok=True)
    info = api.upload_folder(
        repo_id=repo_id,
        repo_type="model",
        folder_path=str(folder),
        commit_message=commit_message,
        ignore_patterns=["checkpoints/*", "*.pt", "runs/*", "__pycache__/*"],
    )
    return str(getattr(info, "commit_url", info))
