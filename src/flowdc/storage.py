"""Files on the output: atomic writes (temporary name, then rename) and guarding what exists."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from flowdc.errors import FlowDCError

TEMP_MARK = ".tmp-"
LOCK_FILE = ".flowdc-lock"


def temp_name(final_name: str) -> str:
    """A hidden, unique name beside the final one; never taken for a finished file."""
    return f".{final_name}{TEMP_MARK}{uuid.uuid4().hex[:12]}"


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


def is_flowdc_output(output: Path) -> bool:
    """True when FLOW-DC planned into this folder (a finished plan, or one cut short)."""
    from flowdc.plan import PLAN_META, PLAN_TABLE

    return any((output / name).exists() for name in (PLAN_META, PLAN_TABLE)) or any(
        output.glob(f".{PLAN_TABLE}{TEMP_MARK}*")
    )


def check_output(output: Path) -> None:
    """Refuse an output that is a file, or a non-empty folder FLOW-DC did not make."""
    if output.exists() and not output.is_dir():
        raise FlowDCError(f"output {output} exists and is not a folder; pick another --output")
    if output.exists() and _entries(output) and not is_flowdc_output(output):
        raise FlowDCError(
            f"output folder {output} is not empty and was not made by FLOW-DC; pick a new or "
            f"empty --output (nothing was changed)"
        )
    if not output.exists():
        try:
            output.mkdir(parents=True)
        except OSError as exc:
            raise FlowDCError(f"cannot create output folder {output}: {exc.strerror}") from None


def _entries(output: Path) -> list[Path]:
    return [entry for entry in output.iterdir() if entry.name != LOCK_FILE]


def clear_output(output: Path, input_path: Path) -> None:
    """Delete a FLOW-DC output's contents (for --overwrite); never an input inside it."""
    if output.resolve() in input_path.resolve().parents:
        raise FlowDCError(
            f"the input {input_path} lies inside the output {output}; --overwrite would delete "
            f"it. Move the input or pick another --output"
        )
    for entry in _entries(output):
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


class OutputLock:
    """An exclusive lock on the output folder, so two runs never write the same shards at once."""

    def __init__(self, output: Path) -> None:
        self.path = output / LOCK_FILE
        self._handle: int | None = None

    def __enter__(self) -> OutputLock:
        import fcntl

        self._handle = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._handle)
            self._handle = None
            raise FlowDCError(
                f"another FLOW-DC run is writing to {self.path.parent}; wait for it to finish or "
                f"stop it first"
            ) from None
        except OSError:
            pass  # filesystems without flock (some NFS): run unlocked
        return self

    def __exit__(self, *exc: object) -> None:
        if self._handle is not None:
            os.close(self._handle)
            self._handle = None
