"""The committed results tables and shard stats of an output, read for the metadata stages.

Everything FLOW-DC says about a finished output (overview, Croissant, report, validate) is
computed from these files, so it is the same whichever engine ran the job and after a resume;
they are read one shard at a time.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from flowdc.core.layout import is_committed, results_path, stats_path
from flowdc.planning.plan import Plan


def committed_shards(plan: Plan) -> list[int]:
    output = Path(plan.output)
    return [shard for shard in range(plan.shard_count) if is_committed(output, shard)]


def shard_tables(
    plan: Plan, columns: list[str], shards: Iterable[int] | None = None
) -> Iterator[tuple[int, pa.Table]]:
    """Each committed shard (of `shards`, when given) and its results table, one at a time, with
    only the `columns` it has (older outputs lack fetched_at). The metadata stages add each
    table to running totals and never hold a whole output's results (benchmarks/finish_scale.py
    measures them on a million rows)."""
    for shard in committed_shards(plan) if shards is None else sorted(shards):
        path = results_path(plan.output, shard)
        names = pq.read_schema(path).names
        yield shard, pq.read_table(path, columns=[name for name in columns if name in names])


def value_counts(values: pa.Array | pa.ChunkedArray) -> Counter[Any]:
    """How often each value (None for nulls) occurs, counted by Arrow, not row by row."""
    return Counter(
        {entry["values"]: entry["counts"] for entry in pc.value_counts(values).to_pylist()}
    )


def read_stats(plan: Plan) -> list[dict[str, Any]]:
    """Each committed shard's stats file (the commit marker), as written."""
    stats = []
    for shard in committed_shards(plan):
        try:
            stats.append(json.loads(stats_path(plan.output, shard).read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError):
            continue  # validate reports it; the metadata stages do without
    return stats
