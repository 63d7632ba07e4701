"""Session-wide test settings.

``datasets`` converts every Parquet dataset it loads into Arrow files under ``HF_DATASETS_CACHE``
(``~/.cache/huggingface/datasets`` by default), keyed by the files' paths. Tests build their datasets in fresh
temporary folders, so each run would leave gigabytes of cache entries that no later run can reuse. The suite
therefore points the cache (for itself and every ``cardiomm`` subprocess, which inherit the environment) at a
folder of its own that is deleted when the session ends. This runs before any test module imports ``datasets``,
which reads the variable once, at import.
"""

from __future__ import annotations

import os
import shutil
import tempfile

_DATASETS_CACHE = tempfile.mkdtemp(prefix="cardiomm-tests-datasets-cache-")
os.environ["HF_DATASETS_CACHE"] = _DATASETS_CACHE


def pytest_sessionfinish(session, exitstatus) -> None:
    shutil.rmtree(_DATASETS_CACHE, ignore_errors=True)
