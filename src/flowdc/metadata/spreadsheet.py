"""CSV cells that a spreadsheet shows as text, never runs as a formula.

A CSV that FLOW-DC writes for people (attribution.csv) holds text from the input list: a creator
written `=HYPERLINK("http://evil","x")` or `@SUM(1+1)` would be a live formula once the file is
opened in Excel, LibreOffice or Google Sheets. OWASP's rule for CSV injection: a cell that starts
with `=`, `+`, `-`, `@`, a tab or a carriage return gets a single quote in front, which the
spreadsheet shows as text and which a reader can still recognise.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value: Any) -> Any:
    """`value`, with a single quote in front when it is text a spreadsheet would evaluate."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def safe_row(values: Iterable[Any]) -> list[Any]:
    return [safe_cell(value) for value in values]
