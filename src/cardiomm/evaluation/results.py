"""Saving evaluation results: a JSON file on disk and a Markdown table for the screen or a model card."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..tables import format_table


def to_jsonable(value: Any) -> Any:
    """Plain-JSON form of a result: dataclasses and numpy values converted, NaN/inf written as ``null``."""
    if hasattr(value, "to_dict") and not isinstance(value, type):
        return to_jsonable(value.to_dict())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_jsonable(dataclasses.asdict(value))
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return to_jsonable(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def save_results(results: Any, path: str | os.PathLike) -> Path:
    """Write ``results`` (dicts, lists, dataclasses with ``to_dict``, numpy values) as indented JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(to_jsonable(results), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return path


def load_results(path: str | os.PathLike) -> Any:
    """Read a results JSON file written by :func:`save_results`."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def results_table(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None, floatfmt: str = ".3f"
) -> str:
    """Markdown table of result rows (e.g. ``LinearProbeResult.rows()``); missing values print as empty."""
    clean = [{k: (v.item() if isinstance(v, np.generic) else v) for k, v in r.items()} for r in rows]
    return format_table(clean, columns=columns, floatfmt=floatfmt)


def write_results(
    results: Any, rows: Sequence[Mapping[str, Any]], path: str | os.PathLike, columns: Sequence[str] | None = None
) -> str:
    """Save ``results`` as JSON at ``path`` and return the Markdown table of ``rows``."""
    save_results(results, path)
    return results_table(rows, columns=columns)
