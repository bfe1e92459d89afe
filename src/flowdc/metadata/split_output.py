"""Making the split of an output's stored samples, from its committed results tables.

Two passes over the results tables, reading only the columns they need: the first turns each
row that takes part (stored samples, and --dedupe duplicates as links) into numbers: its key, a
class id, and a 64-bit hash of each link value (sha256, each group column), so memory grows by a
few dozen bytes per row, not by the strings; `splits.assign` decides. The second writes, shard
by shard: `splits.parquet` (key -> split), one list per split (`split=train.parquet`: key, file
name, label; what Croissant and WebDataset users read) and, for ImageFolder, the split layout
beside the output (split_layout.py). The results tables are never rewritten. `splits.json` is
deleted first and written last (counts per split and class, the seed, the rule and the leakage
check): readers of the other split files (`flowdc.results`, croissant.json) look for it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from flowdc.core.errors import FlowDCError
from flowdc.core.files import atomic_write_text
from flowdc.core.layout import (
    SPLIT_NAMES,
    SPLITS_FILE,
    SPLITS_SUMMARY,
    results_path,
    split_list_name,
    temp_name,
)
from flowdc.core.split_ratios import parse_ratios
from flowdc.core.status import DUPLICATE, SUCCESS
from flowdc.core.version import __version__
from flowdc.metadata.split_layout import LayoutWriter, check_replaceable
from flowdc.metadata.splits import NONE, Assignment, SplitRows, assign, leaks
from flowdc.metadata.tables import committed_shards
from flowdc.planning.plan import Plan

NO_CLASS = "(no label)"
RULE = (
    "Samples linked by a group value, by the same sha256 or by duplicate_of form one unit and "
    "share a split. Each unit counts for its most common class; within a class, units are "
    "ordered by a hash of the seed and the unit's first key and laid end to end, and a unit goes "
    "to the split whose share holds its middle. A class with at least as many units as splits "
    "has a unit in every split; a class with fewer goes whole to train."
)


@dataclass(frozen=True)
class SplitRequest:
    """What to split by: `by` is the column to stratify by (default: the label column), `group`
    the columns whose equal values must share a split."""

    ratios: dict[str, float]
    by: str | None = None
    group: tuple[str, ...] = ()
    seed: int = 0

    @classmethod
    def parse(
        cls, ratios: Any, by: str | None = None, group: Any = None, seed: int = 0
    ) -> SplitRequest:
        if isinstance(group, str):
            group = [name.strip() for name in group.split(",") if name.strip()]
        return cls(parse_ratios(ratios), by or None, tuple(group or ()), int(seed))


@dataclass
class _Loaded:
    """Pass one's numbers, per shard then joined."""

    keys: list[np.ndarray] = field(default_factory=list)
    classes: list[np.ndarray] = field(default_factory=list)
    stored: list[np.ndarray] = field(default_factory=list)
    duplicate_of: list[np.ndarray] = field(default_factory=list)
    hashes: dict[str, list[np.ndarray]] = field(default_factory=dict)
    present: dict[str, list[np.ndarray]] = field(default_factory=dict)
    class_ids: dict[str | None, int] = field(default_factory=dict)

    def rows(self) -> SplitRows:
        links = []
        for name, parts in self.hashes.items():
            hashes, present = np.concatenate(parts), np.concatenate(self.present[name])
            ids = np.full(len(hashes), NONE, dtype=np.int64)
            ids[present] = np.unique(hashes[present], return_inverse=True)[1]
            links.append(ids)
        return SplitRows(
            keys=np.concatenate(self.keys),
            classes=np.concatenate(self.classes),
            stored=np.concatenate(self.stored),
            links=links,
            duplicate_of=np.concatenate(self.duplicate_of),
        )


def _hash64(value: str) -> int:
    return int.from_bytes(hashlib.blake2b(value.encode(), digest_size=8).digest(), "little")


