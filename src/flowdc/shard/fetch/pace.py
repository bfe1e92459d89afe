"""Where a host's requests are paced: in this process (LocalPace), or in a table in shared
memory that every worker process of the run on this machine uses (SharedPace), so that the
machine sends to a host one request every 1/rate seconds whatever process it comes from.

Two processes that pace a host each on their own interleave at random: many of their requests
come closer together than 1/rate, and a host that allows no burst (nginx's limit_req without
burst) refuses those. Measured on a simulated host of 30 requests/s with no burst: two
independent pacers ended near 4 requests/s between them; one shared pacer near its limit.

The table (PACE_SLOTS slots of SLOT_BYTES in /dev/shm) holds per host a key (a hash of the
name) and a RateState: the time the next request may go (CLOCK_MONOTONIC, the same in every
process of the machine), a count of successes (from which each process reads what the host
delivered to the whole machine), and the rate controller's state, so that the processes learn
one rate together. A slot is read and changed under a POSIX record lock on its bytes. Every process
holds a shared lock on the table's first byte while it uses the table; the last one to close it
(its exclusive lock then succeeds) removes the file. A file left by a killed run is removed by
the next run on the machine once it is STALE_SECONDS old and no process holds it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import math
import mmap
import os
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path

SHM = Path("/dev/shm")
TABLE_PREFIX = "flowdc-pace-"
STALE_SECONDS = 600.0
PACE_SLOTS = 1 << 16
SLOT_BYTES = 160
HEADER_BYTES = 64  # byte 0: the users' lock
PROBES = 8
"""Slots tried from a host's home slot; a host that finds them all taken paces in its process."""


@dataclass
class RateState:
    """What the processes of a machine share of a host's rate: its turns, its successes, and
    the controller's state (fetch/aimd.py, FlakinessCheck's test included), so that a cut or a
    verdict by one process holds for all."""

    next_free: float = -math.inf
    successes: int = 0
    rate: float = 0.0
    """0: not set yet (the first process to use the host sets it)."""
    good_rate: float = 0.0
    last_cut: float = -math.inf
    slow_start: bool = True
    cuts: int = 0
    test_since: float = -math.inf
    """When FlakinessCheck's test began; -inf: none runs."""
    share_before: float = 0.0
    restore_to: float = 0.0
    test_answers: int = 0
    test_refused: int = 0
    noise_share: float = 0.0
    throttler_until: float = -math.inf
    peak: float = 0.0
    peak_at: float = -math.inf


_KINDS = [(item.name, item.type) for item in fields(RateState)]
_SLOT = struct.Struct("<Q" + "".join("d" if kind == "float" else "q" for _, kind in _KINDS))
assert _SLOT.size <= SLOT_BYTES


class LocalPace:
    """A host's state in this process only."""

    def __init__(self) -> None:
        self.state = RateState()

    def peek(self) -> RateState:
        """The state to read (not to change)."""
        return self.state

    @contextlib.contextmanager
    def locked(self) -> Iterator[RateState]:
        """The state to read and change, no other process in between."""
        yield self.state


class PaceTable:
    """The shared table of one run on one machine (see the module's docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        size = HEADER_BYTES + PACE_SLOTS * SLOT_BYTES
        for _ in range(3):
            self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.lockf(self.fd, fcntl.LOCK_SH, 1, 0)
                # the last user (or a sweep) may have removed the file between open and lock:
                # then this one is alone with it, and the run's next process makes another
                if os.stat(path).st_ino == os.fstat(self.fd).st_ino:
                    if os.fstat(self.fd).st_size < size:
                        os.ftruncate(self.fd, size)
                    self.memory = mmap.mmap(self.fd, size)
                    break
            except FileNotFoundError:
                pass
            except BaseException:
                os.close(self.fd)
                raise
            os.close(self.fd)
        else:
            raise OSError(f"{path} was removed each time it was opened")
        self.users = 0

    def pace(self, host: str) -> SharedPace | LocalPace:
        key = int.from_bytes(hashlib.blake2b(host.encode(), digest_size=8).digest(), "little")
        key = key or 1  # 0 marks a free slot
        for probe in range(PROBES):
            offset = HEADER_BYTES + (key + probe) % PACE_SLOTS * SLOT_BYTES
            with self.slot_locked(offset):
                found = _SLOT.unpack_from(self.memory, offset)[0]
                if found == 0:
                    _pack(self.memory, offset, key, RateState())
                    found = key
            if found == key:
                return SharedPace(self, offset)
        return LocalPace()

    @contextlib.contextmanager
    def slot_locked(self, offset: int) -> Iterator[None]:
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


def _pack(memory: mmap.mmap, offset: int, key: int, state: RateState) -> None:
    values = (getattr(state, name) for name, _ in _KINDS)
    # packed apart, then copied: pack_into zero-fills its target before it writes the fields
    memory[offset : offset + _SLOT.size] = _SLOT.pack(key, *values)


def _unpack(memory: mmap.mmap, offset: int) -> tuple[int, RateState]:
    key, *values = _SLOT.unpack_from(memory, offset)
    state = RateState(
        **{
            name: bool(value) if kind == "bool" else value
            for (name, kind), value in zip(_KINDS, values, strict=True)
        }
    )
    return key, state


class SharedPace:
    """A host's state in the machine's table: the LocalPace interface, under the slot's lock."""

    def __init__(self, table: PaceTable, offset: int) -> None:
        self.table = table
        self.offset = offset

    def peek(self) -> RateState:
        # under the lock too: a read beside a write could mix the old fields with the new
        with self.table.slot_locked(self.offset):
            return _unpack(self.table.memory, self.offset)[1]

    @contextlib.contextmanager
    def locked(self) -> Iterator[RateState]:
        with self.table.slot_locked(self.offset):
            key, state = _unpack(self.table.memory, self.offset)
            yield state
            _pack(self.table.memory, self.offset, key, state)


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
    name = f"{os.getuid()}\0{namespace}\0{run_key}"
    digest = hashlib.blake2b(name.encode(), digest_size=12).hexdigest()
    return SHM / f"{TABLE_PREFIX}{digest}"


def open_table(run_key: str) -> PaceTable | None:
    """This process's use of the run's table; None where there is no shared memory to use."""
    path = table_path(run_key)
    table = _open_tables.get(path)
    if table is None:
        sweep_stale_tables(keep=path)
        try:
            table = _open_tables[path] = PaceTable(path)
        except OSError:
            return None
    table.users += 1
    return table


def sweep_stale_tables(keep: Path) -> None:
    """Remove the tables of killed runs: older than STALE_SECONDS (so never one being set up)
    and used by no process (its first byte takes an exclusive lock)."""
    with contextlib.suppress(OSError):
        for path in SHM.glob(f"{TABLE_PREFIX}*"):
            # this process's own tables: its lock would not stop it, and closing would drop it
            if path == keep or path in _open_tables:
                continue
            with contextlib.suppress(OSError):
                if time.time() - path.stat().st_ctime < STALE_SECONDS:
                    continue
                fd = os.open(path, os.O_RDWR)
                try:
                    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 0)
                    path.unlink()
                finally:
                    os.close(fd)


def release_table(table: PaceTable) -> None:
    table.users -= 1
    if table.users == 0:
        del _open_tables[table.path]
        table.close()
