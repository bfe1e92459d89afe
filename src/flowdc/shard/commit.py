"""The commit protocol of a shard: samples are final already (the writer committed them); then
the results table, then the stats marker (both temporary name, then rename), then the journal
goes. A process killed at any point leaves either a marker, and everything it points to, or no
marker, and the shard runs again."""

from __future__ import annotations

import os
import socket
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from flowdc.core.files import atomic_write_text
from flowdc.core.layout import results_path, stats_path, temp_name
from flowdc.core.results import HOST_COUNTS, ShardResult
from flowdc.core.status import SUCCESS
from flowdc.shard.records import finite, now
from flowdc.shard.writers.imagefolder import drop_journal


@dataclass
class HostsSeen:
    """What one pass over a shard learnt of its hosts."""

    hosts: dict[str, dict[str, Any]]
    retries: int


def _merge_hosts(
    previous: dict[str, dict[str, Any]], fresh: dict[str, dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Per-host figures of two passes over a shard: counts add up, the limits are the latest."""
    merged = {host: dict(figures) for host, figures in previous.items()}
    for host, figures in fresh.items():
        into = merged.setdefault(host, {})
        for name in HOST_COUNTS:
            into[name] = round((into.get(name) or 0) + (figures.get(name) or 0), 4)
        into["mean_latency"] = (
            round(into["latency_sum"] / into["requests"], 4) if into["requests"] else None
        )
        into["rate"], into["concurrency"] = figures.get("rate"), figures.get("concurrency")
    return merged


def commit_shard(
    output: Path,
    shard: int,
    results: pa.Table,
    seen: HostsSeen,
    previous: ShardResult,
    seconds: float,
    worker: str | None = None,
) -> ShardResult:
    """Results table, then the stats marker (both temp + rename), then the journal goes;
    `previous` is the committed pass this one adds to (or an empty result); `worker` names who
    ran the pass when it was not this process (a shard sent back to a TaskVine manager)."""
    tmp = output / temp_name(results_path(output, shard).name)
    pq.write_table(results, tmp, compression="zstd")
    os.replace(tmp, results_path(output, shard))
    statuses = results.column("status").to_pylist()
    counts = Counter(statuses)
    sizes = results.column("bytes").to_pylist()
    successes = counts.get(SUCCESS, 0)
    result = ShardResult(
        shard=shard,
        rows=results.num_rows,
        successes=successes,
        failures=results.num_rows - successes,
        bytes=sum(
            size or 0 for size, status in zip(sizes, statuses, strict=True) if status == SUCCESS
        ),
        seconds=round(seconds, 3),
        status_counts=dict(counts),
        retries=previous.retries + seen.retries,
        hosts=finite(_merge_hosts(previous.hosts, seen.hosts)),
        started_at=previous.started_at,
        finished_at=now(),
        worker=worker or f"{socket.gethostname()}:{os.getpid()}",
    )
    atomic_write_text(stats_path(output, shard), result.to_json())
    drop_journal(output, shard)
    return result
