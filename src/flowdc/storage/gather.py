"""Committing a shard that a worker built elsewhere and sent back (checked by storage/verify.py)
into a local output, with the commit protocol every shard follows: samples first, then the
results table, then the stats marker (shard/commit.py), each under a temporary name renamed
into place.

The returned files wait in a folder inside the output (the same filesystem, so the tar's rename
is atomic). A WebDataset tar is renamed into place as it is; an ImageFolder shard's images are
written one by one into their label folders through the shard's journal, exactly as a local run
writes them, so a manager killed half way leaves what `recover_shard` removes before the shard
runs again. The marker's counts are recomputed from the results table.
"""

from __future__ import annotations

import os
from pathlib import Path

from flowdc.core.layout import tar_path
from flowdc.core.results import ShardResult
from flowdc.planning.plan import Plan
from flowdc.shard.commit import HostsSeen, commit_shard
from flowdc.shard.writers import recover_shard
from flowdc.shard.writers.imagefolder import FolderShardWriter
from flowdc.storage.verify import CheckedShard, read_members

SAMPLE_MODE = 0o644
"""What a local run gives its tars (a returned file has the mode its transfer gave it)."""


def commit_checked_shard(plan: Plan, checked: CheckedShard, worker: str) -> ShardResult:
    """Put a checked shard in place; `worker` names where it ran (for its stats marker)."""
    output = Path(plan.output)
    shard = checked.shard
    recover_shard(output, shard)  # what a manager killed in an earlier commit left
    if plan.output_format == "imagefolder":
        _place_images(output, plan, checked)
    else:
        os.chmod(checked.tar, SAMPLE_MODE)
        os.replace(checked.tar, tar_path(output, shard))
    previous = ShardResult(shard, 0, 0, 0, 0, 0.0, started_at=checked.started_at)
    return commit_shard(
        output,
        shard,
        checked.results,
        HostsSeen(checked.hosts, checked.retries),
        previous,
        checked.seconds,
        worker=worker,
    )


def _place_images(output: Path, plan: Plan, checked: CheckedShard) -> None:
    """Each image of the returned archive into its label folder, journalled."""
    writer = FolderShardWriter(output, checked.shard, plan.label_folders or {})
    try:
        with open(checked.tar, "rb") as handle:
            for member in read_members(handle, lambda name, size: True):
                key, _, extension = member.name.partition(".")
                assert member.data is not None
                label = checked.images[member.name]
                writer.add(key, extension, member.data, b"", label, None)
    except BaseException:
        writer.abort()  # the journal stays: recover_shard removes what was placed
        raise
    writer.commit()
    checked.tar.unlink()
