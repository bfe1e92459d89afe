"""Rows a run will not request, decided while planning: per-class caps and repeated URLs.

Planning streams the input once. Each row gets a code (one byte, spilled to a file): requested,
or not requested by its shard anyway (imagefolder without a label, a licence --license_filter
refuses: run_shard decides those itself, as before), or left out by the class sampling
(class_sampling.py). Requested rows' URLs are spilled for repeated_urls.py. When every row is
seen, the sampling marks its rows, then the repeats are found among the rows still requested.
Two plan columns carry the outcome to run_shard: `planned_status` (class_capped,
class_too_small: the row is recorded with it and never requested) and `same_url_position` (the
position in the list of the row that requests this row's URL: run_shard names it by its key).
A plan with neither kind of row gets no columns.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from flowdc.config.options import DownloadConfig
from flowdc.core.licenses import LicenseFilter
from flowdc.core.status import CLASS_CAPPED, CLASS_TOO_SMALL
from flowdc.planning.class_sampling import (
    CLASS_CAPPED_CODE,
    CLASS_TOO_SMALL_CODE,
    ClassSampler,
    SamplingOutcome,
)
from flowdc.planning.license_columns import row_filter
from flowdc.planning.repeated_urls import RepeatFinder, RepeatPairs, url_digests

REQUESTED, UNLABELED, REFUSED_LICENCE = 0, 1, 2
SPILL_SLICE = 16_384
"""Rows hashed and spilled at once (a batch is 65,536 rows)."""
_PLANNED_STATUS = pa.array(
    [
        {CLASS_TOO_SMALL_CODE: CLASS_TOO_SMALL, CLASS_CAPPED_CODE: CLASS_CAPPED}.get(c)
        for c in range(256)
    ],
    pa.string(),
)
"""The planned_status of each row code (null: the shard decides)."""


class RowPlanner:
    """Sees the plan's rows batch by batch (`add`), then decides (`finish`)."""

    def __init__(self, config: DownloadConfig, extras: dict[str, str], folder: Path) -> None:
        self.folder = folder
        self.needs_label = config.output_format == "imagefolder"
        licences = row_filter(extras, config)
        self.licence_column = extras[licences[0]] if licences is not None else None
        self.licence_filter: LicenseFilter | None = licences[1] if licences is not None else None
        self._allowed: dict[Any, bool] = {}
        self.sampler = (
            ClassSampler(folder, config.max_per_class, config.min_per_class, config.seed)
            if config.max_per_class is not None or config.min_per_class is not None
            else None
        )
        self.class_ids: dict[str, int] = {}
        self.repeats = RepeatFinder(folder)
        self.codes_path = folder / "codes"
        self._codes = open(self.codes_path, "wb")
        self.rows = 0

    def _allows(self, licence: Any) -> bool:
        allowed = self._allowed.get(licence)
        if allowed is None:
            assert self.licence_filter is not None
            allowed = self.licence_filter.allows(None if licence is None else str(licence))
            if len(self._allowed) < 100_000:  # a handful of licences in practice
                self._allowed[licence] = allowed
        return allowed

    def add(
        self, urls: pa.Array, labels: list[str | None] | None, licences: list[Any] | None
    ) -> None:
        """One batch: its URLs (a string array), labels (normalized) and licences (when
        filtered), in order."""
        if isinstance(urls, pa.ChunkedArray):
            urls = urls.combine_chunks()
        count = len(urls)
        codes = bytearray(count)
        if self.needs_label and labels is not None:
            for i, label in enumerate(labels):
                if label is None:
                    codes[i] = UNLABELED
        if licences is not None:
            for i, licence in enumerate(licences):
                if not codes[i] and not self._allows(licence):
                    codes[i] = REFUSED_LICENCE
        self._codes.write(codes)
        if self.sampler is not None and labels is not None:
            ids = self.class_ids
            for label in labels:  # every class, also one whose rows are all refused
                if label is not None and label not in ids:
                    ids[label] = len(ids)
        requested = np.frombuffer(codes, np.uint8) == REQUESTED
        if urls.null_count:
            requested &= urls.is_valid().to_numpy(zero_copy_only=False)
        for start in range(0, count, SPILL_SLICE):  # a slice at a time: less memory at once
            stop = min(count, start + SPILL_SLICE)
            self._spill(
                urls.slice(start, stop - start),
                labels[start:stop] if labels is not None else None,
                requested[start:stop],
                self.rows + start,
            )
        self.rows += count

    def _spill(
        self, urls: pa.Array, labels: list[str | None] | None, requested: np.ndarray, first: int
    ) -> None:
        """Spill the requested rows of a slice whose first row is `first` (plan order)."""
        everyone = bool(requested.all())
        picked = np.arange(len(urls)) if everyone else np.flatnonzero(requested)
        indices = picked.astype(np.uint64) + first
        digests = url_digests(urls if everyone else urls.take(picked))
        self.repeats.add(digests, indices)
        if self.sampler is not None and labels is not None:
            positions = picked.tolist()
            labelled = [n for n, i in enumerate(positions) if labels[i] is not None]
            self.sampler.add(
                [self.class_ids[labels[positions[n]]] for n in labelled],  # type: ignore[index]
                digests[labelled, 0],
                indices[labelled],
            )

    def finish(self, shard_size: int) -> RowChoices:
        """Decide: the sampling's left-out rows, then the repeats among the rows still
        requested."""
        self._codes.close()
        codes = (
            np.memmap(self.codes_path, np.uint8, "r+", shape=(self.rows,))
            if self.rows
            else np.zeros(0, np.uint8)
        )
        sampling = None
        if self.sampler is not None:
            sampling = self.sampler.decide(codes, len(self.class_ids))
        pairs = self.repeats.pairs(
            lambda indices: codes[indices] == REQUESTED, self.rows, shard_size
        )
        labels = list(self.class_ids)
        return RowChoices(codes, pairs, sampling, labels)


