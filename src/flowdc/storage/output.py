"""Guarding a local output folder: refuse one FLOW-DC did not make, clear it for --overwrite
(only what FLOW-DC made, its split layout beside it included), lock it so two runs never write
the same shards at once."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from flowdc.core.errors import FlowDCError
from flowdc.core.layout import (
    LOCK_FILE,
    PLAN_META,
    PLAN_TABLE,
    SAMPLE_FILE,
    SPLIT_LAYOUT_MARK,
    SPLIT_NAMES,
    TASKVINE_DIR,
    TEMP_MARK,
    made_by_flowdc,
    split_layout_dir,
)
from flowdc.planning.plan import Plan


def is_flowdc_output(output: Path) -> bool:
    """True when FLOW-DC planned into this folder (a finished plan, or one cut short)."""
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
    """After a run that stopped before writing anything: its lock file and TaskVine folder go,
    and the folder too when this run made it."""
    if output.is_dir() and not _entries(output):
        (output / LOCK_FILE).unlink(missing_ok=True)
        shutil.rmtree(output / TASKVINE_DIR, ignore_errors=True)
        if made_here:
            output.rmdir()


def _entries(output: Path) -> list[Path]:
    """What the folder holds but the lock and the TaskVine manager's folder (a manager started
    before planning, or killed during it, leaves only those)."""
    return [entry for entry in output.iterdir() if entry.name not in (LOCK_FILE, TASKVINE_DIR)]


def clear_output(output: Path, input_path: Path) -> list[str]:
    """Delete what FLOW-DC made in an output (for --overwrite); never an input inside it, and
    never a file it did not make (a user's notes beside the dataset): those are kept, and their
    names returned so the caller can say so."""
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
        elif entry.is_file() and made_by_flowdc(entry.name):
            entry.unlink()
        elif entry.name == TASKVINE_DIR and entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            kept.append(entry.name)
    layout = split_layout_dir(output)
    if layout_belongs_to(layout, output):
        kept += [f"{layout}/{name}" for name in clear_split_layout(layout)]
    return kept


def _clear_class_folder(folder: Path, links: bool = False) -> list[str]:
    """Remove the images FLOW-DC wrote (named by key) from a class folder, and the folder once
    empty; returns the names of what it kept. `links`: a split layout's symbolic links too."""
    kept = []
    for entry in folder.iterdir():
        ours = entry.is_file() and (links or not entry.is_symlink())
        if ours and SAMPLE_FILE.match(entry.name):
            entry.unlink()
        else:
            kept.append(entry.name)
    if not kept:
        folder.rmdir()
    return kept


def layout_belongs_to(layout: Path, output: Path) -> bool:
    """True when `layout` is the split layout `flowdc split` made from `output`."""
    try:
        made_from = (layout / SPLIT_LAYOUT_MARK).read_text(encoding="utf-8").strip()
    except OSError:
        return False
    return made_from == str(output.resolve())


def split_layout_strangers(layout: Path) -> list[str]:
    """What a split layout holds that `flowdc split` did not make (names relative to it)."""
    strangers = []
    for entry in layout.iterdir():
        if entry.name == SPLIT_LAYOUT_MARK:
            continue
        if entry.name not in SPLIT_NAMES or entry.is_symlink() or not entry.is_dir():
            strangers.append(entry.name)
            continue
        for folder in entry.iterdir():
            if folder.is_symlink() or not folder.is_dir():
                strangers.append(f"{entry.name}/{folder.name}")
                continue
            strangers += [
                f"{entry.name}/{folder.name}/{file.name}"
                for file in folder.iterdir()
                if not file.is_file() or not SAMPLE_FILE.match(file.name)
            ]
    return strangers


def clear_split_layout(layout: Path) -> list[str]:
    """Remove what `flowdc split` made in a split layout (SPLIT/LABEL/KEY.ext links and the mark),
    and the folders once empty; returns the names of what it kept."""
    kept = []
    for entry in layout.iterdir():
        if entry.name in SPLIT_NAMES and entry.is_dir() and not entry.is_symlink():
            for folder in entry.iterdir():
                if folder.is_dir() and not folder.is_symlink():
                    left = _clear_class_folder(folder, links=True)
                    kept += [f"{entry.name}/{folder.name}/{name}" for name in left]
                else:
                    kept.append(f"{entry.name}/{folder.name}")
            if not any(entry.iterdir()):
                entry.rmdir()
        elif entry.name != SPLIT_LAYOUT_MARK:
            kept.append(entry.name)
    if not kept:
        (layout / SPLIT_LAYOUT_MARK).unlink(missing_ok=True)
        layout.rmdir()
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
