"""Atomic writes: a temporary name beside the final one, then a rename."""

from __future__ import annotations

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
