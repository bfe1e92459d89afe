"""WebDataset output: OUTPUT/{shard:05d}.tar, each sample's members consecutive under its key."""

from __future__ import annotations

import io
import os
import tarfile
import time
from pathlib import Path

from flowdc.storage import temp_name


class TarShardWriter:
    """Writes a shard's tar under a temporary name; `commit` renames it into place."""

    def __init__(self, output: Path, shard: int) -> None:
        self.final_path = output / f"{shard:05d}.tar"
        self.tmp_path = output / temp_name(self.final_path.name)
        self._tar = tarfile.open(self.tmp_path, "w", format=tarfile.PAX_FORMAT)
        self._mtime = int(time.time())

    def _member(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mtime = self._mtime
        info.mode = 0o644
        self._tar.addfile(info, io.BytesIO(data))

    def add(
        self,
        key: str,
        extension: str,
        data: bytes,
        meta_json: bytes,
        label: str | None,
        class_index: int | None,
    ) -> str:
        image_name = f"{key}.{extension}"
        self._member(image_name, data)
        self._member(f"{key}.json", meta_json)
        if class_index is not None:
            self._member(f"{key}.cls", str(class_index).encode())
        if label is not None:
            self._member(f"{key}.txt", label.encode("utf-8"))
        return image_name

    def commit(self) -> None:
        self._tar.close()
        os.replace(self.tmp_path, self.final_path)

    def abort(self) -> None:
        try:
            self._tar.close()  # may fail again, e.g. on a full disk
        finally:
            self.tmp_path.unlink(missing_ok=True)
