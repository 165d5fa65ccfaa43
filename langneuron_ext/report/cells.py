"""Markdown table cells, one way for every table: `|` escaped (GFM splits cells on it), missing
or non-finite numbers shown as "–" (never "nan" or "+nan"), one number format per column."""
from __future__ import annotations

import math
from typing import Iterable, Optional

MISSING = "–"


def cell(value) -> str:
    """Any value as table-cell text: `|` escaped, line breaks folded to spaces."""
    return str(value).replace("\\|", "|").replace("|", "\\|").replace("\n", " ")


def num(value: Optional[float], fmt: str = "{:.3f}") -> str:
    """`fmt.format(value)`, or MISSING for None, NaN and infinities."""
    if value is None:
        return MISSING
    try:
        if not math.isfinite(float(value)):
            return MISSING
    except (TypeError, ValueError):
        return MISSING
    return fmt.format(value)


def row(cells: Iterable) -> str:
    """A markdown table row of already formatted cells (each escaped by `cell`)."""
    return "| " + " | ".join(cell(c) for c in cells) + " |"
