"""An append-only file written around the page cache (O_DIRECT) where the filesystem allows it.

A dataset is written once and read later, elsewhere: copying every byte into the page cache
costs CPU for nothing. On this project's test machine (ext4 on a virtual disk) buffered writes of
1.5 GB took 1.7-5 s of kernel CPU, about a fifth of a download's CPU, and the same bytes written
with O_DIRECT from an aligned buffer took 0.25 s (benchmarks/write_path.py). It also keeps a
download of terabytes from filling the machine's memory with pages nobody will read.

O_DIRECT needs the memory, the file offset and the length aligned to the device's block: the
bytes are gathered in a page-aligned buffer (an anonymous mmap) and written a whole buffer at a
time; at the end the aligned part goes direct and the unaligned tail is written with O_DIRECT
turned off. Where O_DIRECT is missing (macOS) or refused (tmpfs, some FUSE and network
filesystems refuse it at open or at the first write), every write is an ordinary one.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
from pathlib import Path

BUFFER_BYTES = 2 << 20
"""Gathered before each direct write: a multiple of any block size (4 KiB pages, 512 B
sectors) and large enough that the number of system calls does not count."""
_ALIGN = 4096
_DIRECT = getattr(os, "O_DIRECT", 0)


class AppendFile:
    """A new file at `path`, locked (fcntl) while open, that only grows."""

    def __init__(self, path: Path, direct: bool = True) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        self.fd = -1
        if direct and _DIRECT:
            try:
                self.fd = os.open(path, flags | _DIRECT, 0o644)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
        self.direct = self.fd >= 0
        if not self.direct:
            self.fd = os.open(path, flags, 0o644)
        fcntl.lockf(self.fd, fcntl.LOCK_EX)  # tells a concurrent attempt the file is in use
        self._buffer = mmap.mmap(-1, BUFFER_BYTES) if self.direct else None
        self._held = 0  # bytes waiting in the buffer
        self.size = 0  # bytes appended so far

    def write(self, *parts: bytes) -> None:
        """Append the parts, in order, without joining them first (that is a copy of each)."""
        if self._buffer is None:
            self.size += sum(map(len, parts))
            _write_parts(self.fd, parts)
            return
        for part in parts:
            self._gather(memoryview(part))

    def _gather(self, view: memoryview) -> None:
        self.size += len(view)
        assert self._buffer is not None
        while view:
            room = min(BUFFER_BYTES - self._held, len(view))
            self._buffer[self._held : self._held + room] = view[:room]
            self._held += room
            view = view[room:]
            if self._held == BUFFER_BYTES:
                self._flush_aligned()

    def close(self) -> None:
        """Write what is held and close the file."""
        try:
            if self._buffer is not None and self._held:
                self._flush_aligned()
                if self._held:  # the unaligned tail: an ordinary write
                    self._stop_direct()
                    _write_all(self.fd, memoryview(self._buffer)[: self._held])
                    self._held = 0
        finally:
            self.discard()

    def discard(self) -> None:
        """Close without writing what is held (the file is being dropped)."""
        if self._buffer is not None:
            self._buffer.close()
            self._buffer = None
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)

    def _flush_aligned(self) -> None:
        aligned = self._held - self._held % _ALIGN
        if not aligned:
            return
        assert self._buffer is not None
        view = memoryview(self._buffer)
        try:
            written = os.write(self.fd, view[:aligned])
        except OSError as exc:  # a filesystem that took the flag at open but not in a write
            if exc.errno != errno.EINVAL:
                raise
            self._stop_direct()
            written = 0
        _write_all(self.fd, view[written:aligned])  # what a short write left (still aligned)
        self._buffer.move(0, aligned, self._held - aligned)
        self._held -= aligned

    def _stop_direct(self) -> None:
        if self.direct:
            fcntl.fcntl(self.fd, fcntl.F_SETFL, fcntl.fcntl(self.fd, fcntl.F_GETFL) & ~_DIRECT)
            self.direct = False


def _write_all(fd: int, view: memoryview) -> None:
    while view:  # a write may take less than all
        view = view[os.write(fd, view) :]


def _write_parts(fd: int, parts: tuple[bytes, ...]) -> None:
    """One writev for all the parts; what a short write left goes part by part."""
    done = os.writev(fd, parts) if parts else 0
    for part in parts:
        if done >= len(part):
            done -= len(part)
            continue
        _write_all(fd, memoryview(part)[done:])
        done = 0
