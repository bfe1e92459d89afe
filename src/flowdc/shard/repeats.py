"""Rows that repeat an earlier row's URL: never requested, given their owner's outcome.

The plan names, for each repeat, its owner: the first requested row of the list with that URL
(`same_url_position`, planning/repeated_urls.py). The owner is in the same shard or an earlier
one.

- Same shard: when the owner's row is done, each of its repeats gets a copy of its results
  record and, when it succeeded, its own sample made of the owner's stored bytes (its own key,
  label, class and JSON; for imagefolder a file in its own label's folder).
- Earlier shard: the repeat waits (holding no request slot) for that shard's commit, then copies
  the owner's committed results row and reads the owner's stored sample (from the committed tar
  or image file, checked against its sha256). Waiting is safe: an owner's shard is always an
  earlier one, the engines hand shards out in order, and the earliest shard not committed waits
  for nobody. When the owner's shard looks neither committed nor running for OWNER_DEAD_SECONDS
  (it failed, or no one will run it soon), or the owner's sample is missing or damaged, the
  repeat is fetched as any row is.

With --dedupe, a repeat of a stored sample is a reference instead: status duplicate and
duplicate_of, as a row with the same bytes is. Every repeat gets `same_url_as` (the owner's key)
in the results, `attempts` 0, and is counted in overview.json's requests_saved_by_repeated_urls.

In a retry pass (--retry_failed), a repeat whose owner is in another shard and failed worth a
retry waits for that shard's new commit (its retry pass in this run), then copies what it got.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Collection
from typing import Any

from flowdc.core.status import DUPLICATE, SUCCESS
from flowdc.shard.committed import CommittedShards, NoOtherShards, sha256_matches

OWNER_DEAD_SECONDS = 30.0
"""How long an owner's shard may look neither committed nor running before its repeats are
fetched themselves: a queued shard is taken within moments, and one that failed never commits."""
UNKNOWN_WAIT_SECONDS = 900.0
"""How long a repeat waits when nothing tells whether its owner's shard runs (object storage)."""

COPIED = (
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
    "final_url",
    "retryable",
    "original_width",
    "original_height",
    "duplicate_of",
)
_UNSTORED = ("width", "height", "format", "stored_sha256", "original_width", "original_height")


def copy_outcome(
    record: dict[str, Any], owner: dict[str, Any], owner_key: str, dedupe: bool
) -> bool:
    """Give a repeat's results record its owner's outcome; True when the repeat needs the
    owner's stored bytes as its own sample."""
    for name in COPIED:
        record[name] = owner.get(name)
    record.update(attempts=0, elapsed_seconds=0.0, same_url_as=owner_key, path=None)
    if record["status"] != SUCCESS:
        return False
    if dedupe:  # the bytes are stored once, under the owner's key
        record.update(
            status=DUPLICATE,
            error=f"same bytes as {owner_key}",
            duplicate_of=owner_key,
            **dict.fromkeys(_UNSTORED),
        )
        return False
    return True


def _retryable(row: dict[str, Any] | None) -> bool:
    return row is not None and bool(row.get("retryable")) and row.get("status") != SUCCESS


async def committed_owners(
    committed: CommittedShards, shard: int, keys: Collection[str], retry_pass: bool
) -> dict[str, dict[str, Any]] | None:
    """The owners' committed results rows (by key) once `shard` is committed; None when it
    looks as if it will not be (the caller fetches the repeats itself)."""
    if isinstance(committed, NoOtherShards):
        return None
    started = time.monotonic()
    quiet_since: float | None = None
    rows: dict[str, dict[str, Any]] | None = None
    seen: Any = None
    while True:
        if committed.committed(shard):
            stamp = committed.stamp(shard)
            if rows is None or stamp != seen:
                recommitted = rows is not None
                rows = await asyncio.to_thread(committed.owner_rows, shard, keys)
                seen = stamp
                # a retry pass waits for the owner's own retry in this run
                if not retry_pass or recommitted or not any(_retryable(rows.get(k)) for k in keys):
                    return rows
        alive = committed.alive(shard)
        now = time.monotonic()
        if alive:
            quiet_since = None
        elif alive is False:
            quiet_since = quiet_since if quiet_since is not None else now
            if now - quiet_since >= OWNER_DEAD_SECONDS:
                return rows
        elif now - started >= UNKNOWN_WAIT_SECONDS:
            return rows
        await asyncio.sleep(committed.poll_seconds)


def owner_sample(committed: CommittedShards, shard: int, owner: dict[str, Any]) -> bytes | None:
    """The owner's stored sample, or None when it is missing or not the bytes it recorded."""
    if owner.get("path") is None:
        return None
    data = committed.stored_bytes(shard, owner["path"])
    expected = owner.get("stored_sha256") or owner.get("sha256")
    return data if data is not None and sha256_matches(data, expected) else None
