"""What a shard reads of another shard's committed output: its rows' outcomes and samples.

A row that repeats an earlier shard's URL (shard/repeats.py) waits for that shard's commit,
then copies its owner's results row and stored sample. `CommittedShards` is the interface;
`LocalCommitted` reads a folder (local or shared by every machine); storage/remote.py has the
object-storage one. Only committed files are read: a marker says the shard's results table and
samples are in place, and they never change but by a retry pass, which replaces them whole.

A shard's liveness says whether waiting for it makes sense: a shard running in this process
(`running`), or one whose temporary tar or journal another process holds locked, is alive.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
import threading
from collections import OrderedDict
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, Protocol

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from flowdc.core.layout import (
    TEMP_MARK,
    is_committed,
    journal_path,
    results_path,
    shard_temp_prefixes,
    stats_path,
    tar_path,
)
from flowdc.shard.writers import in_use

OWNER_COLUMNS = (
    "key",
    "status",
    "error",
    "http_status",
    "bytes",
    "sha256",
    "stored_sha256",
    "width",
    "height",
    "format",
    "content_type",
    "path",
    "final_url",
    "retryable",
    "original_width",
    "original_height",
    "duplicate_of",
)
"""The results columns a repeat copies from its owner (path and key to find the sample)."""

_Index = dict[str, tuple[int, int]]
_running: set[tuple[str, int]] = set()
"""(output, shard) of the shards this process runs now."""


@contextmanager
def running(output: Path, shard: int) -> Iterator[None]:
    """Mark the shard as run by this process while the block lasts."""
    entry = (str(output), shard)
    _running.add(entry)
    try:
        yield
    finally:
        _running.discard(entry)


class CommittedShards(Protocol):
    poll_seconds: float

    def committed(self, shard: int) -> bool:
        """Whether the shard's marker exists."""

    def stamp(self, shard: int) -> Any:
        """Something that changes when the shard's marker is written again (a retry pass)."""

    def alive(self, shard: int) -> bool | None:
        """Whether an attempt of the shard runs now; None when it cannot be told."""

    def owner_rows(self, shard: int, keys: Collection[str]) -> dict[str, dict[str, Any]]:
        """The committed results rows of `keys` (OWNER_COLUMNS), by key."""

    def stored_bytes(self, shard: int, path: str) -> bytes | None:
        """The sample a committed row stored (its `path`), or None when it is not there."""


def rows_by_key(table: pa.Table, keys: Collection[str]) -> dict[str, dict[str, Any]]:
    """The rows of a results table whose key is in `keys`, by key (columns a version before
    them did not write are None)."""
    table = table.filter(pc.is_in(table.column("key"), pa.array(list(keys), pa.string())))
    rows = table.to_pylist()
    for row in rows:
        for name in OWNER_COLUMNS:
            row.setdefault(name, None)
    return {row["key"]: row for row in rows}


def sha256_matches(data: bytes, expected: str | None) -> bool:
    return expected is not None and hashlib.sha256(data).hexdigest() == expected


class TarIndex:
    """Where each member of a committed tar lies: (offset of its data, size) by name.

    Reading a tar's headers walks the whole file, so the index of the last few tars read is
    kept, per process, for as long as the tar is the same file (a retry pass replaces it)."""

    KEEP = 8
    _indexes: ClassVar[OrderedDict[tuple[str, int, int], _Index]] = OrderedDict()
    _lock = threading.Lock()

    @classmethod
    def member(cls, tar: Path, name: str) -> bytes | None:
        try:
            with open(tar, "rb") as handle:
                stat = os.fstat(handle.fileno())
                index = cls._index(handle, (str(tar), stat.st_ino, stat.st_mtime_ns))
                where = index.get(name)
                if where is None:
                    return None
                handle.seek(where[0])
                return handle.read(where[1])
        except (OSError, tarfile.TarError):
            return None

    @classmethod
    def _index(cls, handle: Any, identity: tuple[str, int, int]) -> _Index:
        with cls._lock:
            found = cls._indexes.get(identity)
            if found is not None:
                cls._indexes.move_to_end(identity)
                return found
        index = {
            member.name: (member.offset_data, member.size)
            for member in tarfile.open(fileobj=handle, mode="r:")
            if member.isfile()
        }
        with cls._lock:
            cls._indexes[identity] = index
            while len(cls._indexes) > cls.KEEP:
                cls._indexes.popitem(last=False)
        return index


class NoOtherShards:
    """A shard run where no other shard's output can be seen (TaskVine's gathered mode: the
    worker's sandbox holds its own shard only): a repeat of another shard's URL is fetched at
    once instead of waiting for a commit it would never see."""

    poll_seconds = 0.0

    def committed(self, shard: int) -> bool:
        return False

    def stamp(self, shard: int) -> Any:
        return None

    def alive(self, shard: int) -> bool | None:
        return False

    def owner_rows(self, shard: int, keys: Collection[str]) -> dict[str, dict[str, Any]]:
        return {}

    def stored_bytes(self, shard: int, path: str) -> bytes | None:
        return None


class LocalCommitted:
    """The committed shards of an output folder (local, or shared by every machine)."""

    poll_seconds = 0.5

    def __init__(self, output: Path, output_format: str) -> None:
        self.output = output
        self.output_format = output_format

    def committed(self, shard: int) -> bool:
        return is_committed(self.output, shard)

    def stamp(self, shard: int) -> Any:
        try:
            stat = stats_path(self.output, shard).stat()
        except OSError:
            return None
        return (stat.st_ino, stat.st_mtime_ns)

    def alive(self, shard: int) -> bool | None:
        if (str(self.output), shard) in _running:
            return True  # never open its files here: closing one drops this process's locks
        if self.output_format == "imagefolder":  # its root holds a folder per label: not listed
            journal = journal_path(self.output, shard)
            return journal.exists() and in_use(journal)
        prefixes = shard_temp_prefixes(shard)
        try:
            with os.scandir(self.output) as entries:
                temporary = [
                    entry.path
                    for entry in entries
                    if entry.name.startswith(prefixes) and TEMP_MARK in entry.name
                ]
        except OSError:
            return None
        return any(in_use(Path(path)) for path in temporary)

    def owner_rows(self, shard: int, keys: Collection[str]) -> dict[str, dict[str, Any]]:
        path = results_path(self.output, shard)
        names = set(pq.read_schema(path).names)
        table = pq.read_table(path, columns=[c for c in OWNER_COLUMNS if c in names])
        return rows_by_key(table, keys)

    def stored_bytes(self, shard: int, path: str) -> bytes | None:
        if self.output_format == "webdataset":
            return TarIndex.member(tar_path(self.output, shard), path)
        target = (self.output / path).resolve()
        if self.output.resolve() not in target.parents:
            return None
        try:
            return target.read_bytes()
        except OSError:
            return None
