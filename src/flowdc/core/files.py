"""Files: atomic writes (a temporary name beside the final one, then a rename), a file's sha256."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from flowdc.core.layout import temp_name


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(temp_name(path.name))
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
