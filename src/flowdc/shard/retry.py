"""`--retry_failed`: which committed rows are worth another try.

A row is retried when its final status was a failure a later run may cure: a timeout, a reset
connection, a cut body, a 429 or a 5xx (the `retryable` column of the results table). A 404, a
refused TLS certificate, an opt-out, a body that is not an image, and so on, are final.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq

from flowdc.core.status import SUCCESS


def retry_rows(results_file: Path) -> list[int]:
    """Rows (within the shard) of a committed results table whose failure is worth a retry."""
    schema = pq.read_schema(results_file)
    if "retryable" not in schema.names:
        return []  # written before FLOW-DC recorded it: nothing is known to be retryable
    table = pq.read_table(results_file, columns=["row", "status", "retryable"])
    wanted = pc.and_(
        pc.fill_null(table.column("retryable"), False),
        pc.not_equal(table.column("status"), SUCCESS),
    )
    return table.filter(wanted).column("row").to_pylist()
