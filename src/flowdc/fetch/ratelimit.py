"""Per-host token buckets, so no host is sent more than `rate_limit` requests a second."""

from __future__ import annotations

import asyncio
import time


class _Bucket:
    """A token bucket kept as a reservation clock (GCRA): waiters are served in order, no herd."""

    __slots__ = ("interval", "next_free", "tolerance")

    def __init__(self, rate: float, capacity: int) -> None:
        self.interval = 1.0 / rate
        self.tolerance = (capacity - 1) * self.interval
        self.next_free = 0.0

    def reserve(self, now: float) -> float:
        """Take the next token; return how long to wait for it."""
        start = max(self.next_free, now)
        self.next_free = start + self.interval
        return max(0.0, start - self.tolerance - now)


class HostRateLimiter:
    """One bucket per host name, made on first use."""

    def __init__(self, rate: float, capacity: int) -> None:
        self.rate = rate
        self.capacity = capacity
        self._buckets: dict[str, _Bucket] = {}

    async def acquire(self, host: str) -> None:
        bucket = self._buckets.get(host)
        if bucket is None:
            bucket = self._buckets[host] = _Bucket(self.rate, self.capacity)
        wait = bucket.reserve(time.monotonic())
        if wait > 0:
            await asyncio.sleep(wait)
