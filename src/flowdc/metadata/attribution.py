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

import pyarrow.compute as pc
import pyarrow.parquet as pq

from flowdc.config.options import DownloadConfig
from flowdc.core.layout import ATTRIBUTION_FILE, results_path, temp_name
from flowdc.core.licenses import canonical, display_name, split_filter
from flowdc.core.status import SUCCESS
from flowdc.metadata.spreadsheet import safe_row
from flowdc.metadata.tables import committed_shards
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
    for shard in committed_shards(plan):
        table = pq.read_table(results_path(plan.output, shard), columns=[column, "status"])
        licences = [canonical(value) for value in table.column(column).to_pylist()]
        rows.update(licences)
        ok = table.column("status").to_pylist()
        images.update(lic for lic, status in zip(licences, ok, strict=True) if status == SUCCESS)
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


def _source_record(row: dict[str, Any], columns: dict[str, str]) -> str | None:
    for name in _RECORD_SOURCES:
        column = columns.get(name.lower())
        value = row.get(column) if column else None
        if value is None or not str(value).strip():
            continue
        if name == "gbifID":
            return GBIF_OCCURRENCE + str(value).strip()
        return str(value).strip()
    return None


def write_attribution(plan: Plan, config: DownloadConfig) -> Path | None:
    """attribution.csv at the output's root: one line per stored image, in key order.

    Written when the input has a licence column; streamed shard by shard (temp name, rename).
    Text from the input that a spreadsheet would run as a formula is quoted (spreadsheet.py).
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
    with open(temporary, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(ATTRIBUTION_COLUMNS)
        for shard in committed_shards(plan):
            table = pq.read_table(results_path(output, shard), columns=list(dict.fromkeys(wanted)))
            table = table.filter(pc.equal(table.column("status"), SUCCESS))
            for row in table.to_pylist():
                licence = canonical(row.get(license_col))
                writer.writerow(
                    safe_row(
                        [
                            row["key"],
                            row["path"],
                            row["url"],
                            licence,
                            display_name(licence),
                            *(
                                row.get(picked[field]) if picked[field] else None
                                for field in _SOURCES
                            ),
                            _source_record(row, columns),
                        ]
                    )
                )
    temporary.replace(target)
    return target
