"""An ImageFolder output's split layout: `NAME-splits/{train,validation,test}/LABEL/KEY.ext`.

Hugging Face `datasets` reads it as splits (`load_dataset("imagefolder", data_dir=...)`) and
torchvision reads each split folder. Each file is a hard link to the image in the output, so it
costs no space, and the output itself is never changed: resume, `--retry_failed` and
`flowdc validate` see what they always see. The layout lives beside the output, not in it:
torchvision's ImageFolder would take a folder in the output for a class. Where hard links are
refused (another filesystem), relative symbolic links are made instead.

The layout is built under a temporary name and swapped into place when complete (a temporary
layout that a killed split left is removed by the next); a layout made before is replaced only
when it holds nothing but what `flowdc split` made.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from flowdc.core.errors import FlowDCError
from flowdc.core.files import atomic_write_text
from flowdc.core.layout import SPLIT_LAYOUT_MARK, TEMP_MARK, split_layout_dir, temp_name
from flowdc.storage.output import clear_split_layout, layout_belongs_to, split_layout_strangers

_NO_HARD_LINK = {errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP}


def check_replaceable(output: Path) -> None:
    """Refuse, before anything is written, a layout folder that `flowdc split` did not make
    from this output, or one holding files it did not make."""
    final = split_layout_dir(output)
    if not final.exists() and not final.is_symlink():
        return
    if not final.is_dir() or not layout_belongs_to(final, output):
        raise FlowDCError(
            f"{final} exists and is not the split layout of {output.resolve()}; move it away "
            f"(flowdc split writes an ImageFolder output's split folders there)"
        )
    strangers = split_layout_strangers(final)
    if strangers:
        raise FlowDCError(
            f"{final} holds files flowdc split did not make ({', '.join(strangers[:3])}"
            f"{', ...' if len(strangers) > 3 else ''}); move them away and split again"
        )


class LayoutWriter:
    """Links each stored image into its split's folder; `commit` puts the layout in place."""

    def __init__(self, output: Path) -> None:
        self.output = output.resolve()
        self.final = split_layout_dir(output)
        check_replaceable(output)
        for stale in self.final.parent.glob(f".{self.final.name}{TEMP_MARK}*"):
            if layout_belongs_to(stale, output):  # left by a split that was killed
                clear_split_layout(stale)
        self.folder = self.final.with_name(temp_name(self.final.name))
        try:
            self.folder.mkdir()
        except OSError as exc:
            raise FlowDCError(
                f"cannot write the split layout beside the output ({self.final.parent}): "
                f"{exc.strerror}; make that folder writable, or split a copy of the output"
            ) from None
        atomic_write_text(self.folder / SPLIT_LAYOUT_MARK, f"{self.output}\n")
        self.hard_links = True
        self._made: set[Path] = set()

    def add(self, split: str, path: str) -> None:
        """Link the image at `path` (LABEL/KEY.ext, relative to the output) into `split`."""
        target = self.folder / split / path
        if target.parent not in self._made:
            target.parent.mkdir(parents=True, exist_ok=True)
            self._made.add(target.parent)
        source = self.output / path
        if self.hard_links:
            try:
                os.link(source, target)
                return
            except OSError as exc:
                if exc.errno not in _NO_HARD_LINK:
                    raise
                self.hard_links = False
        # relative to where the link will be once the layout is renamed into place
        os.symlink(os.path.relpath(source, (self.final / split / path).parent), target)

    def commit(self) -> Path:
        old = None
        if self.final.exists():
            old = self.final.with_name(temp_name(self.final.name))
            self.final.rename(old)
        self.folder.rename(self.final)
        if old is not None:
            clear_split_layout(old)
        return self.final

    def abort(self) -> None:
        clear_split_layout(self.folder)
