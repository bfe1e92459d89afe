"""CSV cells that a spreadsheet shows as text, never runs as a formula.

A CSV that FLOW-DC writes for people (attribution.csv) holds text from the input list: a creator
written `=HYPERLINK("http://evil","x")` or `@SUM(1+1)` would be a live formula once the file is
opened in Excel, LibreOffice or Google Sheets. OWASP's rule for CSV injection: a cell that starts
with `=`, `+`, `-`, `@`, a tab or a carriage return gets a single quote in front, which the
spreadsheet shows as text and which a reader can still recognise.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

FORMULA_START = r"^[=+\-@\t\r]"
"""A cell that starts with one of these characters is a formula to a spreadsheet."""


def safe_text(column: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """A text column whose cells that start like a formula have a single quote in front."""
    formula = pc.match_substring_regex(column, FORMULA_START)
    return pc.if_else(formula, pc.binary_join_element_wise("'", column, ""), column)
