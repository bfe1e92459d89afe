"""Fixed-size records spilled to disk while planning, in partitions small enough to sort.

Planning sees each row once, in input order, and some choices need every row first (which rows
share a URL, which rows of a class the seeded sample keeps). The rows' small records (a URL's
digest and the row's index; a class, a rank and the index) go to disk instead of memory: they
are gathered up to FLUSH_RECORDS, then appended to one file per partition (the caller says
which record goes where: by hash bits, so one URL's rows meet in one partition; or by class).
A partition is then read back alone, whole or in chunks, so memory holds one partition, not the
list: ten million rows in 256 partitions are about 40,000 records each.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

PARTITIONS = 256
FLUSH_RECORDS = 1 << 16
"""Records gathered before they are appended to their partitions' files (24 MB of 24-byte
records): each flush opens each partition's file once."""


class Partitions:
    """Records of one dtype in PARTITIONS files under `folder`, named `name`-NNN."""

    def __init__(self, folder: Path, name: str, dtype: np.dtype, count: int = PARTITIONS) -> None:
        self.folder = folder
        self.name = name
        self.dtype = np.dtype(dtype)
        self.count = count
        self.records = 0
        self._key = np.uint8 if count <= 256 else np.uint16 if count <= 65536 else np.int64
        self._gathered: list[tuple[np.ndarray, np.ndarray]] = []
        self._held = 0

    def path(self, partition: int) -> Path:
        return self.folder / f"{self.name}-{partition:03d}"

    def add(self, records: np.ndarray, partition: np.ndarray) -> None:
        """Spill `records`; `partition` says the partition (0..count-1) of each."""
        if len(records) == 0:
            return
        self._gathered.append((records, partition))
        self._held += len(records)
        self.records += len(records)
        if self._held >= FLUSH_RECORDS:
            self.flush()

    def flush(self) -> None:
        if not self._gathered:
            return
        records = np.concatenate([r for r, _ in self._gathered])
        # small keys sort by radix: uint8 for 256 partitions
        partition = np.concatenate([p for _, p in self._gathered]).astype(self._key)
        self._gathered, self._held = [], 0
        records = records[np.argsort(partition, kind="stable")]
        bounds = np.zeros(self.count + 1, np.int64)
        np.cumsum(np.bincount(partition, minlength=self.count), out=bounds[1:])
        for index in range(self.count):
            start, stop = bounds[index], bounds[index + 1]
            if stop > start:
                with open(self.path(index), "ab") as handle:
                    handle.write(records[start:stop].tobytes())

    def read(self, partition: int) -> np.ndarray:
        """Every record of a partition (after `flush`)."""
        path = self.path(partition)
        if not path.exists():
            return np.empty(0, self.dtype)
        return np.fromfile(path, self.dtype)

    def chunks(self, partition: int, records: int) -> Iterator[np.ndarray]:
        """A partition's records, at most `records` at a time (after `flush`)."""
        path = self.path(partition)
        if not path.exists():
            return
        size = self.dtype.itemsize
        left = path.stat().st_size // size
        with open(path, "rb") as handle:
            while left:  # a read of more than the file holds allocates it all the same
                count = min(records, left)
                yield np.frombuffer(handle.read(count * size), self.dtype)
                left -= count
