"""run_shard: the one unit of work, the same under every engine.

Read the shard's rows from the plan, fetch each URL, check the image, write samples, then commit:
samples first, the results table next, the stats file (the marker) last. A shard whose marker
exists is done; running a shard again replaces everything an unfinished run left.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import math
import os
import socket
import time
from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from yarl import URL

from flowdc.config.options import DownloadConfig
from flowdc.core.errors import ImageRejected
from flowdc.core.files import atomic_write_text
from flowdc.core.layout import is_committed, results_path, stats_path, tar_path, temp_name
from flowdc.core.results import HOST_COUNTS, RESULT_FIELDS, ShardResult
from flowdc.core.status import LICENSE_FILTERED, MISSING_LABEL, SUCCESS
from flowdc.planning.license_columns import row_filter
from flowdc.planning.plan import Plan, normalize_label
from flowdc.shard.fetch.client import Fetcher, FetchResult, parse_url
from flowdc.shard.fetch.scheduler import Batch
from flowdc.shard.processing import Duplicate, ImageProcessor
from flowdc.shard.retry import retry_rows
from flowdc.shard.writers import SampleWriter, recover_shard
from flowdc.shard.writers.background import BackgroundWriter
from flowdc.shard.writers.imagefolder import FolderShardWriter, drop_journal
from flowdc.shard.writers.webdataset import TarShardWriter

ProgressCallback = Callable[[bool, int], None]


def _json_default(value: Any) -> Any:
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


_META_ENCODER = json.JSONEncoder(ensure_ascii=False, default=_json_default, allow_nan=False)
"""One encoder for every sample's JSON (json.dumps with options builds one per call)."""


