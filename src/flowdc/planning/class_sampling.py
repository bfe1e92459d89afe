"""--max_per_class and --min_per_class: which rows of a long-tailed list a run requests.

A class with more than `max_per_class` requested rows keeps the `max_per_class` rows of smallest
rank. A row's rank is its URL's BLAKE2b digest (the first 8 of the 16 bytes repeated_urls.py
computes anyway) mixed with the seed by SplitMix64's finalizer, a bijection: another seed,
another order (ties, which only rows of one URL share, go by the row's place in the list). So
the sample is the same for the same list and seed, whatever the list's order or shard size. A
class with fewer than `min_per_class` requested rows is left out whole. "Requested" leaves out
the rows a shard would not fetch anyway (no label for imagefolder, a licence --license_filter
refuses), so a cap of 100 means 100 rows that will be tried.

Memory: each requested row's (class, rank, index) is spilled to disk partitioned by class;
a partition is read in chunks, keeping per class the `max_per_class` smallest ranks seen so far,
so memory holds a chunk plus at most `max_per_class` records of the partition's large classes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flowdc.planning.spill import Partitions

CLASS_RECORD = np.dtype([("cls", "<u4"), ("rank", "<u8"), ("index", "<u8")])
CHUNK_RECORDS = 1 << 18
CLASS_TOO_SMALL_CODE = 3
CLASS_CAPPED_CODE = 4
"""The row codes (planned_rows.py) this module writes."""


@dataclass
class SamplingOutcome:
    """What the sampling decided, per class id (the order classes were first seen)."""

    requested: np.ndarray  # rows that would be requested without the sampling
    kept: np.ndarray  # rows the run requests
    too_small: np.ndarray  # bool: classes left out by min_per_class

    @property
    def capped_rows(self) -> int:
        return int((self.requested - self.kept)[~self.too_small].sum())

    @property
    def too_small_rows(self) -> int:
        return int(self.requested[self.too_small].sum())


class ClassSampler:
    """Collects (class, rank, row) of the requested labelled rows; `decide` marks the rows
    the sampling leaves out in a run's row codes."""

    def __init__(
        self, folder: Path, max_per_class: int | None, min_per_class: int | None, seed: int
    ) -> None:
        self.max_per_class = max_per_class
        self.min_per_class = min_per_class
        self.seed = np.uint64(
            int.from_bytes(hashlib.sha256(str(seed).encode()).digest()[:8], "little")
        )
        self.records = Partitions(folder, "classes", CLASS_RECORD)
        self.requested: list[int] = []  # per class id

    def rank(self, digests: np.ndarray) -> np.ndarray:
        """The ranks of URLs of 8-byte digests `digests`: SplitMix64's finalizer of digest XOR
        seed (64-bit arithmetic wraps, as it should)."""
        with np.errstate(over="ignore"):
            z = (digests ^ self.seed) + np.uint64(0x9E3779B97F4A7C15)
            z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
            return z ^ (z >> np.uint64(31))

    def add(self, class_ids: list[int], digests: np.ndarray, indices: np.ndarray) -> None:
        """Spill the requested labelled rows `indices`, of classes `class_ids` and URLs of
        8-byte digests `digests`."""
        if not class_ids:
            return
        grow = max(class_ids) + 1 - len(self.requested)
        if grow > 0:
            self.requested.extend([0] * grow)
        for class_id in class_ids:
            self.requested[class_id] += 1
        records = np.empty(len(class_ids), CLASS_RECORD)
        records["cls"] = class_ids
        records["rank"] = self.rank(digests) if self.max_per_class is not None else 0
        records["index"] = indices
        self.records.add(records, (records["cls"] % self.records.count).astype(np.intp))

    def decide(self, codes: np.ndarray, classes: int) -> SamplingOutcome:
        """Mark the rows left out in `codes` (indexed by row); `classes` is how many class ids
        there are (a class may have no requested row)."""
        self.records.flush()
        requested = np.zeros(classes, np.int64)
        requested[: len(self.requested)] = self.requested
        too_small = (
            requested < self.min_per_class
            if self.min_per_class is not None
            else np.zeros(classes, bool)
        )
        limit = self.max_per_class
        large = (requested > limit) & ~too_small if limit is not None else np.zeros(classes, bool)
        kept = np.where(too_small, 0, np.minimum(requested, limit or np.iinfo(np.int64).max))
        if not too_small.any() and not large.any():
            return SamplingOutcome(requested, kept, too_small)
        for partition in range(self.records.count):
            carried = np.empty(0, CLASS_RECORD)  # the smallest ranks so far of large classes
            for chunk in self.records.chunks(partition, CHUNK_RECORDS):
                small = too_small[chunk["cls"]]
                codes[chunk["index"][small]] = CLASS_TOO_SMALL_CODE
                if limit is None:
                    continue
                candidates = np.concatenate([carried, chunk[large[chunk["cls"]]]])
                carried = self._smallest(candidates, limit, codes)
        return SamplingOutcome(requested, kept, too_small)

    @staticmethod
    def _smallest(candidates: np.ndarray, limit: int, codes: np.ndarray) -> np.ndarray:
        """Keep the `limit` smallest (rank, index) of each class; mark the others capped."""
        if len(candidates) == 0:
            return candidates
        order = np.lexsort((candidates["index"], candidates["rank"], candidates["cls"]))
        candidates = candidates[order]
        classes = candidates["cls"]
        starts = np.ones(len(candidates), bool)
        starts[1:] = classes[1:] != classes[:-1]
        first = np.flatnonzero(starts)[np.cumsum(starts) - 1]
        within = np.arange(len(candidates)) < first + limit
        codes[candidates["index"][~within]] = CLASS_CAPPED_CODE
        return candidates[within]
