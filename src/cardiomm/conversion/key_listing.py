"""How the checkpoint converters list state-dict keys in their errors and summaries."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

MAX_LISTED = 20
"""Keys (or shape mismatches) named in one message; the rest are counted."""


def listing(items: Iterable[str], separator: str = ", ", sort: bool = True) -> str:
    """The first :data:`MAX_LISTED` of ``items`` (sorted unless ``sort=False``) joined by ``separator``, then
    "(and N more)"."""
    items = sorted(items) if sort else list(items)
    shown = separator.join(items[:MAX_LISTED])
    return shown + (f" (and {len(items) - MAX_LISTED} more)" if len(items) > MAX_LISTED else "")


def dropped_key_lines(dropped: Mapping[str, str]) -> list[str]:
    """The lines of a conversion summary that say which keys of the file were dropped, and why."""
    if not dropped:
        return ["keys dropped: none"]
    return [f"keys dropped: {len(dropped)}"] + [f"  {key}: {reason}" for key, reason in dropped.items()]
