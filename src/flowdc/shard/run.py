"""run_shard: the one unit of work, the same under every engine.

Read the shard's rows from the plan, fetch each URL, check the image, write samples, then commit:
samples first, the results table next, the stats file (the marker) last. A shard whose marker
exists is done; running a shard again replaces everything an unfinished run left. Rows the plan
left out (planned_status) are recorded as such; rows repeating another row's URL
(same_url_position) get their owner's outcome (repeats.py) instead of a request.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from flowdc.config.options import DownloadConfig
from flowdc.core.errors import ImageRejected
from flowdc.core.layout import is_committed, results_path
from flowdc.core.results import RESULT_FIELDS, ShardResult
from flowdc.core.status import CLASS_CAPPED, LICENSE_FILTERED, MISSING_LABEL, SUCCESS
from flowdc.planning.license_columns import row_filter
from flowdc.planning.plan import Plan, normalize_label
from flowdc.shard.commit import HostsSeen, commit_shard
from flowdc.shard.committed import CommittedShards, LocalCommitted, running
from flowdc.shard.fetch.client import Fetcher
from flowdc.shard.fetch.http import FetchResult, parse_url
from flowdc.shard.fetch.scheduler import Batch
from flowdc.shard.processing import Duplicate, ImageProcessor
from flowdc.shard.records import SAMPLE_FACT_FIELDS, now, result_record, sample_meta
from flowdc.shard.repeats import committed_owners, copy_outcome, owner_sample
from flowdc.shard.retry import retry_rows
from flowdc.shard.writers import SampleWriter, recover_shard
from flowdc.shard.writers.background import BackgroundWriter
from flowdc.shard.writers.imagefolder import FolderShardWriter
from flowdc.shard.writers.parquet import ParquetShardWriter, image_table
from flowdc.shard.writers.webdataset import TarShardWriter

ProgressCallback = Callable[[bool, int], None]


class _ShardRun:
    def __init__(
        self,
        plan: Plan,
        shard: int,
        config: DownloadConfig,
        fetcher: Fetcher,
        on_progress: ProgressCallback | None,
        plan_schema: pa.Schema,
        committed: CommittedShards,
        retry_pass: bool,
    ) -> None:
        self.plan = plan
        self.shard = shard
        self.config = config
        self.fetcher = fetcher
        self.on_progress = on_progress
        self.committed = committed
        self.retry_pass = retry_pass
        self.output = Path(plan.output)
        # imagefolder loaders number classes by the folders that exist: see labels.json
        self.class_index = (
            plan.class_index()
            if plan.labels is not None and plan.output_format != "imagefolder"
            else None
        )
        self.needs_label = plan.output_format == "imagefolder"
        self.extra_names = list(plan.extra_columns)
        self.records: list[dict[str, Any]] = []
        self.batch = Batch()
        self.writer = _writer(plan, shard, plan_schema)
        self.processor = ImageProcessor(config, self.output, shard, self.needs_label)
        self.writes = BackgroundWriter(self.writer, f"flowdc-write-{shard}")
        self.license_filter = row_filter(plan.extra_columns, config)
        self.verify_column = next(
            (name for name, source in plan.extra_columns.items() if source == config.verify_hash),
            None,
        )
        self.followers: dict[str, list[dict[str, Any]]] = {}
        """Owner key -> the repeats of its URL, for owners fetched in this pass."""

    async def run(self, rows: list[dict[str, Any]]) -> None:
        """Hand every row to the fetcher's per-host queues; finish when each has its result."""
        in_pass = {row["key"] for row in rows}
        waiting: dict[int, list[dict[str, Any]]] = {}  # owner's shard -> repeats
        for row in rows:
            position = row.get("same_url_position")
            if position is None or row.get("planned_status") is not None:
                continue
            owner = row["same_url_as"] = self.plan.key_at(position)
            if owner in in_pass:
                self.followers.setdefault(owner, []).append(row)
            else:
                waiting.setdefault(position // self.plan.shard_size, []).append(row)
            self.batch.add()  # done when the repeat has its owner's outcome
        following = [asyncio.create_task(self._follow(s, found)) for s, found in waiting.items()]
        try:
            for row in rows:
                row["label"] = normalize_label(row.get("label"))
                if row.get("same_url_as") is not None:
                    continue
                await self._request(row)
            await self.batch.wait()
        finally:
            for task in following:
                task.cancel()
            self.fetcher.scheduler.cancel(self.batch)

    async def _request(self, row: dict[str, Any]) -> None:
        """Record a row the plan or the options leave out, or hand it to the fetcher."""
        planned = row.get("planned_status")
        if planned is not None:
            await self.process(row, None, FetchResult(status=planned, error=self._why(planned)))
            return
        if self.needs_label and row["label"] is None:
            missing = "no label: nothing names its folder"
            await self.process(row, None, FetchResult(status=MISSING_LABEL, error=missing))
            return
        parsed = parse_url(row["url"])
        host = parsed.host if parsed is not None else None
        if self.license_filter is not None:
            column, allowed = self.license_filter
            if not allowed.allows(row.get(column)):
                refused = f"license {row.get(column) or '(none)'} not in --license_filter"
                filtered = FetchResult(status=LICENSE_FILTERED, error=refused)
                await self.process(row, host, filtered)
                return
        answered = self.fetcher.submit(
            parsed or row["url"], partial(self.process, row, host), self.batch
        )
        if answered is not None:
            await self.process(row, host, answered)

    def _why(self, planned: str) -> str:
        if planned == CLASS_CAPPED:
            return f"not in its class's sample of --max_per_class {self.config.max_per_class}"
        return f"its class has fewer than --min_per_class {self.config.min_per_class} rows"

    async def _follow(self, shard: int, repeats: list[dict[str, Any]]) -> None:
        """Give each repeat the outcome of its owner in the earlier `shard` once that shard is
        committed; fetch it itself when that will not be, or the owner's sample is not there."""
        try:
            keys = {row["same_url_as"] for row in repeats}
            owners = await committed_owners(self.committed, shard, keys, self.retry_pass)
            for row in repeats:
                row["label"] = normalize_label(row.get("label"))
                owner = (owners or {}).get(row["same_url_as"])
                data = None
                if owner is not None and owner["status"] == SUCCESS and not self.config.dedupe:
                    data = await asyncio.to_thread(owner_sample, self.committed, shard, owner)
                    owner = owner if data is not None else None
                if owner is None:
                    await self._request(dict(row, same_url_as=None, same_url_position=None))
                else:
                    await self._copy(row, owner, data)
                self.batch.done()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self.batch.fail(exc)

    async def _copy(self, row: dict[str, Any], owner: dict[str, Any], data: bytes | None) -> None:
        """Record a repeat with its owner's outcome and, when it succeeded, its own sample."""
        parsed = parse_url(row["url"])
        record = result_record(
            self.shard,
            row,
            parsed.host if parsed is not None else None,
            FetchResult(status=owner["status"]),
            self.class_index,
            self.extra_names,
        )
        if copy_outcome(record, owner, row["same_url_as"], self.config.dedupe) and data:
            await self._write(row, record, data)
        self._finish(record)

    async def process(self, row: dict[str, Any], host: str | None, fetched: FetchResult) -> None:
        record = result_record(self.shard, row, host, fetched, self.class_index, self.extra_names)
        stored = None
        if fetched.ok and fetched.data is not None:
            stored = await self._store(row, fetched, record)
        self._finish(record)
        for repeat in self.followers.pop(row["key"], ()):
            repeat["label"] = normalize_label(repeat.get("label"))
            await self._copy(repeat, record, stored)
            self.batch.done()

    def _finish(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        if self.on_progress is not None:
            self.on_progress(record["status"] == SUCCESS, record["bytes"] or 0)

    async def _store(
        self, row: dict[str, Any], fetched: FetchResult, record: dict[str, Any]
    ) -> bytes | None:
        """Check and process the body and queue its sample; the bytes stored, or None."""
        data = fetched.data
        assert data is not None
        expected = row.get(self.verify_column) if self.verify_column else None
        try:
            image = await self.processor.process(data, row["key"], expected)
        except ImageRejected as rejected:
            record.update(status=rejected.status, error=rejected.message, bytes=len(data))
            if isinstance(rejected, Duplicate):
                record.update(sha256=rejected.processed.sha256, duplicate_of=rejected.owner)
            return None
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
        # the body's memory budget is held until the sample is written, then released
        memory, fetched.memory = fetched.memory, None
        await self._write(row, record, image.data, memory.release if memory is not None else None)
        return image.data

    async def _write(
        self,
        row: dict[str, Any],
        record: dict[str, Any],
        data: bytes,
        release: Callable[[], None] | None = None,
    ) -> None:
        meta = sample_meta(record, row, self.extra_names)
        # one thread writes the shard's samples, in order, and sets record["path"]
        await self.writes.put(
            record,
            row["key"],
            record["format"],
            data,
            meta,
            row["label"],
            record["class_index"],
            release=release,
        )

    def hosts_seen(self) -> HostsSeen:
        """Per-host figures of this pass, and how many retries it made."""
        hosts = {host: figures.as_dict() for host, figures in self.batch.hosts.items()}
        return HostsSeen(hosts, self.batch.retried)

    def results_table(self, extra_schema: pa.Schema) -> pa.Table:
        self.records.sort(key=lambda record: record["row"])
        schema = pa.schema(RESULT_FIELDS + [extra_schema.field(n) for n in self.extra_names])
        return pa.Table.from_pylist(self.records, schema=schema)


def _writer(plan: Plan, shard: int, plan_schema: pa.Schema) -> SampleWriter:
    """The shard's writer for the plan's output format."""
    output = Path(plan.output)
    if plan.output_format == "imagefolder":
        return FolderShardWriter(output, shard, plan.label_folders or {})
    if plan.output_format == "parquet":
        extras = [plan_schema.field(name) for name in plan.extra_columns]
        layout = image_table(SAMPLE_FACT_FIELDS, extras, plan.labels, plan.label_column is not None)
        return ParquetShardWriter(output, shard, layout)
    return TarShardWriter(output, shard)


async def run_shard_async(
    plan: Plan,
    shard: int,
    config: DownloadConfig,
    fetcher: Fetcher,
    on_progress: ProgressCallback | None = None,
    committed: CommittedShards | None = None,
) -> ShardResult:
    """Run one shard to its commit, or return its stats when it was committed already (with
    `retry_failed`, a committed shard's retryable failures are fetched again and merged in).
    `committed` reads other shards' committed output (for repeated URLs): by default the
    plan's folder."""
    output = Path(plan.output)
    committed = committed or LocalCommitted(output, plan.output_format)
    with running(output, shard):
        if is_committed(output, shard):
            if config.retry_failed:
                return await _retry_shard(plan, shard, config, fetcher, on_progress, committed)
            return ShardResult.load(output, shard)
        return await _first_pass(plan, shard, config, fetcher, on_progress, committed)


async def _first_pass(
    plan: Plan,
    shard: int,
    config: DownloadConfig,
    fetcher: Fetcher,
    on_progress: ProgressCallback | None,
    committed: CommittedShards,
) -> ShardResult:
    output = Path(plan.output)
    started_at, started = now(), time.monotonic()
    recover_shard(output, shard)
    table = plan.read_shard(shard)
    run = _ShardRun(
        plan, shard, config, fetcher, on_progress, table.schema, committed, retry_pass=False
    )
    if not await _fetch_and_write(run, table.to_pylist(), first=True):
        return ShardResult.load(output, shard)
    results = run.results_table(table.schema)
    seconds = time.monotonic() - started
    return commit_shard(
        run.output,
        shard,
        results,
        run.hosts_seen(),
        ShardResult(shard, 0, 0, 0, 0, 0.0, started_at=started_at),
        seconds,
    )


async def _retry_shard(
    plan: Plan,
    shard: int,
    config: DownloadConfig,
    fetcher: Fetcher,
    on_progress: ProgressCallback | None,
    committed_shards: CommittedShards,
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
    run = _ShardRun(
        plan, shard, config, fetcher, on_progress, table.schema, committed_shards, retry_pass=True
    )
    writer = run.writer
    if isinstance(writer, (TarShardWriter, ParquetShardWriter)) and writer.final_path.exists():
        try:
            writer.copy_samples(writer.final_path, skip_keys=set(todo.column("key").to_pylist()))
        except BaseException:
            run.writes.stop()
            run.processor.close()
            writer.abort()
            raise
    await _fetch_and_write(run, todo.to_pylist(), first=False)
    fresh = run.results_table(table.schema)
    merged = pa.concat_tables([_as_schema(kept, fresh.schema), fresh])
    seconds = previous.seconds + time.monotonic() - started
    return commit_shard(
        run.output, shard, merged.sort_by("row"), run.hosts_seen(), previous, seconds
    )


def _as_schema(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """A committed results table in this version's columns (those it lacks are null)."""
    columns = [
        table.column(field.name).cast(field.type)
        if field.name in table.column_names
        else pa.nulls(table.num_rows, field.type)
        for field in schema
    ]
    return pa.Table.from_arrays(columns, schema=schema)


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
