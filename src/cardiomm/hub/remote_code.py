"""The Python files a checkpoint ships for ``trust_remote_code`` loading: the modules its ``auto_map`` names, the
pipeline modules its ``config.json`` names in ``custom_pipelines``, and the sibling modules those import with
single-dot imports (found the way ``transformers`` finds them)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: The JSON files of a checkpoint whose ``auto_map`` (top level or nested) names code files.
AUTO_MAP_FILES: tuple[str, ...] = (
    "config.json",
    "adapter_config.json",
    "preprocessor_config.json",
    "processor_config.json",
    "tokenizer_config.json",
)


@dataclass
class RemoteCode:
    """The code files of a checkpoint folder: ``files`` present (sorted), ``missing`` as ``(file, named by)``."""

    files: list[str] = field(default_factory=list)
    missing: list[tuple[str, str]] = field(default_factory=list)


def _auto_maps(value: Any) -> Iterator[dict[str, Any]]:
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "auto_map" and isinstance(item, dict):
                yield item
            else:
                yield from _auto_maps(item)
    elif isinstance(value, list):
        for item in value:
            yield from _auto_maps(item)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err


def auto_map_modules(folder: str | os.PathLike) -> dict[str, list[str]]:
    """Module names (``modeling_ecg_text``) each JSON file of ``folder`` names in an ``auto_map``.

    References to code in another repository (``org/repo--module.Class``) are left out: they are not files
    of this folder.
    """
    root = Path(folder)
    modules: dict[str, list[str]] = {}
    for name in AUTO_MAP_FILES:
        path = root / name
        if not path.is_file():
            continue
        found: list[str] = []
        for auto_map in _auto_maps(_read_json(path)):
            for ref in auto_map.values():
                for entry in ref if isinstance(ref, (list, tuple)) else [ref]:
                    if isinstance(entry, str) and entry and "--" not in entry:
                        found.append(entry.rsplit(".", 1)[0])
        if found:
            modules[name] = list(dict.fromkeys(found))
    return modules


#: Where :func:`remote_code_files` says a pipeline module is named.
CUSTOM_PIPELINES_SOURCE = "config.json custom_pipelines"


def custom_pipeline_modules(folder: str | os.PathLike) -> list[str]:
    """Module names of the pipeline classes (``impl``) that ``config.json`` of ``folder`` names in
    ``custom_pipelines`` (what ``pipeline(task, model=folder, trust_remote_code=True)`` imports)."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        return []
    config = _read_json(path)
    pipelines = config.get("custom_pipelines") if isinstance(config, dict) else None
    found: list[str] = []
    for entry in (pipelines or {}).values() if isinstance(pipelines, dict) else ():
        impl = entry.get("impl") if isinstance(entry, dict) else None
        if isinstance(impl, str) and "." in impl and "--" not in impl:
            found.append(impl.rsplit(".", 1)[0])
    return list(dict.fromkeys(found))


def remote_code_files(folder: str | os.PathLike) -> RemoteCode:
    """Every ``.py`` file of ``folder`` that ``trust_remote_code`` loading would import.

    Starts from the modules named in ``auto_map`` and in ``config.json``'s ``custom_pipelines`` and follows
    single-dot imports (``transformers.dynamic_module_utils.get_relative_imports``) through the files present.
    """
    from transformers.dynamic_module_utils import get_relative_imports

    root = Path(folder)
    result = RemoteCode()
    queue = [(module, source) for source, modules in auto_map_modules(root).items() for module in modules]
    queue += [(module, CUSTOM_PIPELINES_SOURCE) for module in custom_pipeline_modules(root)]
    seen: set[str] = set()
    while queue:
        module, source = queue.pop(0)
        file_name = f"{module.replace('.', '/')}.py"
        if file_name in seen:
            continue
        seen.add(file_name)
        path = root / file_name
        if not path.is_file():
            result.missing.append((file_name, source))
            continue
        result.files.append(file_name)
        queue += [(name, file_name) for name in sorted(get_relative_imports(path))]
    result.files.sort()
    return result
