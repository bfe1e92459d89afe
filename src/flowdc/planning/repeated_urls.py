"""Rows whose URL an earlier row of the list has, found while planning in bounded memory.

Real lists repeat URLs (the spider100 list: 100,000 rows, 19,998 distinct URLs; GBIF: one image
shared by several occurrences). The first requested row of each URL is its owner; every later
row with that URL is a repeat and is never requested: run_shard gives it its owner's outcome
(shard/repeats.py). Finding them holds no URL in memory: each requested row's URL is hashed to 16
bytes (BLAKE2b; two different URLs of a list of a billion rows share a digest with odds under
1e-20) and spilled with the row's index, partitioned by the digest. Once every row is seen (and
the class sampling has said which rows are not requested), each partition is sorted by (digest,
index): in each run of one digest the first row is the owner. The (repeat, owner) pairs are
spilled again, bucketed by the repeat's place in the plan, so that the plan's shards are
written in order with one bucket in memory.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa

from flowdc.planning.spill import Partitions

URL_RECORD = np.dtype([("hi", "<u8"), ("lo", "<u8"), ("index", "<u8")])
PAIR = np.dtype([("repeat", "<u8"), ("owner", "<u8")])
HASH_SLICE = 4096
BUCKET_ROWS = 1 << 20
"""Rows of the plan per bucket of pairs (rounded to whole shards): at most 16 MB of pairs."""


def url_digests(urls: pa.Array) -> np.ndarray:
    """16-byte BLAKE2b digests of the URLs (UTF-8) of a string array without nulls, as (n, 2)
    unsigned 64-bit words. Hashed from the array's buffers, a slice at a time: the batch's URLs
    as Python strings, or its digests as Python bytes, took more memory than the rest of
    planning."""
    count = len(urls)
    out = np.empty(count * 16, np.uint8)
    if count:
        offsets = np.frombuffer(urls.buffers()[1], np.int32)[urls.offset : urls.offset + count + 1]
        data = urls.buffers()[2]
        view = memoryview(data) if data is not None else memoryview(b"")
        blake2b = hashlib.blake2b
        for start in range(0, count, HASH_SLICE):
            bounds = offsets[start : start + HASH_SLICE + 1].tolist()
            joined = b"".join(
                [
                    blake2b(view[low:high], digest_size=16).digest()
                    for low, high in itertools.pairwise(bounds)
                ]
            )
            out[start * 16 : start * 16 + len(joined)] = np.frombuffer(joined, np.uint8)
    return out.view("<u8").reshape(-1, 2)


class RepeatFinder:
    """Collects the requested rows' URL digests; `pairs` says which rows repeat which."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.digests = Partitions(folder, "urls", URL_RECORD)

    def add(self, words: np.ndarray, indices: np.ndarray) -> None:
        """Spill the URL digests `words` (url_digests) of the rows `indices`."""
        if len(words) == 0:
            return
        records = np.empty(len(words), URL_RECORD)
        records["hi"], records["lo"], records["index"] = words[:, 0], words[:, 1], indices
        partition = (records["hi"] % self.digests.count).astype(np.intp)
        self.digests.add(records, partition)

    def pairs(
        self, requested: Callable[[np.ndarray], np.ndarray], total_rows: int, shard_size: int
    ) -> RepeatPairs:
        """Sort each partition and spill (repeat, owner) pairs; `requested` says which of the
        given row indices are still requested (the class sampling may have left some out)."""
        self.digests.flush()
        bucket_rows = max(1, BUCKET_ROWS // shard_size) * shard_size
        buckets = max(1, -(-total_rows // bucket_rows))
        found = Partitions(self.folder, "pairs", PAIR, count=buckets)
        for partition in range(self.digests.count):
            records = self.digests.read(partition)
            records = records[requested(records["index"])]
            if len(records) < 2:
                continue
            records = records[np.lexsort((records["index"], records["lo"], records["hi"]))]
            first = np.ones(len(records), bool)  # the first row of each run of one digest
            first[1:] = (records["hi"][1:] != records["hi"][:-1]) | (
                records["lo"][1:] != records["lo"][:-1]
            )
            owners = records["index"][first][np.cumsum(first) - 1]
            repeats = ~first
            if not repeats.any():
                continue
            pairs = np.empty(int(repeats.sum()), PAIR)
            pairs["repeat"], pairs["owner"] = records["index"][repeats], owners[repeats]
            found.add(pairs, (pairs["repeat"] // bucket_rows).astype(np.intp))
            del records, owners, first, repeats
        found.flush()
        return RepeatPairs(found, bucket_rows)


class RepeatPairs:
    """The (repeat, owner) pairs, read back one bucket at a time in plan order."""

    def __init__(self, buckets: Partitions, bucket_rows: int) -> None:
        self.buckets = buckets
        self.bucket_rows = bucket_rows
        self.count = buckets.records
        self._loaded = -1
        self._pairs = np.empty(0, PAIR)

    def owners(self, start: int, rows: int) -> tuple[np.ndarray, np.ndarray]:
        """(repeat, owner) row indices for the repeats among rows start..start+rows-1, which
        lie in one bucket (a shard never spans two)."""
        bucket = start // self.bucket_rows
        if bucket != self._loaded:
            pairs = self.buckets.read(bucket)
            self._pairs = pairs[np.argsort(pairs["repeat"], kind="stable")]
            self._loaded = bucket
        repeats = self._pairs["repeat"]
        low, high = np.searchsorted(repeats, [start, start + rows])
        return repeats[low:high], self._pairs["owner"][low:high]
