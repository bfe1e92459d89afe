"""Where a host's requests are paced: in this process (LocalPace), or in a table in shared
memory that every worker process of the run on this machine uses (SharedPace), so that the
machine sends to a host one request every 1/rate seconds whatever process it comes from.

Two processes that pace a host each on their own interleave at random: many of their requests
come closer together than 1/rate, and a host that allows no burst (nginx's limit_req without
burst) refuses those. Measured on a simulated host of 30 requests/s with no burst: two
independent pacers ended near 4 requests/s between them; one shared pacer near its limit.

The table (PACE_SLOTS slots of SLOT_BYTES in /dev/shm) holds per host a key (a hash of the
name), the time the next request may go (CLOCK_MONOTONIC, the same in every process of the
machine) and a count of successes (from which each process reads what the host delivered to the
whole machine). A slot is read and written under a POSIX record lock on its bytes. Every process
holds a shared lock on the table's first byte while it uses the table; the last one to close it
(its exclusive lock then succeeds) removes the file. A file left by a killed run is reused by a
run of the same name (what it holds is only times in the past and counts) or removed by it.
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import hashlib
import math
import mmap
import os
import struct
from collections.abc import Iterator
from pathlib import Path

SHM = Path("/dev/shm")
PACE_SLOTS = 1 << 16
SLOT_BYTES = 32
HEADER_BYTES = 64  # byte 0: the users' lock
PROBES = 8
"""Slots tried from a host's home slot; a host that finds them all taken paces in its process."""
_SLOT = struct.Struct("<Qdq")  # key, next free time, successes


class LocalPace:
    """A host's pacing in this process only."""

    def __init__(self) -> None:
        self._next_free = -math.inf
        self._successes = 0

    def next_free(self) -> float:
        return self._next_free

    def claim(self, now: float, interval: float, tolerance: float) -> bool:
        """Take the next turn if it has come (within `tolerance`); it is `interval` long."""
        if self._next_free - tolerance > now:
            return False
        self._next_free = max(self._next_free, now) + interval
        return True

    def push_back(self, at: float) -> None:
        """No request before `at`."""
        self._next_free = max(self._next_free, at)

    def add_success(self) -> None:
        self._successes += 1

    def successes(self) -> int:
        return self._successes


class PaceTable:
    """The shared table of one run on one machine (see the module's docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        size = HEADER_BYTES + PACE_SLOTS * SLOT_BYTES
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.lockf(self.fd, fcntl.LOCK_SH, 1, 0)
            if os.fstat(self.fd).st_size < size:
                os.ftruncate(self.fd, size)
            self.memory = mmap.mmap(self.fd, size)
        except BaseException:
            os.close(self.fd)
            raise
        self.users = 0

    def pace(self, host: str) -> SharedPace | LocalPace:
        key = int.from_bytes(hashlib.blake2b(host.encode(), digest_size=8).digest(), "little")
        key = key or 1  # 0 marks a free slot
        for probe in range(PROBES):
            offset = HEADER_BYTES + (key + probe) % PACE_SLOTS * SLOT_BYTES
            with self._locked(offset):
                found, _, _ = _SLOT.unpack_from(self.memory, offset)
                if found == 0:
                    _SLOT.pack_into(self.memory, offset, key, -math.inf, 0)
                    found = key
            if found == key:
                return SharedPace(self, offset)
        return LocalPace()

    @contextlib.contextmanager
    def _locked(self, offset: int) -> Iterator[None]:
        fcntl.lockf(self.fd, fcntl.LOCK_EX, SLOT_BYTES, offset)
        try:
            yield
        finally:
            fcntl.lockf(self.fd, fcntl.LOCK_UN, SLOT_BYTES, offset)

    def close(self) -> None:
        """Unmap; remove the file when no other process uses it."""
        self.memory.close()
        try:
            fcntl.lockf(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 0)
        except OSError:
            pass  # another process still paces with it
        else:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        finally:
            os.close(self.fd)


class SharedPace:
    """A host's pacing in the machine's table: the LocalPace interface, under the slot's lock."""

    def __init__(self, table: PaceTable, offset: int) -> None:
        self.table = table
        self.offset = offset

    def next_free(self) -> float:
        return _SLOT.unpack_from(self.table.memory, self.offset)[1]

    def claim(self, now: float, interval: float, tolerance: float) -> bool:
        with self.table._locked(self.offset):
            key, next_free, successes = _SLOT.unpack_from(self.table.memory, self.offset)
            if next_free - tolerance > now:
                return False
            _SLOT.pack_into(
                self.table.memory, self.offset, key, max(next_free, now) + interval, successes
            )
            return True

    def push_back(self, at: float) -> None:
        with self.table._locked(self.offset):
            key, next_free, successes = _SLOT.unpack_from(self.table.memory, self.offset)
            _SLOT.pack_into(self.table.memory, self.offset, key, max(next_free, at), successes)

    def add_success(self) -> None:
        with self.table._locked(self.offset):
            key, next_free, successes = _SLOT.unpack_from(self.table.memory, self.offset)
            _SLOT.pack_into(self.table.memory, self.offset, key, next_free, successes + 1)

    def successes(self) -> int:
        return _SLOT.unpack_from(self.table.memory, self.offset)[2]


_open_tables: dict[Path, PaceTable] = {}
"""One table per path in a process: POSIX locks belong to the process, and closing any of its
descriptors of a file drops them all."""


def table_path(run_key: str) -> Path:
    """The table of a run on this machine: the run, the user and the network namespace (the
    machines of a test bed may be namespaces of one kernel, which share /dev/shm)."""
    try:
        namespace = os.stat("/proc/self/ns/net").st_ino
    except OSError:
        namespace = 0
    name = f"{getpass.getuser()}\0{namespace}\0{run_key}"
    digest = hashlib.blake2b(name.encode(), digest_size=12).hexdigest()
    return SHM / f"flowdc-pace-{digest}"


def open_table(run_key: str) -> PaceTable | None:
    """This process's use of the run's table; None where there is no shared memory to use."""
    path = table_path(run_key)
    table = _open_tables.get(path)
    if table is None:
        try:
            table = _open_tables[path] = PaceTable(path)
        except OSError:
            return None
    table.users += 1
    return table


def release_table(table: PaceTable) -> None:
    table.users -= 1
    if table.users == 0:
        del _open_tables[table.path]
        table.close()