def _hashed(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """A 64-bit hash of each value (computed once per distinct value of the shard) and whether
    the row has one: null, empty and blank values link nothing."""
    encoded = pc.dictionary_encode(pc.cast(column, pa.string()).combine_chunks())
    values = encoded.dictionary.to_pylist()
    hashes = np.array([_hash64(value) for value in values], dtype=np.uint64)
    blank = np.array([not value.strip() for value in values], dtype=bool)
    indices = encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    hashes, blank = np.append(hashes, np.uint64(0)), np.append(blank, True)  # index -1: null
    return hashes[indices], ~blank[indices]


_HEX = np.full(256, 255, dtype=np.uint8)
_HEX[np.frombuffer(b"0123456789abcdef", np.uint8)] = np.arange(16)
_HEX[np.frombuffer(b"ABCDEF", np.uint8)] = np.arange(10, 16)


def _sha256_prefixes(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """The first 64 bits of each hex sha256, decoded with numpy (hashing them one by one was a
    third of the split's time); anything but hex digests goes through `_hashed`. Two images
    whose digests share 64 bits would share a split: a 1 in 10^5 chance among 10^7 images."""
    array = pc.cast(column, pa.string()).combine_chunks()
    present = array.is_valid().to_numpy(zero_copy_only=False)
    digests = array.filter(pa.array(present)) if array.null_count else array
    starts = pc.utf8_slice_codeunits(digests, 0, 16)
    data = np.frombuffer(starts.buffers()[2] or b"", np.uint8)[
        : pc.sum(pc.utf8_length(starts)).as_py() or 0
    ]
    if len(data) != 16 * len(digests):
        return _hashed(column)
    nibbles = _HEX[data].reshape(-1, 16).astype(np.uint64)
    if (nibbles == 255).any():
        return _hashed(column)
    values = np.zeros(len(digests), dtype=np.uint64)
    for place in range(16):
        values = (values << np.uint64(4)) | nibbles[:, place]
    prefixes = np.zeros(len(present), dtype=np.uint64)
    prefixes[present] = values
    return prefixes, present


def _class_ids(
    column: pa.ChunkedArray | None, count: int, ids: dict[str | None, int]
) -> np.ndarray:
    """Each row's class id; ids are given in the order values are first met (None: no value)."""
    if column is None:
        return np.full(count, ids.setdefault(None, len(ids)), dtype=np.int64)
    encoded = pc.dictionary_encode(pc.cast(column, pa.string()).combine_chunks())
    mapping = [ids.setdefault(value, len(ids)) for value in encoded.dictionary.to_pylist()]
    if encoded.indices.null_count:
        mapping.append(ids.setdefault(None, len(ids)))  # index -1 below
    indices = encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False)
    return np.array(mapping, dtype=np.int64)[indices] if count else np.empty(0, np.int64)


def _results_column(plan: Plan, names: list[str], name: str, option: str) -> str:
    """The results column an input column name (or a results column name) stands for."""
    if plan.label_column is not None and name == plan.label_column:
        return "label"
    for plan_name, input_name in plan.extra_columns.items():
        if name == input_name:
            return plan_name
    if name in names:
        return name
    raise FlowDCError(
        f"{option} {name}: no such column in the results tables of {plan.output}; they have "
        f"{', '.join(names)}"
    )


def _columns(plan: Plan, request: SplitRequest) -> tuple[str | None, dict[str, str]]:
    """The results column to stratify by, and each group option's results column."""
    shards = committed_shards(plan)
    if not shards:
        raise FlowDCError(
            f"nothing to split: no shard of {plan.output} is committed yet; run the download"
        )
    names = pq.read_schema(results_path(plan.output, shards[0])).names
    by = (
        _results_column(plan, names, request.by, "--by")
        if request.by
        else ("label" if plan.label_column is not None else None)
    )
    groups = {name: _results_column(plan, names, name, "--group") for name in request.group}
    return by, groups


def _load(plan: Plan, by: str | None, groups: dict[str, str]) -> _Loaded:
    loaded = _Loaded()
    links = {"sha256": "sha256", **groups}
    for shard in committed_shards(plan):
        path = results_path(plan.output, shard)
        names = set(pq.read_schema(path).names)
        wanted = {"key", "status", "duplicate_of", *links.values(), *([by] if by else [])}
        table = pq.read_table(path, columns=[name for name in wanted if name in names])
        status = table.column("status")
        table = table.filter(pc.is_in(status, pa.array([SUCCESS, DUPLICATE])))
        loaded.keys.append(pc.cast(table.column("key"), pa.int64()).to_numpy())
        loaded.stored.append(
            pc.equal(table.column("status"), SUCCESS).to_numpy(zero_copy_only=False)
        )
        column = table.column(by) if by else None
        loaded.classes.append(_class_ids(column, table.num_rows, loaded.class_ids))
        if "duplicate_of" in table.column_names:
            copies = pc.cast(table.column("duplicate_of"), pa.int64()).fill_null(NONE)
            loaded.duplicate_of.append(copies.to_numpy())
        else:
            loaded.duplicate_of.append(np.full(table.num_rows, NONE, dtype=np.int64))
        for name, column_name in links.items():
            read = _sha256_prefixes if name == "sha256" else _hashed
            hashes, present = read(table.column(column_name))
            loaded.hashes.setdefault(name, []).append(hashes)
            loaded.present.setdefault(name, []).append(present)
    return loaded


class _Writers:
    """splits.parquet and the per-split lists, each written under a temporary name."""

    def __init__(self, output: Path, splits: list[str], labelled: bool) -> None:
        self.output = output
        self.table_schema = pa.schema([("key", pa.string()), ("split", pa.string())])
        columns = [("key", pa.string()), ("file", pa.string())]
        self.list_schema = pa.schema(columns + ([("label", pa.string())] if labelled else []))
        self.paths = {SPLITS_FILE: output / temp_name(SPLITS_FILE)}
        self.paths.update({s: output / temp_name(split_list_name(s)) for s in splits})
        self.table = pq.ParquetWriter(self.paths[SPLITS_FILE], self.table_schema)
        self.lists = {s: pq.ParquetWriter(self.paths[s], self.list_schema) for s in splits}

    def write(self, rows: pa.Table, names: np.ndarray) -> None:
        split_column = pa.array(names, pa.string())
        self.table.write_table(pa.table([rows.column("key"), split_column], self.table_schema))
        files = pc.replace_substring_regex(rows.column("path"), r"^.*/", "")
        for split, writer in self.lists.items():
            mask = pa.array(names == split)
            columns = [rows.column("key").filter(mask), files.filter(mask)]
            if "label" in self.list_schema.names:
                columns.append(rows.column("label").filter(mask))
            writer.write_table(pa.table(columns, self.list_schema))

    def close(self, commit: bool) -> None:
        for writer in (self.table, *self.lists.values()):
            writer.close()
        for name, path in self.paths.items():
            if commit:
                final = SPLITS_FILE if name == SPLITS_FILE else split_list_name(name)
                path.replace(self.output / final)
            else:
                path.unlink(missing_ok=True)


def _write(plan: Plan, split: np.ndarray, splits: list[str]) -> tuple[str | None, bool]:
    """Pass two; returns the ImageFolder layout's folder (None for WebDataset) and whether it
    holds hard links."""
    output = Path(plan.output)
    labelled = plan.label_column is not None
    writers = _Writers(output, splits, labelled)
    layout = LayoutWriter(output) if plan.output_format == "imagefolder" else None
    names_of = np.array(splits, dtype=object)
    done = False
    try:
        start = 0
        for shard in committed_shards(plan):
            columns = ["key", "status", "path", *(["label"] if labelled else [])]
            table = pq.read_table(results_path(output, shard), columns=columns)
            table = table.filter(pc.equal(table.column("status"), SUCCESS))
            names = names_of[split[start : start + table.num_rows]]
            start += table.num_rows
            writers.write(table, names)
            if layout is not None:
                for name, path in zip(names, table.column("path").to_pylist(), strict=True):
                    layout.add(name, path)
        if start != len(split):
            raise FlowDCError(
                f"the results tables of {output} changed while they were split; split again"
            )
        done = True
    finally:
        writers.close(commit=done)
        if layout is not None and not done:
            layout.abort()
    if layout is None:
        return None, False
    return str(layout.commit()), layout.hard_links


def _summary(
    plan: Plan,
    request: SplitRequest,
    by: str | None,
    rows: SplitRows,
    made: Assignment,
    layout: tuple[str | None, bool],
    class_ids: dict[str | None, int],
) -> dict[str, Any]:
    splits = list(request.ratios)
    stored = rows.stored
    split = made.split[stored]
    names = {index: NO_CLASS if name is None else name for name, index in class_ids.items()}
    per_class = np.bincount(
        rows.classes[stored] * len(splits) + split, minlength=len(names) * len(splits)
    ).reshape(-1, len(splits))
    unit_sizes = np.bincount(np.unique(made.unit[stored], return_inverse=True)[1])
    found = leaks(rows, made.split)
    link_names = ["sha256", *request.group]
    classes = {
        names[index]: {s: int(per_class[index, i]) for i, s in enumerate(splits)}
        for index in sorted(names, key=lambda index: names[index])
        if per_class[index].any()
    }
    totals = per_class.sum(axis=1)
    return {
        "flowdc_version": __version__,
        "made_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "ratios": request.ratios,
        "seed": request.seed,
        "by": request.by or (plan.label_column if by else None),
        "group": list(request.group),
        "rule": RULE,
        "samples": int(stored.sum()),
        "units": made.units,
        "largest_unit": int(unit_sizes.max(initial=0)),
        "counts": {s: int((split == i).sum()) for i, s in enumerate(splits)},
        "classes": classes,
        "whole_to_train": {
            names[index]: int(totals[index])
            for index in sorted(made.whole_to_train.tolist(), key=lambda i: names[i])
        },
        "leakage_check": {
            "ok": not any(found),
            "checked": ["sha256", "duplicate_of", *request.group],
            "values_in_two_splits": dict(zip(link_names, found, strict=True)),
        },
        "files": {
            "table": SPLITS_FILE,
            "lists": {s: split_list_name(s) for s in splits},
            "imagefolder": layout[0],
            "links": ("hard" if layout[1] else "symbolic") if layout[0] else None,
        },
    }


def write_splits(plan: Plan, request: SplitRequest) -> dict[str, Any]:
    """Split the stored samples of `plan`'s output and write the split files; returns the
    summary written to splits.json, the split's commit marker: the other split files count
    only while it is there. The caller holds the output's lock."""
    output = Path(plan.output)
    by, groups = _columns(plan, request)
    if plan.output_format == "imagefolder":
        check_replaceable(output)
    (output / SPLITS_SUMMARY).unlink(missing_ok=True)  # no summary: no finished split
    loaded = _load(plan, by, groups)
    rows = loaded.rows()
    if not rows.stored.any():
        raise FlowDCError(f"nothing to split: {output} holds no stored sample yet")
    made = assign(rows, list(request.ratios.values()), request.seed)
    splits = list(request.ratios)
    for name in SPLIT_NAMES:
        if name not in splits:
            (output / split_list_name(name)).unlink(missing_ok=True)
    layout = _write(plan, made.split[rows.stored], splits)
    summary = _summary(plan, request, by, rows, made, layout, loaded.class_ids)
    atomic_write_text(output / SPLITS_SUMMARY, json.dumps(summary, indent=1, ensure_ascii=False))
    return summary


def describe(summary: dict[str, Any]) -> list[str]:
    """What `flowdc split` prints: the counts, the small classes and the leakage check."""
    counts = ", ".join(f"{name} {count:,}" for name, count in summary["counts"].items())
    linked = ", ".join(summary["leakage_check"]["checked"])
    lines = [
        f"split {summary['samples']:,} samples ({summary['units']:,} units of samples kept "
        f"together by {linked}) with seed {summary['seed']}: {counts}"
    ]
    small = summary["whole_to_train"]
    if small:
        named = ", ".join(f"{name} ({count})" for name, count in list(small.items())[:5])
        more = f" and {len(small) - 5:,} more" if len(small) > 5 else ""
        lines.append(
            f"{len(small):,} class(es) had fewer units than splits and went whole to train: "
            f"{named}{more}"
        )
    check = summary["leakage_check"]
    if check["ok"]:
        lines.append("leakage check: OK, no group or image is in two splits")
    else:
        found = ", ".join(f"{k} {v}" for k, v in check["values_in_two_splits"].items() if v)
        lines.append(f"leakage check FAILED (values in two splits: {found}); please report it")
    files = summary["files"]
    written = [SPLITS_SUMMARY, files["table"], *files["lists"].values()]
    lines.append("wrote " + ", ".join(written))
    if files["imagefolder"]:
        lines.append(f"split folders ({files['links']} links): {files['imagefolder']}")
    return lines
