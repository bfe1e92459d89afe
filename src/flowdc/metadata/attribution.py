"""attribution.csv and the licence summary: who must be credited for each stored image.

Both are computed from the committed results tables (the input's licence, creator and rights
columns travel into them), so they are right after a resume and under any engine. CC-BY and
CC-BY-NC oblige whoever publishes the dataset to credit each creator: attribution.csv has one
line per stored image with its licence, rights holder, creator and a link to its source record.
"""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from flowdc.config.options import DownloadConfig
from flowdc.core.layout import ATTRIBUTION_FILE, temp_name
from flowdc.core.licenses import canonical, display_name, split_filter
from flowdc.core.status import SUCCESS
from flowdc.metadata.spreadsheet import safe_text
from flowdc.metadata.tables import shard_tables, value_counts
from flowdc.planning.license_columns import plan_license_column
from flowdc.planning.plan import Plan

ATTRIBUTION_COLUMNS = (
    "key",
    "path",
    "url",
    "license",
    "license_name",
    "rightsHolder",
    "creator",
    "publisher",
    "title",
    "source_record",
)
# Input columns read for each attribution field (first one the input has), any case.
_SOURCES = {
    "rightsHolder": ("rightsHolder", "rights_holder", "owner"),
    "creator": ("creator", "author", "photographer", "artist"),
    "publisher": ("publisher",),
    "title": ("title",),
}
# The source record: the page the image is shown on, else the GBIF occurrence, else its id.
_RECORD_SOURCES = ("references", "source_record", "source_url", "gbifID", "occurrenceID")
GBIF_OCCURRENCE = "https://www.gbif.org/occurrence/"


def _columns(plan: Plan) -> dict[str, str]:
    """Input column name (lower case) -> the results table's column name."""
    return {source.lower(): name for name, source in plan.extra_columns.items()}


def _pick(columns: dict[str, str], names: tuple[str, ...]) -> str | None:
    return next((columns[n.lower()] for n in names if n.lower() in columns), None)


def license_summary(plan: Plan, config: DownloadConfig) -> dict[str, Any] | None:
    """Rows and stored images per licence (canonical URL), or None without a licence column."""
    column = plan_license_column(plan.extra_columns, config)
    if column is None:
        return None
    rows: Counter[str] = Counter()
    images: Counter[str] = Counter()
    for _, table in shard_tables(plan, [column, "status"]):
        licences = table.column(column)
        stored = pc.filter(licences, pc.equal(table.column("status"), SUCCESS))
        # each distinct cell once: canonical() parses the text
        for counter, cells in ((rows, licences), (images, stored)):
            for value, count in value_counts(cells).items():
                counter[canonical(value)] += count
    counts = {
        licence: {"name": display_name(licence), "rows": count, "images": images.get(licence, 0)}
        for licence, count in sorted(rows.items(), key=lambda item: (-item[1], item[0]))
    }
    chosen = split_filter(config.license_filter) if config.license_filter else None
    return {
        "column": plan.extra_columns[column],
        "filter": [display_name(canonical(entry)) for entry in chosen] if chosen else None,
        "counts": counts,
    }


def _text(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """A column as the text a CSV cell holds: strings as they are, other types (a parquet
    input's numbers) as Python writes them."""
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        return column
    return pa.chunked_array(
        [pa.array([None if v is None else str(v) for v in column.to_pylist()], pa.string())]
    )


def _source_records(table: pa.Table, columns: dict[str, str]) -> pa.ChunkedArray:
    """Per row, the first non-empty of _RECORD_SOURCES (a GBIF id as its occurrence page)."""
    found = []
    for name in _RECORD_SOURCES:
        column = columns.get(name.lower())
        if column is None:
            continue
        text = pc.utf8_trim_whitespace(_text(table.column(column)))
        text = pc.if_else(pc.equal(text, ""), pa.scalar(None, pa.string()), text)
        if name == "gbifID":
            text = pc.binary_join_element_wise(GBIF_OCCURRENCE, text, "")
        found.append(text)
    return (
        pc.coalesce(*found) if found else pa.chunked_array([pa.nulls(table.num_rows, pa.string())])
    )


def _licences(
    cells: pa.ChunkedArray, known: dict[str | None, tuple[str, str]]
) -> tuple[pa.Array, pa.Array]:
    """The canonical licence and its name per row; canonical() parses each distinct cell once
    (`known` keeps them from shard to shard)."""
    distinct = pc.unique(cells)
    for cell in distinct.to_pylist():
        if cell not in known:
            licence = canonical(cell)
            known[cell] = (licence, display_name(licence))
    index = pc.index_in(cells, value_set=distinct, skip_nulls=False)
    forms = [known[cell] for cell in distinct.to_pylist()]
    return (
        pa.array([form for form, _ in forms], pa.string()).take(index),
        pa.array([name for _, name in forms], pa.string()).take(index),
    )


def write_attribution(plan: Plan, config: DownloadConfig) -> Path | None:
    """attribution.csv at the output's root: one line per stored image, in key order.

    Written when the input has a licence column; streamed shard by shard (temp name, rename),
    each shard's columns built by Arrow. Text from the input that a spreadsheet would run as a
    formula is quoted (spreadsheet.py).
    """
    license_col = plan_license_column(plan.extra_columns, config)
    if license_col is None:
        return None
    columns = _columns(plan)
    picked = {field: _pick(columns, names) for field, names in _SOURCES.items()}
    record_columns = [columns[n.lower()] for n in _RECORD_SOURCES if n.lower() in columns]
    wanted = ["key", "path", "url", "status", license_col, *record_columns]
    wanted += [name for name in picked.values() if name]
    output = Path(plan.output)
    target = output / ATTRIBUTION_FILE
    temporary = output / temp_name(ATTRIBUTION_FILE)
    known: dict[str | None, tuple[str, str]] = {}  # licence cell -> canonical form, name
    with open(temporary, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(ATTRIBUTION_COLUMNS)
        for _, table in shard_tables(plan, list(dict.fromkeys(wanted))):
            table = table.filter(pc.equal(table.column("status"), SUCCESS))
            empty = pa.chunked_array([pa.nulls(table.num_rows, pa.string())])
            cells = [
                table.column("key"),
                table.column("path"),
                table.column("url"),
                *_licences(_text(table.column(license_col)), known),
                *(_text(table.column(picked[f])) if picked[f] else empty for f in _SOURCES),
                _source_records(table, columns),
            ]
            texts = [safe_text(column).to_pylist() for column in cells]
            writer.writerows(zip(*texts, strict=True))
    temporary.replace(target)
    return target
