"""The numbers report.html draws, gathered one committed results table at a time.

A whole output's results as one table, and a Python list per column, took `flowdc report` to
561 MB for a million rows (benchmarks/finish_scale.py; 230 MB now). Here each pass reads only
the columns it needs of one shard's table and adds it to running totals: the first pass finds when
the first and the last row finished, the second counts rows and megabytes per time bin, counts
each shard's stored images (the thumbnails are taken from them) and keeps the file size, width
and height of each stored image as Arrow arrays (16 bytes an image) for the histograms' exact
99th percentile.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from flowdc.core.status import SUCCESS
from flowdc.metadata.tables import shard_tables
from flowdc.planning.plan import Plan

TIME_BINS = 40
HISTOGRAM_BINS = 24

Histogram = tuple[list[int], list[float]]
"""Counts per bin, and the bins' edges (one more than the counts)."""


@dataclass
class TimeBins:
    """Per time bin: labels, successes, failures, MB/s; and the bin width in seconds."""

    labels: list[str] = field(default_factory=list)
    good: list[int] = field(default_factory=list)
    bad: list[int] = field(default_factory=list)
    mb_per_s: list[float] = field(default_factory=list)
    width: float = 1.0


@dataclass
class ReportFigures:
    time: TimeBins
    sizes: Histogram  # file size in KiB
    widths: Histogram
    heights: Histogram
    stored: dict[int, int]  # shard -> stored images, for the shards that have any


def _finish_times(stats: list[dict[str, Any]]) -> dict[int, float]:
    """Each shard's finish time, for the rows of outputs written before fetched_at existed."""
    finished = {}
    for shard in stats:
        try:
            finished[shard["shard"]] = dt.datetime.fromisoformat(shard["finished_at"]).timestamp()
        except (KeyError, ValueError, TypeError):
            continue
    return finished


def _seconds(table: pa.Table, when_finished: float | None) -> pa.Array:
    """When each row finished (seconds since the epoch), null where it is not known."""
    if "fetched_at" in table.column_names:
        # as integers, then floats: a datetime object per row cost a second per 100,000 rows
        fetched = table.column("fetched_at").cast(pa.timestamp("ms", tz="UTC")).cast(pa.int64())
        return pc.divide(fetched.cast(pa.float64()), 1000.0).combine_chunks()
    if when_finished is None:
        return pa.nulls(table.num_rows, pa.float64())
    return pa.repeat(pa.scalar(when_finished, pa.float64()), table.num_rows)


def histogram(values: pa.Array, bins: int = HISTOGRAM_BINS) -> Histogram:
    """Counts between the smallest value and the 99th percentile (larger values in the last
    bin), and the bins' edges."""
    if not len(values):
        return [], []
    ordered = values.take(pc.array_sort_indices(values))
    low, high = ordered[0].as_py(), ordered[min(len(values) - 1, int(len(values) * 0.99))].as_py()
    if high <= low:
        high = low + 1
    width = (high - low) / bins
    index = pc.floor(pc.divide(pc.subtract(values.cast(pa.float64()), float(low)), width))
    index = pc.min_element_wise(pc.max_element_wise(index, 0.0), float(bins - 1))
    counts = [0] * bins
    for entry in pc.value_counts(index.cast(pa.int64())).to_pylist():
        counts[entry["values"]] = entry["counts"]
    return counts, [low + width * i for i in range(bins + 1)]


def _time_range(plan: Plan, finished: dict[int, float]) -> tuple[float, float, int]:
    """The first and last finish time of any row, and how many rows have one."""
    start, end, known = float("inf"), float("-inf"), 0
    for shard, table in shard_tables(plan, ["fetched_at"]):
        seconds = _seconds(table, finished.get(shard))
        if len(seconds) > seconds.null_count:
            low, high = pc.min_max(seconds).values()
            start, end = min(start, low.as_py()), max(end, high.as_py())
            known += len(seconds) - seconds.null_count
    return start, end, known


def _stored_values(chunks: list[pa.Array], kind: pa.DataType) -> pa.Array:
    return pa.chunked_array(chunks, kind).combine_chunks()


def gather(plan: Plan, stats: list[dict[str, Any]]) -> ReportFigures:
    """Every figure of the report that comes from the results rows, shard by shard."""
    finished = _finish_times(stats)
    start, end, known = _time_range(plan, finished)
    span = max(end - start, 1e-3)
    bins = min(TIME_BINS, max(1, known // 4)) if known else 0
    good, bad, megabytes = [0] * bins, [0] * bins, [0.0] * bins
    stored: dict[int, int] = {}
    values: dict[str, list[pa.Array]] = {"bytes": [], "width": [], "height": []}
    columns = ["status", "bytes", "width", "height", "fetched_at"]
    for shard, table in shard_tables(plan, columns):
        ok = pc.equal(table.column("status"), SUCCESS)
        if bins:
            seconds = _seconds(table, finished.get(shard))
            index = pc.floor(pc.multiply(pc.divide(pc.subtract(seconds, start), span), bins))
            index = pc.min_element_wise(index, float(bins - 1), skip_nulls=False)
            if "bytes" in table.column_names:
                sizes = table.column("bytes")
            else:
                sizes = pa.chunked_array([pa.nulls(table.num_rows, pa.int64())])
            per_bin = pa.table({"bin": index.cast(pa.int64()), "ok": ok, "bytes": sizes}).group_by(
                ["bin", "ok"]
            )
            for row in per_bin.aggregate([("bin", "count"), ("bytes", "sum")]).to_pylist():
                if row["bin"] is None:
                    continue
                if row["ok"]:
                    good[row["bin"]] += row["bin_count"]
                    megabytes[row["bin"]] += (row["bytes_sum"] or 0) / 1e6
                else:
                    bad[row["bin"]] += row["bin_count"]
        successes = table.filter(ok)
        if successes.num_rows:
            stored[shard] = successes.num_rows
        for name, chunks in values.items():
            if name in successes.column_names:
                column = successes.column(name)
                chunks.extend(pc.filter(column, pc.not_equal(column, 0)).chunks)
    width = span / bins if bins else 1.0
    digits = 0 if width >= 1 else 2
    time = TimeBins(
        labels=[f"{(i + 0.5) * width:.{digits}f}s" for i in range(bins)],
        good=good,
        bad=bad,
        mb_per_s=[mb / width for mb in megabytes],
        width=width,
    )
    sizes = pc.divide(_stored_values(values["bytes"], pa.int64()).cast(pa.float64()), 1024.0)
    return ReportFigures(
        time=time,
        sizes=histogram(sizes),
        widths=histogram(_stored_values(values["width"], pa.int32())),
        heights=histogram(_stored_values(values["height"], pa.int32())),
        stored=stored,
    )


def sample_rows(plan: Plan, stored: dict[int, int], count: int) -> list[dict[str, Any]]:
    """Up to `count` stored images (key, label, path, shard), spread over the shards: each
    chosen shard gives its first ones, so a tar is read only up to them."""
    if not stored:
        return []
    distinct = sorted(stored)
    chosen = distinct[:: max(1, len(distinct) // count)][:count]
    per_shard = -(-count // len(chosen))
    picked: list[dict[str, Any]] = []
    for shard, table in shard_tables(plan, ["key", "label", "path", "status"], chosen):
        table = table.filter(pc.equal(table.column("status"), SUCCESS))
        for row in table.slice(0, min(per_shard, count - len(picked))).to_pylist():
            picked.append({"key": row["key"], "label": row.get("label"), "path": row.get("path"),
                           "shard": shard})  # fmt: skip
        if len(picked) >= count:
            break
    return picked