def _finite(value: Any) -> Any:
    """NaN and infinities become null: strict JSON readers (jq, JavaScript) refuse them."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def _without_credentials(url: str | None) -> str | None:
    if url is None:
        return None
    parsed = URL(url)
    return str(parsed.with_user(None)) if parsed.user or parsed.password else url


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


class _ShardRun:
    def __init__(
        self,
        plan: Plan,
        shard: int,
        config: DownloadConfig,
        fetcher: Fetcher,
        on_progress: ProgressCallback | None,
    ) -> None:
        self.plan = plan
        self.shard = shard
        self.config = config
        self.fetcher = fetcher
        self.on_progress = on_progress
        self.output = Path(plan.output)
        # imagefolder loaders number classes by the folders that exist: see labels.json
        self.class_index = (
            plan.class_index()
            if plan.labels is not None and plan.output_format == "webdataset"
            else None
        )
        self.needs_label = plan.output_format == "imagefolder"
        self.extra_names = list(plan.extra_columns)
        self.records: list[dict[str, Any]] = []
        self.batch = Batch()
        self.writer: SampleWriter = (
            FolderShardWriter(self.output, shard, plan.label_folders or {})
            if plan.output_format == "imagefolder"
            else TarShardWriter(self.output, shard)
        )
        self.processor = ImageProcessor(config, self.output, shard, self.needs_label)
        self.writes = BackgroundWriter(self.writer, f"flowdc-write-{shard}")
        self.license_filter = row_filter(plan.extra_columns, config)
        self.verify_column = next(
            (name for name, source in plan.extra_columns.items() if source == config.verify_hash),
            None,
        )

    async def run(self, rows: list[dict[str, Any]]) -> None:
        """Hand every row to the fetcher's per-host queues; finish when each has its result."""
        try:
            for row in rows:
                row["label"] = normalize_label(row.get("label"))
                if self.needs_label and row["label"] is None:
                    missing = "no label: nothing names its folder"
                    await self.process(row, None, FetchResult(status=MISSING_LABEL, error=missing))
                    continue
                parsed = parse_url(row["url"])
                host = parsed.host if parsed is not None else None
                if self.license_filter is not None:
                    column, allowed = self.license_filter
                    if not allowed.allows(row.get(column)):
                        refused = f"license {row.get(column) or '(none)'} not in --license_filter"
                        filtered = FetchResult(status=LICENSE_FILTERED, error=refused)
                        await self.process(row, host, filtered)
                        continue
                answered = self.fetcher.submit(
                    parsed or row["url"], partial(self.process, row, host), self.batch
                )
                if answered is not None:
                    await self.process(row, host, answered)
            await self.batch.wait()
        finally:
            self.fetcher.scheduler.cancel(self.batch)

    async def process(self, row: dict[str, Any], host: str | None, fetched: FetchResult) -> None:
        record = self._record(row, host, fetched)
        if fetched.ok and fetched.data is not None:
            await self._store(row, fetched.data, record)
        self.records.append(record)
        if self.on_progress is not None:
            self.on_progress(record["status"] == SUCCESS, record["bytes"] or 0)

    def _record(
        self, row: dict[str, Any], host: str | None, fetched: FetchResult
    ) -> dict[str, Any]:
        label = row.get("label")
        url = row["url"]
        record: dict[str, Any] = {
            "key": row["key"],
            "shard": self.shard,
            "row": row["row"],
            "url": url,
            "label": label,
            "class_index": self.class_index.get(label) if self.class_index and label else None,
            "status": fetched.status,
            "error": fetched.error,
            "http_status": fetched.http_status,
            "attempts": fetched.attempts,
            "bytes": None,
            "sha256": None,
            "stored_sha256": None,
            "width": None,
            "height": None,
            "format": None,
            "content_type": fetched.content_type,
            "path": None,
            "elapsed_seconds": round(fetched.elapsed_seconds, 4),
            "host": host,
            "retryable": fetched.retryable,
            "final_url": _without_credentials(fetched.final_url)
            if fetched.final_url != url
            else None,
            "fetched_at": dt.datetime.now(dt.timezone.utc),
            "original_width": None,
            "original_height": None,
            "duplicate_of": None,
        }
        for name in self.extra_names:
            record[name] = row.get(name)
        return record

    async def _store(self, row: dict[str, Any], data: bytes, record: dict[str, Any]) -> None:
        expected = row.get(self.verify_column) if self.verify_column else None
        try:
            image = await self.processor.process(data, row["key"], expected)
        except ImageRejected as rejected:
            record.update(status=rejected.status, error=rejected.message, bytes=len(data))
            if isinstance(rejected, Duplicate):
                record.update(sha256=rejected.processed.sha256, duplicate_of=rejected.owner)
            return
        record.update(
            bytes=len(image.data),
            sha256=image.sha256,
            stored_sha256=None if image.data == data else hashlib.sha256(image.data).hexdigest(),
            width=image.width,
            height=image.height,
            format=image.extension,
            original_width=image.original_width,
            original_height=image.original_height,
        )
        meta = {
            name: record[name]
            for name in (
                "key",
                "url",
                "label",
                "class_index",
                "status",
                "sha256",
                "width",
                "height",
                "format",
                "bytes",
                "original_width",
                "original_height",
                "http_status",
                "content_type",
                "attempts",
                "elapsed_seconds",
                "final_url",
            )
        }
        meta.update({name: row.get(name) for name in self.extra_names})
        meta_json = _META_ENCODER.encode(_finite(meta)).encode("utf-8")
        # one thread writes the shard's samples, in order, and sets record["path"]
        await self.writes.put(
            record,
            row["key"],
            image.extension,
            image.data,
            meta_json,
            row["label"],
            record["class_index"],
        )

    def results_table(self, extra_schema: pa.Schema) -> pa.Table:
        self.records.sort(key=lambda record: record["row"])
        schema = pa.schema(RESULT_FIELDS + [extra_schema.field(n) for n in self.extra_names])
        return pa.Table.from_pylist(self.records, schema=schema)


async def run_shard_async(
    plan: Plan,
    shard: int,
    config: DownloadConfig,
    fetcher: Fetcher,
    on_progress: ProgressCallback | None = None,
) -> ShardResult:
    """Run one shard to its commit, or return its stats when it was committed already (with
    `retry_failed`, a committed shard's retryable failures are fetched again and merged in)."""
    output = Path(plan.output)
    if is_committed(output, shard):
        if config.retry_failed:
            return await _retry_shard(plan, shard, config, fetcher, on_progress)
        return ShardResult.load(output, shard)
    started_at, started = _now(), time.monotonic()
    recover_shard(output, shard)
    table = plan.read_shard(shard)
    run = _ShardRun(plan, shard, config, fetcher, on_progress)
    if not await _fetch_and_write(run, table.to_pylist(), first=True):
        return ShardResult.load(output, shard)
    results = run.results_table(table.schema)
    seconds = time.monotonic() - started
    return _commit(
        run, results, ShardResult(shard, 0, 0, 0, 0, 0.0, started_at=started_at), seconds
    )


