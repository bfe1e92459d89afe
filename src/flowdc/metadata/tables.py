"""The committed results tables and shard stats of an output, read for the metadata stages.

Everything FLOW-DC says about a finished output (overview, Croissant, report, validate) is
computed from these files, so it is the same whichever engine ran the job and after a resume.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from flowdc.core.layout import is_committed, results_path, stats_path
from flowdc.planning.plan import Plan


def committed_shards(plan: Plan) -> list[int]:
    output = Path(plan.output)
    return [shard for shard in range(plan.shard_count) if is_committed(output, shard)]


def read_results(plan: Plan, columns: list[str] | None = None) -> pa.Table | None:
    """All committed results rows (only `columns` that exist), or None when nothing committed.

    Older outputs may lack a column (fetched_at); it is then left out rather than failing.
    """
    tables = []
    for shard in committed_shards(plan):
        path = results_path(plan.output, shard)
        names = pq.read_schema(path).names
        wanted = [name for name in columns if name in names] if columns is not None else None
        tables.append(pq.read_table(path, columns=wanted))
    if not tables:
        return None
    return pa.concat_tables(tables, promote_options="default")


def read_stats(plan: Plan) -> list[dict[str, Any]]:
    """Each committed shard's stats file (the commit marker), as written."""
    stats = []
    for shard in committed_shards(plan):
        try:
            stats.append(json.loads(stats_path(plan.output, shard).read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError):
            continue  # validate reports it; the metadata stages do without
    return stats
