"""Sample writers: WebDataset tar shards, ImageFolder class folders, Parquet shards."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from flowdc.core.layout import TEMP_MARK, shard_temp_prefixes


class SampleWriter(Protocol):
    def add(
        self,
        key: str,
        extension: str,
        data: bytes,
        meta: dict[str, Any],
        label: str | None,
        class_index: int | None,
    ) -> str:
        """Write one sample (`meta`: its facts and extra columns, records.sample_meta); return
        where it went (tar member, path relative to the output, or the Parquet row's
        image.path)."""

    def commit(self) -> None:
        """Make the shard's samples final (called before the results and the marker)."""

    def abort(self) -> None:
        """Drop what was written (the shard will run again)."""


def recover_shard(output: Path, shard: int, keep: frozenset[str] = frozenset()) -> None:
    """Remove what a killed run of this shard left behind, so a rerun starts clean (but the
    ImageFolder paths in `keep`, which a committed results table holds)."""
    from flowdc.shard.writers.imagefolder import undo_journal

    for prefix in shard_temp_prefixes(shard):
        for leftover in output.glob(f"{prefix}*{TEMP_MARK}*"):
            if not in_use(leftover):
                leftover.unlink(missing_ok=True)
    undo_journal(output, shard, keep)


def in_use(path: Path) -> bool:
    """True while a live attempt of the shard (Dask may run one twice) holds the file's lock."""
    import fcntl
    import os

    try:
        handle = os.open(path, os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(handle)
    return False
