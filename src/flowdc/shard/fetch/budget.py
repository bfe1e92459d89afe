"""A process's budget of memory for response bodies (`--max_memory`).

Without one, memory could reach request slots x max_bytes (1,000 slots of 50 MB TIFFs: 50 GB)
and the kernel would kill the worker. A body reserves its bytes before they are read: its
Content-Length at once when the server sends one, else each chunk as it comes. A reservation that
does not fit waits, so a list of huge images slows down instead of running out of memory. It is
released when the body is done with: dropped (a failure, a rejected image) or written by the
shard's writer thread (fetch/client.py and shard/run.py hand it on).

Two rules keep waiting from deadlocking:
- A body that already holds bytes and needs more goes before bodies that hold none yet.
- When every body holding bytes is itself waiting for more (none will ever release), the first
  waiter goes ahead anyway, and takes what it needs from then on until it is released: the
  others wait for it. So a body larger than the whole budget is read alone, and the bytes held
  stay under the budget plus one body.

Releases may come from the writer thread: the counts are kept under a lock, and waiters (futures
of the event loop) are woken on the loop.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections import deque
from dataclasses import dataclass

MIB = 1 << 20
_LARGEST_DEFAULT = 1024 * MIB
_SMALLEST_DEFAULT = 256 * MIB


def default_budget() -> int:
    """A quarter of the machine's RAM shared among its cores (FLOW-DC starts one worker process
    per core), between 256 MiB and 1 GiB per process."""
    try:
        ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows): assume a laptop
        return _LARGEST_DEFAULT
    share = ram // 4 // (os.cpu_count() or 1)
    return max(_SMALLEST_DEFAULT, min(_LARGEST_DEFAULT, share))


@dataclass(eq=False)
class _Waiter:
    reservation: Reservation
    nbytes: int
    future: asyncio.Future[None]


class MemoryBudget:
    """Bytes that the bodies of one process may hold at once; create inside the running loop."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_use = 0
        self.peak = 0
        """Most bytes held at once (for tests and benchmarks)."""
        self.waits = 0
        """Reservations that had to wait."""
        self._holders = 0  # reservations holding bytes
        self._growing: deque[_Waiter] = deque()  # holders waiting for more: they go first
        self._starting: deque[_Waiter] = deque()  # waiting for their first bytes
        self._favoured: Reservation | None = None  # let through when all holders waited
        self._lock = threading.Lock()
        self._loop = asyncio.get_running_loop()
        self._wake_planned = False

    def reservation(self) -> Reservation:
        return Reservation(self)

    def _try_take(self, reservation: Reservation, nbytes: int) -> bool:
        with self._lock:
            if reservation is not self._favoured and (
                self._growing or self._starting or self.in_use + nbytes > self.limit
            ):
                return False
            self._grant(reservation, nbytes)
            return True

    async def _wait_for(self, reservation: Reservation, nbytes: int) -> None:
        waiter = _Waiter(reservation, nbytes, self._loop.create_future())
        with self._lock:
            self.waits += 1
            (self._growing if reservation.nbytes else self._starting).append(waiter)
            self._admit()
        try:
            await waiter.future
        except BaseException:
            with self._lock:  # cancelled (a timeout): give up the place; bytes granted stay
                for queue in (self._growing, self._starting):
                    if waiter in queue:
                        queue.remove(waiter)
                self._admit()
            raise

    def _release(self, reservation: Reservation) -> None:
        with self._lock:
            nbytes, reservation.nbytes = reservation.nbytes, 0
            if not nbytes:
                return  # released already
            self.in_use -= nbytes
            self._holders -= 1
            if reservation is self._favoured:
                self._favoured = None
            wake = bool(self._growing or self._starting) and not self._wake_planned
            self._wake_planned = self._wake_planned or wake
        if wake:  # from the writer thread too: the futures belong to the loop
            self._loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        with self._lock:
            self._wake_planned = False
            self._admit()

    def _admit(self) -> None:
        """Grant waiters in order (holders first) while they fit, or while no holder is left
        that is not waiting. Called with the lock held, on the loop."""
        for queue in (self._growing, self._starting):
            while queue:
                waiter = queue[0]
                if self.in_use + waiter.nbytes > self.limit:
                    if self._holders != len(self._growing):
                        return  # a holder that is not waiting will release
                    self._favoured = waiter.reservation  # every holder waits: this one goes on
                queue.popleft()
                self._grant(waiter.reservation, waiter.nbytes)
                if not waiter.future.done():
                    waiter.future.set_result(None)

    def _grant(self, reservation: Reservation, nbytes: int) -> None:
        if not reservation.nbytes:
            self._holders += 1
        reservation.nbytes += nbytes
        self.in_use += nbytes
        self.peak = max(self.peak, self.in_use)


class Reservation:
    """The bytes one body holds; grown as it is read, released once when it is done with."""

    __slots__ = ("budget", "nbytes")

    def __init__(self, budget: MemoryBudget) -> None:
        self.budget = budget
        self.nbytes = 0

    def try_grow(self, nbytes: int) -> bool:
        """Take `nbytes` more if they fit now and nobody waits; False means call `grow`."""
        return nbytes <= 0 or self.budget._try_take(self, nbytes)

    async def grow(self, nbytes: int) -> None:
        """Take `nbytes` more, waiting until they fit (or the rules above let them through)."""
        if not self.try_grow(nbytes):
            await self.budget._wait_for(self, nbytes)

    def release(self) -> None:
        """Give every byte back; safe to call again and from any thread."""
        if self.nbytes:
            self.budget._release(self)