@dataclass
class RowChoices:
    """What `RowPlanner.finish` decided, read back shard by shard."""

    codes: np.ndarray
    pairs: RepeatPairs
    sampling: SamplingOutcome | None
    class_labels: list[str]  # label of each class id

    @property
    def changes_plan(self) -> bool:
        left_out = self.sampling is not None and bool(
            self.sampling.capped_rows or self.sampling.too_small_rows
        )
        return left_out or self.pairs.count > 0

    def too_small_labels(self) -> set[str]:
        if self.sampling is None:
            return set()
        return {self.class_labels[i] for i in np.flatnonzero(self.sampling.too_small)}

    def kept_rows(self) -> dict[str, int]:
        """Rows each class will request, for the classes the sampling keeps."""
        if self.sampling is None:
            return {}
        return {
            label: int(kept)
            for label, kept, small in zip(
                self.class_labels, self.sampling.kept, self.sampling.too_small, strict=True
            )
            if not small
        }

    def columns(self, start: int, rows: int) -> tuple[pa.Array, pa.Array]:
        """planned_status and same_url_position of the plan's rows start..start+rows-1."""
        codes = pa.array(np.asarray(self.codes[start : start + rows]))
        status = _PLANNED_STATUS.take(codes)
        repeats, owners = self.pairs.owners(start, rows)
        positions = np.zeros(rows, np.int64)
        repeated = np.zeros(rows, bool)
        positions[repeats - start] = owners
        repeated[repeats - start] = True
        return status, pa.array(positions, pa.int64(), mask=~repeated)


def sampling_summary(rows_per_class: list[int]) -> dict[str, Any]:
    """Classes, rows, and the smallest, median and largest class (rows per class)."""
    if not rows_per_class:
        return {"classes": 0, "rows": 0, "smallest": 0, "median": 0, "largest": 0}
    return {
        "classes": len(rows_per_class),
        "rows": int(sum(rows_per_class)),
        "smallest": int(min(rows_per_class)),
        "median": float(statistics.median(rows_per_class)),
        "largest": int(max(rows_per_class)),
    }