async def _retry_shard(
    plan: Plan,
    shard: int,
    config: DownloadConfig,
    fetcher: Fetcher,
    on_progress: ProgressCallback | None,
) -> ShardResult:
    """A retry pass: fetch the retryable rows again; keep every other row and sample as it is."""
    output = Path(plan.output)
    rows = set(retry_rows(results_path(output, shard)))
    previous = ShardResult.load(output, shard)
    if not rows:
        return previous
    started = time.monotonic()
    committed = pq.read_table(results_path(output, shard))
    kept = committed.filter(pc.invert(pc.is_in(committed.column("row"), pa.array(sorted(rows)))))
    # what a killed retry pass placed goes; what the committed results hold stays
    in_results = pc.drop_null(kept.column("path")).to_pylist()
    recover_shard(output, shard, keep=frozenset(in_results))
    table = plan.read_shard(shard)
    todo = table.filter(pc.is_in(table.column("row"), pa.array(sorted(rows), table["row"].type)))
    run = _ShardRun(plan, shard, config, fetcher, on_progress)
    tar = tar_path(output, shard)
    if isinstance(run.writer, TarShardWriter) and tar.exists():
        try:
            run.writer.copy_samples(tar, skip_keys=set(todo.column("key").to_pylist()))
        except BaseException:
            run.writes.stop()
            run.processor.close()
            run.writer.abort()
            raise
    await _fetch_and_write(run, todo.to_pylist(), first=False)
    fresh = run.results_table(table.schema)
    merged = pa.concat_tables([kept.select(fresh.schema.names).cast(fresh.schema), fresh])
    seconds = previous.seconds + time.monotonic() - started
    return _commit(run, merged.sort_by("row"), previous, seconds)


async def _fetch_and_write(run: _ShardRun, rows: list[dict[str, Any]], first: bool) -> bool:
    """Fetch and write the rows; False (and nothing kept) when this is a shard's first pass and
    another attempt committed the shard meanwhile (Dask may run a task twice)."""
    try:
        await run.run(rows)
        run.writes.close()  # every sample written (or the first write error raised)
        if first and is_committed(run.output, run.shard):
            run.writer.abort()
            return False
        run.writer.commit()
    except BaseException:
        run.writes.stop()  # no write is under way when the file is dropped
        run.writer.abort()
        raise
    finally:
        run.processor.close()
    return True


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


def _commit(
    run: _ShardRun, results: pa.Table, previous: ShardResult, seconds: float
) -> ShardResult:
    """Results table, then the stats marker (both temp + rename), then the journal goes."""
    output, shard = run.output, run.shard
    tmp = output / temp_name(results_path(output, shard).name)
    pq.write_table(results, tmp, compression="zstd")
    os.replace(tmp, results_path(output, shard))
    statuses = results.column("status").to_pylist()
    counts = Counter(statuses)
    sizes = results.column("bytes").to_pylist()
    successes = counts.get(SUCCESS, 0)
    fresh_hosts = {host: figures.as_dict() for host, figures in run.batch.hosts.items()}
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
        retries=previous.retries + run.batch.retried,
        hosts=_finite(_merge_hosts(previous.hosts, fresh_hosts)),
        started_at=previous.started_at,
        finished_at=_now(),
        worker=f"{socket.gethostname()}:{os.getpid()}",
    )
    atomic_write_text(stats_path(output, shard), result.to_json())
    drop_journal(output, shard)
    return result


def run_shard(output: str, shard: int, config: DownloadConfig) -> ShardResult:
    """Synchronous entry point for engines that call one shard at a time (Dask, tests)."""
    plan = Plan.load(output)
    if plan is None:
        raise FileNotFoundError(f"no plan in {output}")

    async def main() -> ShardResult:
        fetcher = Fetcher(config)
        try:
            return await run_shard_async(plan, shard, config, fetcher)
        finally:
            await fetcher.close()

    return asyncio.run(main())
