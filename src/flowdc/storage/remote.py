"""Object storage (s3:// and any other fsspec URL) as input and output.

Nothing is renamed on object storage, where a rename is a copy and not atomic. A shard is built
in a local staging folder and uploaded in commit order: the samples (the tar, or the Parquet
shard), then the results table, then the stats marker last. Each upload is one whole object, so
a reader sees the old object or the new one, never a part; a shard counts as done only once its
marker exists, and by then everything the marker points to is in place. The plan is uploaded
the same way (table first, its JSON last), and workers read it from the output.

A shard whose rows repeat an earlier shard's URLs reads that shard's committed results and samples
from the store (`RemoteCommitted`): a tar is downloaded whole, once per process while it is among
the last few read, since finding a member means reading the tar's headers.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import dataclasses
import io
import re
import shutil
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa
import pyarrow.parquet as pq

from flowdc.core.errors import FlowDCError
from flowdc.core.layout import (
    LABELS_FILE,
    MARKER_FILE,
    PLAN_META,
    PLAN_TABLE,
    is_remote,
    parquet_shard_path,
    results_path,
    stats_path,
    tar_path,
)
from flowdc.core.results import ShardResult
from flowdc.planning.plan import Plan
from flowdc.shard.committed import OWNER_COLUMNS, TarIndex, rows_by_key
from flowdc.shard.run import run_shard_async


@contextlib.contextmanager
def storage_errors(url: str) -> Iterator[None]:
    """Any failure of the store (no credentials, no endpoint, access denied) as one line;
    FileNotFoundError passes, the callers use it to mean "not there"."""
    try:
        yield
    except (FileNotFoundError, FlowDCError):
        raise
    except Exception as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise FlowDCError(
            f"cannot use {url}: {message}; check the credentials (AWS_* variables or "
            f"--storage_options), the endpoint (AWS_ENDPOINT_URL) and the bucket"
        ) from None


class RemoteStore:
    """One output prefix on object storage, with whole-object reads and writes by name."""

    def __init__(self, url: str, storage_options: dict[str, Any] | None) -> None:
        try:
            import fsspec

            self.fs, root = fsspec.core.url_to_fs(url, **(storage_options or {}))
        except ImportError as exc:
            raise FlowDCError(
                f"cannot open {url}: {exc}; install the fsspec backend for it (s3fs for s3://)"
            ) from None
        except (ValueError, TypeError) as exc:
            raise FlowDCError(f"cannot open {url}: {exc}; check --storage_options") from None
        self.url = url
        self.root = root.rstrip("/")

    def path(self, name: str) -> str:
        return f"{self.root}/{name}"

    def names(self) -> set[str]:
        """Names directly under the prefix (fresh: other machines write here)."""
        self.fs.invalidate_cache()
        try:
            with storage_errors(self.url):
                entries = self.fs.ls(self.root, detail=False)
        except FileNotFoundError:
            return set()
        return {entry.rstrip("/").rsplit("/", 1)[-1] for entry in entries}

    def read_text(self, name: str) -> str | None:
        self.fs.invalidate_cache()
        try:
            with storage_errors(self.url):
                return self.fs.cat_file(self.path(name)).decode("utf-8")
        except FileNotFoundError:
            return None

    def download(self, name: str, local: Path) -> None:
        with storage_errors(self.url):
            self.fs.get_file(self.path(name), str(local))

    def upload(self, local: Path, name: str) -> None:
        with storage_errors(self.url):
            self.fs.put_file(str(local), self.path(name))

    def clear(self) -> None:
        """Delete everything under the prefix (--overwrite)."""
        for name in self.names():
            with storage_errors(self.url):
                self.fs.rm(self.path(name), recursive=True)


_stores: dict[tuple[str, str], RemoteStore] = {}


def store_for(url: str, storage_options: dict[str, Any] | None) -> RemoteStore:
    """One store per output and process (fsspec clients hold connections)."""
    key = (url, repr(sorted((storage_options or {}).items())))
    if key not in _stores:
        _stores[key] = RemoteStore(url, storage_options)
    return _stores[key]


def stage_input(location: str, storage_options: dict[str, Any] | None, staging: Path) -> Path:
    """A local path for the input: the path itself, or a copy of a remote input in `staging`."""
    if not is_remote(location):
        return Path(location)
    store = RemoteStore(location, storage_options)
    # a link's ?download=1 or signature is no part of the file's name (nor its extension)
    local = staging / (re.split(r"[?#]", store.root.rsplit("/", 1)[-1])[0] or "input")
    try:
        with storage_errors(location):
            store.fs.get_file(store.root, str(local))
    except FileNotFoundError:
        raise FlowDCError(f"input file not found: {location}; check the --input URL") from None
    return local


def load_remote_plan(store: RemoteStore, local: Path) -> Plan | None:
    """Copy the output's plan into `local` and load it; None when the output has no plan."""
    names = store.names()
    if PLAN_META not in names or PLAN_TABLE not in names:
        return None
    store.download(PLAN_TABLE, local / PLAN_TABLE)
    store.download(PLAN_META, local / PLAN_META)
    return Plan.load(local)


def check_remote_output(store: RemoteStore, overwrite: bool, output_format: str) -> set[str]:
    """Refuse what local outputs refuse; return the names under the prefix."""
    if output_format == "imagefolder":
        raise FlowDCError(
            f"imagefolder output cannot go to object storage ({store.url}); use --output_format "
            f"webdataset, or a local or NFS folder"
        )
    names = store.names()
    if names and overwrite:
        store.clear()
        return set()
    if names and PLAN_META not in names and PLAN_TABLE not in names:
        raise FlowDCError(
            f"output {store.url} is not empty and was not made by FLOW-DC; pick a new or empty "
            f"prefix (nothing was changed)"
        )
    return names


