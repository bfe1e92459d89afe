"""Files on the output: atomic writes (temporary name, then rename) and guarding what exists."""

from __future__ import annotations

import os
import re
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


def remove_if_unused(output: Path, made_here: bool) -> None:
    """After a run that stopped before writing anything: its lock file goes, and the folder too
    when this run made it."""
    if output.is_dir() and not _entries(output):
        (output / LOCK_FILE).unlink(missing_ok=True)
        if made_here:
            output.rmdir()


def _entries(output: Path) -> list[Path]:
    return [entry for entry in output.iterdir() if entry.name != LOCK_FILE]


def clear_output(output: Path, input_path: Path) -> list[str]:
    """Delete what FLOW-DC made in an output (for --overwrite); never an input inside it, and
    never a file it did not make (a user's notes beside the dataset): those are kept, and their
    names returned so the caller can say so."""
    from flowdc.plan import Plan

    if output.resolve() in input_path.resolve().parents:
        raise FlowDCError(
            f"the input {input_path} lies inside the output {output}; --overwrite would delete "
            f"it. Move the input or pick another --output"
        )
    plan = Plan.load(output)
    folders = set((plan.label_folders or {}).values()) if plan is not None else set()
    kept: list[str] = []
    for entry in _entries(output):
        if entry.is_dir() and not entry.is_symlink() and entry.name in folders:
            kept += [f"{entry.name}/{name}" for name in _clear_class_folder(entry)]
        elif entry.is_file() and _made_by_flowdc(entry.name):
            entry.unlink()
        else:
            kept.append(entry.name)
    return kept


def _made_by_flowdc(name: str) -> bool:
    """A run-level or shard file FLOW-DC writes (or its temporary name)."""
    from flowdc.metadata.attribution import ATTRIBUTION_FILE
    from flowdc.metadata.croissant import CROISSANT_FILE
    from flowdc.metadata.overview import OVERVIEW_FILE, RUNS_FILE
    from flowdc.metadata.report import REPORT_FILE
    from flowdc.plan import LABELS_FILE, PLAN_META, PLAN_TABLE
    from flowdc.processing import DEDUPE_FILE

    fixed = {
        ATTRIBUTION_FILE, CROISSANT_FILE, OVERVIEW_FILE, RUNS_FILE, REPORT_FILE, LABELS_FILE,
        PLAN_META, PLAN_TABLE, DEDUPE_FILE, f"{DEDUPE_FILE}-journal", f"{DEDUPE_FILE}-wal",
        f"{DEDUPE_FILE}-shm",
    }  # fmt: skip
    # a temporary name is "." + the final name + TEMP_MARK + a random suffix (temp_name)
    final = name[1 : name.index(TEMP_MARK)] if TEMP_MARK in name else name
    return final in fixed or bool(_SHARD_FILE.match(final))


_SHARD_FILE = re.compile(r"^\.?\d{5,}(\.tar|\.parquet|_stats\.json|\.journal)$")
_SAMPLE_FILE = re.compile(rf"^\.?\d{{5,}}\.[A-Za-z0-9]{{1,5}}({re.escape(TEMP_MARK)}.*)?$")


def _clear_class_folder(folder: Path) -> list[str]:
    """Remove the images FLOW-DC wrote (named by key) from a class folder, and the folder once
    empty; returns the names of what it kept."""
    kept = []
    for entry in folder.iterdir():
        if entry.is_file() and not entry.is_symlink() and _SAMPLE_FILE.match(entry.name):
            entry.unlink()
        else:
            kept.append(entry.name)
    if not kept:
        folder.rmdir()
    return kept


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
