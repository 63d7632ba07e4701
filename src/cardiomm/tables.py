"""Plain-text tables for benchmark and evaluation results printed on screen."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def _fmt(value: Any, floatfmt: str) -> str:
    text = format(value, floatfmt) if isinstance(value, float) else str(value)
    return text.replace("|", "\\|")  # a pipe inside a cell would end it


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None, floatfmt: str = ".3g") -> str:
    """Format ``rows`` (dicts sharing keys) as an aligned Markdown table; ``columns`` picks and orders keys.

    Pipes inside cells are escaped (``\\|``), so every printed row has one cell per column."""
    if not rows:
        return "(no rows)"
    cols = list(columns) if columns is not None else list(dict.fromkeys(k for r in rows for k in r))
    header = [_fmt(c, floatfmt) for c in cols]
    cells = [[_fmt(r.get(c, ""), floatfmt) for c in cols] for r in rows]
    widths = [max(len(h), *(len(row[i]) for row in cells)) for i, h in enumerate(header)]
    line = lambda vals: "| " + " | ".join(v.rjust(w) for v, w in zip(vals, widths)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), sep, *(line(r) for r in cells)])
