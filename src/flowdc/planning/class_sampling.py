"""--max_per_class and --min_per_class: which rows of a long-tailed list a run requests.

A class with more than `max_per_class` requested rows keeps the `max_per_class` rows of smallest
rank, where a row's rank is a keyed BLAKE2b hash of its URL with the seed as key (ties, which
only rows of one URL share, go by the row's place in the list): the sample is the same for the
same list and seed, whatever the list's order or shard size. A class with fewer than
`min_per_class` requested rows is left out whole. "Requested" leaves out the rows a shard would
not fetch anyway (no label for imagefolder, a licence --license_filter refuses), so a cap of 100
means 100 rows that will be tried.

Memory: each requested row's (class, rank, index) is spilled to disk partitioned by class;
a partition is read in chunks, keeping per class the `max_per_class` smallest ranks seen so far,
so memory holds a chunk plus at most `max_per_class` records of the partition's large classes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from flowdc.planning.repeated_urls import hashed
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
        self.key = hashlib.sha256(str(seed).encode()).digest()  # 32 bytes: a BLAKE2b key
        self.records = Partitions(folder, "classes", CLASS_RECORD)
        self.requested: list[int] = []  # per class id

    def rank(self, urls: pa.Array) -> np.ndarray:
        """Each URL's rank: 8 bytes of BLAKE2b keyed with the seed."""
        return hashed(urls, 8, self.key).view("<u8")

    def add(self, class_ids: list[int], urls: pa.Array, indices: np.ndarray) -> None:
        """Spill the requested labelled rows `indices`, of classes `class_ids`."""
        if not class_ids:
            return
        grow = max(class_ids) + 1 - len(self.requested)
        if grow > 0:
            self.requested.extend([0] * grow)
        for class_id in class_ids:
            self.requested[class_id] += 1
        records = np.empty(len(class_ids), CLASS_RECORD)
        records["cls"] = class_ids
        records["rank"] = self.rank(urls) if self.max_per_class is not None else 0
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
