"""WebDataset output: OUTPUT/{shard:05d}.tar, each sample's members consecutive under its key.

A sample's members are built as plain ustar entries (header, bytes, padding) and handed to the
file as parts, never joined (a join is a copy of the image): the file gathers them for its next
direct write, or writes them with one writev. tarfile's own `addfile` copies each body in 16 KiB
pieces and builds PAX headers, and on virtual machines where a system call costs more than its
bytes, the number of calls is what counts. Keys are short ASCII names, so ustar fits them.
"""

from __future__ import annotations

import os
import tarfile
import time
from pathlib import Path
from typing import Any

from flowdc.core.layout import tar_path, temp_name
from flowdc.shard.records import sample_meta_json
from flowdc.shard.writers.direct import AppendFile

_BLOCK = tarfile.BLOCKSIZE
_RECORD = tarfile.RECORDSIZE


# A ustar header is fixed fields plus a checksum: built from constant parts, it costs a few
# microseconds where TarInfo.tobuf costs tens (four members per sample, in the event loop).
_IDS = b"0000644\0" + b"0000000\0" * 2  # mode, uid, gid
_TAIL = b"0" + b"\0" * 100 + b"ustar\x0000" + b"\0" * 247  # type, link, magic, names, prefix
_TAIL_SUM = sum(_IDS) + sum(_TAIL) + 8 * ord(" ")  # the checksum field counts as spaces
_OCTAL_LIMIT = 8**11


def ustar_header(name: str, size: int, mtime: int) -> bytes:
    """The 512-byte ustar header of a regular file, as tarfile's USTAR_FORMAT writes it."""
    raw = name.encode("utf-8")
    if len(raw) > 100 or size >= _OCTAL_LIMIT or not 0 <= mtime < _OCTAL_LIMIT:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = size, mtime, 0o644
        return info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "strict")
    numbers = b"%011o\0%011o\0" % (size, mtime)
    checksum = sum(raw) + sum(numbers) + _TAIL_SUM
    return b"".join((raw, b"\0" * (100 - len(raw)), _IDS, numbers, b"%06o\0 " % checksum, _TAIL))


class TarShardWriter:
    """Writes a shard's tar under a temporary name; `commit` renames it into place."""

    direct = True
    """Write around the page cache (writers/direct.py). False where the tar is read back at once:
    a TaskVine worker in gathered mode sends it to its manager, and that read would go to the
    disk (it made the transfer 4 times slower on this project's test machine)."""

    def __init__(self, output: Path, shard: int) -> None:
        self.final_path = tar_path(output, shard)
        self.tmp_path = output / temp_name(self.final_path.name)
        self._file = AppendFile(self.tmp_path, direct=self.direct)
        self._mtime = int(time.time())

    def _member(self, parts: list[bytes], name: str, data: bytes) -> None:
        parts.append(ustar_header(name, len(data), self._mtime))
        parts.append(data)
        padding = -len(data) % _BLOCK
        if padding:
            parts.append(b"\0" * padding)

    def add(
        self,
        key: str,
        extension: str,
        data: bytes,
        meta: dict[str, Any],
        label: str | None,
        class_index: int | None,
    ) -> str:
        image_name = f"{key}.{extension}"
        parts: list[bytes] = []
        self._member(parts, image_name, data)
        self._member(parts, f"{key}.json", sample_meta_json(meta))
        if class_index is not None:
            self._member(parts, f"{key}.cls", str(class_index).encode())
        if label is not None:
            self._member(parts, f"{key}.txt", label.encode("utf-8"))
        self._file.write(*parts)
        return image_name

    def copy_samples(self, source: Path, skip_keys: set[str]) -> None:
        """Copy every sample of the tar `source` but those whose key is in `skip_keys`, as they
        are (headers and bodies), into this shard: how a retry pass keeps what was there."""
        with open(source, "rb") as listing, open(source, "rb") as raw:
            for member in tarfile.open(fileobj=listing, mode="r:"):
                if member.name.split(".", 1)[0] in skip_keys:
                    continue
                raw.seek(member.offset)
                end = member.offset_data + member.size + (-member.size % _BLOCK)
                self._file.write(raw.read(end - member.offset))

    def commit(self) -> None:
        end = 2 * _BLOCK  # two zero blocks end the archive; the file fills whole records
        end += -(self._file.size + end) % _RECORD
        self._file.write(b"\0" * end)
        self._file.close()
        os.replace(self.tmp_path, self.final_path)

    def abort(self) -> None:
        try:
            self._file.discard()
        finally:
            self.tmp_path.unlink(missing_ok=True)