def push_plan(store: RemoteStore, local: Path) -> None:
    """Upload a new plan: its table first, its JSON (which makes it a plan) last."""
    store.upload(local / PLAN_TABLE, PLAN_TABLE)
    if (local / LABELS_FILE).exists():
        store.upload(local / LABELS_FILE, LABELS_FILE)
    store.upload(local / PLAN_META, PLAN_META)


def pull_committed(store: RemoteStore, local: Path, with_results: bool) -> None:
    """Copy the markers (and results tables) of committed shards into `local`."""
    for name in store.names():
        if not MARKER_FILE.match(name):
            continue
        shard = int(name.split("_", 1)[0])
        if with_results:
            store.download(results_path("", shard).name, results_path(local, shard))
        store.download(name, local / name)


def push_files(store: RemoteStore, local: Path, names: tuple[str, ...]) -> None:
    for name in names:
        if (local / name).exists():
            store.upload(local / name, name)


_plans: dict[tuple[str, str], Plan] = {}


def worker_plan(target: str, storage_options: dict[str, Any] | None, plan_id: str) -> Plan:
    """The plan as a worker sees it, read once per process and plan (a rerun may replan)."""
    key = (target, plan_id)
    if key not in _plans:
        if is_remote(target):
            local = Path(tempfile.mkdtemp(prefix="flowdc-plan-"))
            atexit.register(shutil.rmtree, local, True)
            plan = load_remote_plan(store_for(target, storage_options), local)
        else:
            plan = Plan.load(target)
        if plan is None:
            raise FileNotFoundError(f"no plan in {target}")
        _plans[key] = plan
    return _plans[key]


async def run_shard_to(
    target: str,
    storage_options: dict[str, Any] | None,
    plan: Plan,
    shard: int,
    config: Any,
    fetcher: Any,
    on_progress: Any = None,
) -> ShardResult:
    """run_shard into `target`: in place for a folder, staged and uploaded for object storage."""
    if not is_remote(target):
        return await run_shard_async(plan, shard, config, fetcher, on_progress)
    store = store_for(target, storage_options)
    marker = stats_path("", shard).name
    committed = await asyncio.to_thread(store.read_text, marker)
    if committed is not None:
        return ShardResult.from_json(committed)
    staging = Path(tempfile.mkdtemp(prefix=f"flowdc-{shard:05d}-"))
    try:
        (staging / PLAN_TABLE).symlink_to(plan.table_path)
        local = dataclasses.replace(plan, output=str(staging))
        result = await run_shard_async(
            local, shard, config, fetcher, on_progress, RemoteCommitted(store)
        )
        await asyncio.to_thread(_upload_shard, store, staging, shard)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return result


def _upload_shard(store: RemoteStore, staging: Path, shard: int) -> None:
    """Samples, then results, then the marker; skipped when another attempt committed first."""
    marker = stats_path(staging, shard)
    if store.read_text(marker.name) is not None:
        return
    samples = [
        p for p in (tar_path(staging, shard), parquet_shard_path(staging, shard)) if p.exists()
    ]
    for path in (*samples, results_path(staging, shard), marker):
        store.upload(path, path.name)


class RemoteCommitted:
    """Committed shards on object storage, for rows that repeat an earlier shard's URL
    (shard/committed.py). Whether another machine runs a shard cannot be told here."""

    poll_seconds = 2.0
    KEEP_TARS = 2
    _tars: ClassVar[OrderedDict[tuple[str, int], Path]] = OrderedDict()
    _lock = threading.Lock()

    def __init__(self, store: RemoteStore) -> None:
        self.store = store

    def committed(self, shard: int) -> bool:
        path = self.store.path(stats_path("", shard).name)
        self.store.fs.invalidate_cache(path)
        with storage_errors(self.store.url):
            return bool(self.store.fs.exists(path))

    def stamp(self, shard: int) -> Any:
        return None  # no retry pass on object storage

    def alive(self, shard: int) -> bool | None:
        return None

    def owner_rows(self, shard: int, keys: Collection[str]) -> dict[str, dict[str, Any]]:
        with storage_errors(self.store.url):
            data = self.store.fs.cat_file(self.store.path(results_path("", shard).name))
        names = set(pq.read_schema(pa.BufferReader(data)).names)
        table = pq.read_table(io.BytesIO(data), columns=[c for c in OWNER_COLUMNS if c in names])
        return rows_by_key(table, keys)

    def stored_bytes(self, shard: int, path: str) -> bytes | None:
        try:
            return TarIndex.member(self._local_tar(shard), path)
        except (FileNotFoundError, FlowDCError):
            return None  # the repeat is fetched itself

    def _local_tar(self, shard: int) -> Path:
        """The shard's tar, downloaded once into this process's cache of the last few."""
        entry = (self.store.url, shard)
        with self._lock:
            local = self._tars.get(entry)
            if local is not None and local.exists():
                self._tars.move_to_end(entry)
                return local
            folder = Path(tempfile.mkdtemp(prefix="flowdc-owners-"))
            atexit.register(shutil.rmtree, folder, True)
            local = folder / tar_path("", shard).name
            self.store.download(local.name, local)
            self._tars[entry] = local
            while len(self._tars) > self.KEEP_TARS:
                _, old = self._tars.popitem(last=False)
                shutil.rmtree(old.parent, ignore_errors=True)
            return local
