"""Checking a shard that a worker built elsewhere and sent back, before any of it is committed.

A TaskVine manager takes workers from anyone who reaches its port, so it trusts nothing they
send: the shard's results table must be the plan's rows, one each, in order, with the plan's
keys, URLs, labels and extra columns; its samples file (the WebDataset tar, or for ImageFolder a
tar of the images by key) must be a plain ustar archive read here block by block: regular files
only, flat names that are the successful rows' own members (`KEY.ext`, `KEY.json`, `KEY.cls`,
`KEY.txt`), each once, each image's sha256 and size those of its results row, every padding and
trailing byte zero; the stats marker must be a JSON object of the expected shape (its counts are
recomputed from the results table when committed, never taken from it). Where an ImageFolder
image goes is decided here from the plan's label folders, never by a name the worker sent.

Any failure raises ShardRejected with a one-line reason. The files are read as streams, one
member at a time (no shard is held in memory).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq

from flowdc.core import status as statuses
from flowdc.core.errors import ShardRejected
from flowdc.core.results import HOST_COUNTS, RESULT_FIELDS
from flowdc.planning.plan import Plan, normalize_label

MAX_JSON_BYTES = 64 << 20
"""Largest stats marker accepted (per-host figures of a shard of many hosts)."""
MAX_RESULTS_BYTES = 1 << 30
KEPT_MEMBER_BYTES = 1 << 16
"""Members this small (a sample's .json, .cls, .txt) are read whole to be compared."""
MAX_TRAILER_BYTES = 1 << 20
"""Zero bytes allowed after the end of an archive (its end blocks and record padding)."""
_BLOCK = tarfile.BLOCKSIZE
_ZERO_BLOCK = bytes(_BLOCK)
_USTAR = b"ustar\x0000"
_HEX64 = re.compile(r"[0-9a-f]{64}")
_EXTENSION = re.compile(r"[a-z0-9]{1,5}")
STATUSES = frozenset(
    value for name, value in vars(statuses).items() if name.isupper() and isinstance(value, str)
)


@dataclass
class Member:
    """One regular file of a checked archive."""

    name: str
    size: int
    sha256: str
    data: bytes | None = None


@dataclass
class Expected:
    """What one member must be: an image of this digest and size, or these exact bytes (or, for
    a sample's JSON, an object naming this key and digest)."""

    key: str
    sha256: str | None = None
    size: int | None = None
    exact: bytes | None = None
    json_of: tuple[str, str] | None = None


@dataclass
class CheckedShard:
    """A returned shard that matched the plan: what commit_checked_shard needs."""

    shard: int
    tar: Path
    results: pa.Table
    hosts: dict[str, dict[str, Any]]
    retries: int
    seconds: float
    started_at: str
    images: dict[str, str | None] = field(default_factory=dict)
    """ImageFolder: member name (KEY.ext) -> the label whose folder it goes to."""


def check_returned_shard(
    plan: Plan, shard: int, rows: pa.Table, tar: Path, results: Path, stats: Path
) -> CheckedShard:
    """Check the three files a worker sent for `shard` (whose planned rows are `rows`)."""
    table = _read_results(results)
    expected, images = _expected_members(plan, shard, rows, table)
    seen = set()
    with open(tar, "rb", buffering=1 << 20) as handle:
        for member in read_members(handle, lambda name, size: size <= KEPT_MEMBER_BYTES):
            want = expected.get(member.name)
            if want is None or member.name in seen:
                what = "twice" if member.name in seen else "that is no sample of this shard"
                raise ShardRejected(f"its archive holds {member.name!r} {what}")
            seen.add(member.name)
            _check_member(member, want)
    missing = sorted(set(expected) - seen)
    if missing:
        raise ShardRejected(f"its archive lacks {len(missing)} member(s), such as {missing[0]!r}")
    marker = _read_stats(stats, shard)
    return CheckedShard(shard, tar, table, images=images, **marker)


def _read_results(path: Path) -> pa.Table:
    if path.stat().st_size > MAX_RESULTS_BYTES:
        raise ShardRejected("its results table is larger than any shard's can be")
    try:
        return pq.read_table(path)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise ShardRejected(f"its results table does not read ({exc})") from None


def _expected_members(
    plan: Plan, shard: int, rows: pa.Table, table: pa.Table
) -> tuple[dict[str, Expected], dict[str, str | None]]:
    """The results table against the plan's rows; the archive's members it calls for."""
    extras = list(plan.extra_columns)
    schema = pa.schema(RESULT_FIELDS + [rows.schema.field(name) for name in extras])
    if not table.schema.equals(schema):
        raise ShardRejected("its results table has other columns or types than the plan's")
    if table.num_rows != rows.num_rows:
        raise ShardRejected(
            f"its results table has {table.num_rows} rows, the plan {rows.num_rows}"
        )
    for name in ("key", "shard", "row", "url", *extras):
        if not table.column(name).combine_chunks().equals(rows.column(name).combine_chunks()):
            raise ShardRejected(f"its results' {name} column is not the plan's")
    class_index = (
        plan.class_index() if plan.labels is not None and plan.output_format == "webdataset" else {}
    )
    folders = plan.label_folders or {}
    imagefolder = plan.output_format == "imagefolder"
    expected: dict[str, Expected] = {}
    images: dict[str, str | None] = {}
    facts = ["key", "label", "class_index", "status", "path", "format", "sha256", "stored_sha256"]
    columns = table.select([*facts, "bytes"]).to_pylist()
    planned_labels = (
        rows.column("label").to_pylist() if "label" in rows.column_names else [None] * len(columns)
    )
    for planned, row in zip(planned_labels, columns, strict=True):
        key, label = row["key"], normalize_label(planned)
        if row["label"] != label or row["class_index"] != class_index.get(label or ""):
            raise ShardRejected(f"row {key}: its label or class is not the plan's")
        if row["status"] not in STATUSES:
            raise ShardRejected(f"row {key}: unknown status {str(row['status'])[:40]!r}")
        if row["status"] != statuses.SUCCESS:
            if row["path"] is not None:
                raise ShardRejected(f"row {key}: a path for a row that is no success")
            continue
        extension = row["format"] or ""
        stored = row["stored_sha256"] or row["sha256"] or ""
        if (
            not _EXTENSION.fullmatch(extension)
            or not _HEX64.fullmatch(row["sha256"] or "")
            or not _HEX64.fullmatch(stored)
            or not isinstance(row["bytes"], int)
            or row["bytes"] <= 0
        ):
            raise ShardRejected(f"row {key}: a success without a valid format, size or sha256")
        name = f"{key}.{extension}"
        if imagefolder:
            if label is None or label not in folders:
                raise ShardRejected(f"row {key}: a success with no label folder in the plan")
            if row["path"] != f"{folders[label]}/{name}":
                raise ShardRejected(f"row {key}: its path is not its label folder's")
            images[name] = label
        elif row["path"] != name:
            raise ShardRejected(f"row {key}: its path is not its key's")
        expected[name] = Expected(key, sha256=stored, size=row["bytes"])
        if imagefolder:
            continue
        expected[f"{key}.json"] = Expected(key, json_of=(key, row["sha256"]))
        if row["class_index"] is not None:
            expected[f"{key}.cls"] = Expected(key, exact=str(row["class_index"]).encode())
        if label is not None:
            expected[f"{key}.txt"] = Expected(key, exact=label.encode("utf-8"))
    if len({row["key"] for row in columns}) != len(columns):
        raise ShardRejected("its results table holds a key twice")
    return expected, images


def _check_member(member: Member, want: Expected) -> None:
    if want.sha256 is not None and (member.sha256 != want.sha256 or member.size != want.size):
        raise ShardRejected(f"{member.name}: its bytes are not those its results row names")
    if want.exact is not None and member.data != want.exact:
        raise ShardRejected(f"{member.name}: not the label or class its results row names")
    if want.json_of is not None:
        try:
            meta = json.loads(member.data or b"")
        except (UnicodeDecodeError, json.JSONDecodeError):
            meta = None
        key, digest = want.json_of
        if not isinstance(meta, dict) or meta.get("key") != key or meta.get("sha256") != digest:
            raise ShardRejected(f"{member.name}: not the JSON of sample {key}")


def read_members(handle: BinaryIO, keep: Callable[[str, int], bool]) -> Iterator[Member]:
    """The regular files of a ustar archive, strictly: each header's checksum, no other member
    type, no path in a name, zero padding, nothing but zeros after the end. `keep(name, size)`
    says whether a member's bytes are returned (its sha256 always is)."""
    while True:
        header = handle.read(_BLOCK)
        if len(header) < _BLOCK:
            raise ShardRejected("its archive is cut short (no end-of-archive blocks)")
        if header == _ZERO_BLOCK:
            break
        name, size = _regular_file(header)
        digest = hashlib.sha256()
        kept = [] if keep(name, size) else None
        left = size
        while left:
            chunk = handle.read(min(left, 1 << 20))
            if not chunk:
                raise ShardRejected(f"its archive is cut short in {name!r}")
            digest.update(chunk)
            if kept is not None:
                kept.append(chunk)
            left -= len(chunk)
        padding = handle.read(-size % _BLOCK)
        if padding.count(0) != len(padding) or len(padding) != -size % _BLOCK:
            raise ShardRejected(f"its archive has data hidden after {name!r}")
        data = b"".join(kept) if kept is not None else None
        yield Member(name, size, digest.hexdigest(), data)
    trailer = 0
    while chunk := handle.read(1 << 16):
        trailer += len(chunk)
        if chunk.count(0) != len(chunk) or trailer > MAX_TRAILER_BYTES:
            raise ShardRejected("its archive has data after its end")


def _regular_file(header: bytes) -> tuple[str, int]:
    """Name and size of a ustar header (as FLOW-DC's writers make them) for a regular file with a
    flat name; ShardRejected for anything else. Parsed here, not by tarfile's TarInfo.frombuf,
    which reads every field and cost 40 us a member (a third of the check of a returned shard)."""
    checksum = _octal(header[148:156])
    if checksum != sum(header) - sum(header[148:156]) + 8 * 32 or header[257:265] != _USTAR:
        raise ShardRejected("its archive does not read (a header that is no ustar header)")
    raw = header[:100].split(b"\0", 1)[0]
    try:
        name = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ShardRejected(
            f"its archive holds the name {raw!r}, which is no member name"
        ) from None
    if header[156:157] not in (b"0", b"\0"):
        raise ShardRejected(f"its archive holds {name!r}, which is no regular file")
    if (
        not name
        or "/" in name
        or "\\" in name
        or name in (".", "..")
        or header[345:500].strip(b"\0")
    ):
        raise ShardRejected(f"its archive holds the name {name!r}, which is no member name")
    size = _octal(header[124:136])
    if size is None:
        raise ShardRejected(f"its archive gives {name!r} no size it can read")
    return name, size


def _octal(field: bytes) -> int | None:
    digits = field.strip(b"\0 ")
    if not digits or digits.strip(b"01234567"):
        return None
    return int(digits, 8)


def _read_stats(path: Path, shard: int) -> dict[str, Any]:
    """The figures a commit takes from a worker's stats marker, checked for their types."""
    if path.stat().st_size > MAX_JSON_BYTES:
        raise ShardRejected("its stats file is larger than any shard's can be")
    try:
        data = json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ShardRejected(f"its stats file is no JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("shard") != shard:
        raise ShardRejected("its stats file is not this shard's")
    retries, seconds, started = data.get("retries"), data.get("seconds"), data.get("started_at")
    if not _count(retries) or not _number(seconds) or not isinstance(started, str):
        raise ShardRejected("its stats file lacks retries, seconds or started_at")
    hosts = data.get("hosts")
    if not isinstance(hosts, dict):
        raise ShardRejected("its stats file has no per-host figures")
    kept: dict[str, dict[str, Any]] = {}
    for host, figures in hosts.items():
        if not isinstance(figures, dict) or len(host) > 1000:
            raise ShardRejected("its per-host figures are not figures")
        numbers = {name: figures.get(name) for name in (*HOST_COUNTS, "rate", "concurrency")}
        if not all(value is None or _number(value) for value in numbers.values()):
            raise ShardRejected(f"its figures for host {host[:60]!r} are not numbers")
        kept[host] = numbers
    return {"hosts": kept, "retries": retries, "seconds": seconds, "started_at": started[:64]}


def _number(value: Any) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value >= 0
    )


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
