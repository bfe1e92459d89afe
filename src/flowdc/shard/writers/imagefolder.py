"""ImageFolder output: OUTPUT/<label folder>/<KEY>.<ext>, readable by torchvision and datasets.

Each image is written under a temporary name and renamed. Its final path goes into the shard's
journal first, so a rerun of a killed shard can remove every image (and temporary file) it left.
The journal is locked (fcntl) while the shard runs: other processes see that it is alive.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Any

from flowdc.core.layout import TEMP_MARK, journal_path, temp_name


def undo_journal(output: Path, shard: int, keep: frozenset[str] = frozenset()) -> None:
    """Delete what an unfinished run of the shard placed (but the paths in `keep`, which the
    shard's committed results hold), then the journal itself."""
    journal = journal_path(output, shard)
    if not journal.exists():
        return
    root = output.resolve()
    for line in journal.read_text(encoding="utf-8").splitlines():
        target = (output / line).resolve()
        if not line or line in keep or root not in target.parents:
            continue
        target.unlink(missing_ok=True)
        for leftover in target.parent.glob(f".{target.name}{TEMP_MARK}*"):
            leftover.unlink(missing_ok=True)
    journal.unlink()


def drop_journal(output: Path, shard: int) -> None:
    journal_path(output, shard).unlink(missing_ok=True)


class FolderShardWriter:
    def __init__(self, output: Path, shard: int, label_folders: dict[str, str]) -> None:
        self.output = output
        self.label_folders = label_folders
        self._made: set[str] = set()
        self._journal = open(journal_path(output, shard), "a", encoding="utf-8")
        fcntl.lockf(self._journal.fileno(), fcntl.LOCK_EX)

    def add(
        self,
        key: str,
        extension: str,
        data: bytes,
        meta: dict[str, Any],
        label: str | None,
        class_index: int | None,
    ) -> str:
        folder = self.label_folders[label or ""]
        directory = self.output / folder
        if folder not in self._made:
            directory.mkdir(exist_ok=True)
            self._made.add(folder)
        relative = f"{folder}/{key}.{extension}"
        final = directory / f"{key}.{extension}"
        self._journal.write(relative + "\n")
        self._journal.flush()
        tmp = directory / temp_name(final.name)
        with open(tmp, "wb") as handle:
            handle.write(data)
        os.replace(tmp, final)
        return relative

    def commit(self) -> None:
        self._journal.close()

    def abort(self) -> None:
        self._journal.close()
