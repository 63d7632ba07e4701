"""The ``transformers`` pipelines of cardiomm: ``ecg-classification`` and ``zero-shot-ecg-classification``.

``import cardiomm`` registers both tasks with ``transformers.pipelines.PIPELINE_REGISTRY``, so
``pipeline("ecg-classification", model=folder)`` runs the installed pipeline classes. A checkpoint also carries
the pipeline's code (:func:`save_custom_pipeline`: the file next to the weights and a ``custom_pipelines`` entry in
``config.json``, as transformers' ``Pipeline.save_pretrained`` writes them), so that
``pipeline(task, model=folder, trust_remote_code=True)`` works where cardiomm is not installed.

With cardiomm installed, a checkpoint's ``custom_pipelines`` entry for a task cardiomm registers is not reported
by the installed configuration classes (the entry stays in ``config.json`` and in ``to_dict()``): transformers
would otherwise insist on ``trust_remote_code=True`` and run the folder's copy of the pipeline instead of the
installed one.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
from pathlib import Path
from typing import Any

#: The tasks cardiomm registers.
PIPELINE_TASKS: tuple[str, ...] = ("ecg-classification", "zero-shot-ecg-classification")
CUSTOM_PIPELINES_KEY = "custom_pipelines"


def _task_entries() -> dict[str, dict[str, Any]]:
    """Per task: the pipeline class, the Auto classes it loads the model with, and the task type."""
    from transformers import AutoModel, AutoModelForSequenceClassification

    from ..processing.pipeline_ecg_classification import ECGClassificationPipeline
    from ..processing.pipeline_zero_shot_ecg_classification import ZeroShotECGClassificationPipeline

    return {
        # AutoModel second: a checkpoint of another kind still loads, and the pipeline says what it is
        "ecg-classification": {"impl": ECGClassificationPipeline,
                               "pt": (AutoModelForSequenceClassification, AutoModel)},
        "zero-shot-ecg-classification": {"impl": ZeroShotECGClassificationPipeline, "pt": (AutoModel,),
                                         "type": "multimodal"},
    }


def _installed_tasks() -> set[str]:
    """The tasks whose registered pipeline class is cardiomm's."""
    from transformers.pipelines import PIPELINE_REGISTRY

    impls = {task: (PIPELINE_REGISTRY.supported_tasks.get(task) or {}).get("impl") for task in PIPELINE_TASKS}
    return {task for task, impl in impls.items() if getattr(impl, "__module__", "").startswith("cardiomm.")}


def _custom_pipelines_get(config: Any) -> dict[str, Any]:
    try:
        stored = config.__dict__[CUSTOM_PIPELINES_KEY]
    except KeyError:
        raise AttributeError(CUSTOM_PIPELINES_KEY) from None
    if not isinstance(stored, dict):
        return stored
    installed = _installed_tasks()
    return {task: entry for task, entry in stored.items() if task not in installed}


def _custom_pipelines_set(config: Any, value: Any) -> None:
    config.__dict__[CUSTOM_PIPELINES_KEY] = value


def _custom_pipelines_delete(config: Any) -> None:
    config.__dict__.pop(CUSTOM_PIPELINES_KEY, None)


#: ``config.custom_pipelines`` of the installed cardiomm configuration classes (see the module docstring).
INSTALLED_CUSTOM_PIPELINES = property(
    _custom_pipelines_get, _custom_pipelines_set, _custom_pipelines_delete,
    doc="The checkpoint's custom pipelines, less the tasks the installed cardiomm runs itself.",
)


def register_pipelines() -> None:
    """Register ``ecg-classification`` and ``zero-shot-ecg-classification`` with transformers' pipeline registry
    (idempotent; called by ``import cardiomm``)."""
    from transformers.pipelines import PIPELINE_REGISTRY

    from ..auto import CONFIGS

    for task, entry in _task_entries().items():
        current = PIPELINE_REGISTRY.supported_tasks.get(task)
        if current is None or current.get("impl") is not entry["impl"]:
            PIPELINE_REGISTRY.register_pipeline(task, pipeline_class=entry["impl"], pt_model=entry["pt"],
                                                type=entry.get("type"))
    for _, config_class in CONFIGS:
        if config_class.__dict__.get(CUSTOM_PIPELINES_KEY) is not INSTALLED_CUSTOM_PIPELINES:
            setattr(config_class, CUSTOM_PIPELINES_KEY, INSTALLED_CUSTOM_PIPELINES)


def pipeline_entry(task: str) -> dict[str, Any]:
    """The ``custom_pipelines`` entry of ``task`` as ``Pipeline.save_pretrained`` writes it: ``impl`` as
    ``"module.Class"``, ``pt`` as the names of the Auto classes (and ``type`` when registered with one)."""
    entries = _task_entries()
    if task not in entries:
        raise ValueError(f"unknown cardiomm pipeline task {task!r}; choose one of {list(PIPELINE_TASKS)}")
    info = dict(entries[task])
    impl = info["impl"]
    info["impl"] = f"{impl.__module__.split('.')[-1]}.{impl.__name__}"
    info["pt"] = [c.__name__ for c in info["pt"]]
    return info


def pipeline_files(task: str) -> list[Path]:
    """The pipeline's source file and the sibling modules it imports (single-dot imports, followed the way
    transformers follows them)."""
    from transformers.dynamic_module_utils import get_relative_import_files

    entries = _task_entries()
    if task not in entries:
        raise ValueError(f"unknown cardiomm pipeline task {task!r}; choose one of {list(PIPELINE_TASKS)}")
    source = Path(inspect.getfile(entries[task]["impl"]))
    return [source, *sorted(Path(p) for p in get_relative_import_files(source))]


def save_custom_pipeline(folder: str | os.PathLike, task: str) -> None:
    """Ship the pipeline of ``task`` with the checkpoint in ``folder``: copy its code file (and the sibling modules
    it imports) into the folder and add its ``custom_pipelines`` entry to ``config.json``, as transformers'
    ``Pipeline.save_pretrained`` does. Entries of other tasks are kept.

    Raises:
        ValueError: for an unknown task, or a folder without a readable ``config.json``.
    """
    entry = pipeline_entry(task)
    root = Path(folder)
    config_path = root / "config.json"
    if not config_path.is_file():
        raise ValueError(f"{config_path}: missing, so {root} is not a saved checkpoint (save the model first)")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{config_path}: not valid JSON ({err})") from err
    if not isinstance(config, dict):
        raise ValueError(f"{config_path}: not a model configuration (a JSON object)")
    for source in pipeline_files(task):
        shutil.copyfile(source, root / source.name)
    pipelines = config.get(CUSTOM_PIPELINES_KEY)
    config[CUSTOM_PIPELINES_KEY] = {**(pipelines if isinstance(pipelines, dict) else {}), task: entry}
    tmp = config_path.with_name(config_path.name + ".tmp")
    tmp.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, config_path)


__all__ = ["PIPELINE_TASKS", "pipeline_entry", "pipeline_files", "register_pipelines", "save_custom_pipeline"]
