"""Which request goes next: one queue per host, a fixed pool of request slots per process.

A slot takes the next host that may send now (it has work, a token, a free place under its
concurrency limit, and no Retry-After in force), round robin over such hosts, so a host that must
wait never holds a slot while it waits and never holds up another host's work (no head-of-line
blocking). A host that is not ready gets a timer for the moment it will be. A failed attempt
worth retrying goes back to its host with a ready time (its backoff); a host sends its due
retries before fresh work, so a retry waits its backoff and its host's permission, never the
whole queue. A host marked down by its circuit breaker (fetch/breaker.py) sends nothing: its
jobs, due or not, go to `refuse` at once, taking no token and no place under its limits; once it
has cooled down it may have one request in flight, the probe; so may a host that never
answered once a request to it failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from yarl import URL

from flowdc.shard.fetch.aimd import AdaptiveConcurrency, AdaptiveRate
from flowdc.shard.fetch.breaker import NO_BREAKER, Breaker, BreakerSettings

Clock = Callable[[], float]
KEEP_HOSTS = 4096
"""Idle hosts that never pushed back are forgotten beyond this many (LAION-style lists name
millions of hosts); a host that throttled or slowed down keeps what was learnt of it."""


@dataclass
class HostFigures:
    """What one host did for one batch (a shard): the per-host figures of the stats file."""

    requests: int = 0
    successes: int = 0
    throttled: int = 0
    latency_sum: float = 0.0
    rate: float = 0.0
    concurrency: int = 0
    unavailable: int = 0
    """Jobs failed at once because the host was marked down."""
    marked_down: int = 0
    held_seconds: float = 0.0
    """Seconds the host's Retry-After answers added to its hold (a slow run explains itself)."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "successes": self.successes,
            "throttled": self.throttled,
            "latency_sum": round(self.latency_sum, 4),
            "mean_latency": round(self.latency_sum / self.requests, 4) if self.requests else None,
            "rate": round(self.rate, 3),
            "concurrency": self.concurrency,
            "unavailable": self.unavailable,
            "marked_down": self.marked_down,
            "held_seconds": round(self.held_seconds, 3),
        }


class Batch:
    """Jobs submitted together (one shard): per-host figures, a count of jobs not yet finished,
    a failure to re-raise, a cancellation that drops its remaining jobs."""

    def __init__(self) -> None:
        self.hosts: dict[str, HostFigures] = {}
        self.error: BaseException | None = None
        self.cancelled = False
        self.pending = 0
        self.retried = 0
        self._finished = asyncio.Event()
        self._finished.set()

    def add(self) -> None:
        self.pending += 1
        self._finished.clear()

    def done(self) -> None:
        self.pending -= 1
        if self.pending <= 0:
            self._finished.set()

    def fail(self, error: BaseException) -> None:
        self.error = self.error or error
        self._finished.set()

    async def wait(self) -> None:
        """Until every job finished; raises the first error a job's on_done raised."""
        await self._finished.wait()
        if self.error is not None:
            raise self.error

    def figures(self, host: str) -> HostFigures:
        figures = self.hosts.get(host)
        if figures is None:
            figures = self.hosts[host] = HostFigures()
        return figures


@dataclass
class Job:
    url: URL
    on_done: Callable[[Any], Awaitable[None]]
    batch: Batch
    attempts: int = 0
    excused: int = 0
    """Throttled attempts not counted against the retry budget (see Fetcher._run_attempt)."""
    malformed: int = 0
    """Answers that were no valid HTTP (Fetcher._run_attempt)."""
    fails_alone: bool = False
    """It timed out or lost its connection while its host answered others (Fetcher._learn)."""
    first_sent: float | None = None
    ready_at: float = 0.0


@dataclass(eq=False)
class Host:
    name: str
    rate: AdaptiveRate
    breaker: Breaker
    concurrency: AdaptiveConcurrency = field(default_factory=AdaptiveConcurrency)
    fresh: deque[Job] = field(default_factory=deque)
    retries: list[tuple[float, int, Job]] = field(default_factory=list)
    in_flight: int = 0
    last_answer_at: float = -math.inf
    """When response headers last arrived from the host."""
    blocked_until: float = -math.inf
    queued: bool = False
    timer: asyncio.TimerHandle | None = None
    timer_at: float = math.inf

    def has_work(self) -> bool:
        return bool(self.fresh or self.retries)

    def next_job(self, now: float) -> Job | None:
        """A due retry, else fresh work; a host that is down takes any retry, due or not."""
        if self.retries and (self.retries[0][0] <= now or self.breaker.is_open(now)):
            return heapq.heappop(self.retries)[2]
        if self.fresh:
            return self.fresh.popleft()
        return None

    def work_ready_at(self) -> float:
        if self.fresh:
            return -math.inf
        return self.retries[0][0] if self.retries else math.inf


class Scheduler:
    """Per-host queues served by `slots` coroutines that run `attempt(job, host)`, or
    `refuse(job, host)` while the host is marked down."""

    def __init__(
        self,
        slots: int,
        rate_for: Callable[[str], AdaptiveRate],
        attempt: Callable[[Job, Host], Awaitable[None]],
        refuse: Callable[[Job, Host], Awaitable[None]],
        breaker: BreakerSettings = NO_BREAKER,
        clock: Clock = time.monotonic,
    ) -> None:
        """`rate_for` makes a host's rate (in this process, or one whose state the machine's
        processes share)."""
        self.slots = slots
        self.rate_for = rate_for
        self.breaker_settings = breaker
        self.attempt = attempt
        self.refuse = refuse
        self.clock = clock
        self.hosts: dict[str, Host] = {}
        self._ready: asyncio.Queue[Host] = asyncio.Queue()
        self._workers: list[asyncio.Task[None]] = []
        self._sequence = itertools.count()
        self._busy: set[str] = set()  # hosts with work queued or in flight
        self._capped: set[Host] = set()  # hosts waiting for a place under their share

    def host(self, name: str) -> Host:
        host = self.hosts.get(name)
        if host is None:
            host = self.hosts[name] = Host(
                name, self.rate_for(name), Breaker(self.breaker_settings)
            )
        return host

    def share(self) -> int:
        """Most slots one host may hold: an equal share of the slots among busy hosts."""
        return max(1, self.slots // max(1, len(self._busy)))

    def submit(self, job: Job) -> None:
        self._start()
        host = self.host(job.url.host or "")
        host.fresh.append(job)
        self._busy.add(host.name)
        self.review(host)

    def retry_later(self, job: Job, host: Host, delay: float) -> None:
        job.ready_at = self.clock() + delay
        heapq.heappush(host.retries, (job.ready_at, next(self._sequence), job))
        self.review(host)

    def review(self, host: Host) -> None:
        """Put the host in the ready queue if it may send now, else set a timer for when."""
        if host.queued or not host.has_work():
            return
        now = self.clock()
        start = self._start_time(host, now)
        if start is None:
            self._capped.add(host)  # a finishing request reviews it again
            return
        if start <= now:
            self._cancel_timer(host)
            host.queued = True
            self._ready.put_nowait(host)
        elif start < host.timer_at:
            self._cancel_timer(host)
            loop = asyncio.get_running_loop()
            host.timer_at = start
            host.timer = loop.call_later(start - now, self._wake, host)

    def _start_time(self, host: Host, now: float) -> float | None:
        """When the host may send next: its token, its Retry-After and its first due job; None
        when it has no work or holds its share of the slots (one request, while probing)."""
        if not host.has_work():
            return None
        if host.breaker.is_open(now):
            return now  # refusals send nothing
        if host.breaker.probing(now) or host.breaker.doubtful():
            allowed = 1
        else:
            allowed = host.concurrency.allowed(self.share())
        if host.in_flight >= allowed:
            return None
        return max(host.rate.available_at(now), host.blocked_until, host.work_ready_at())

    def _wake(self, host: Host) -> None:
        host.timer, host.timer_at = None, math.inf
        self.review(host)

    @staticmethod
    def _cancel_timer(host: Host) -> None:
        if host.timer is not None:
            host.timer.cancel()
        host.timer, host.timer_at = None, math.inf

    def _start(self) -> None:
        if not self._workers:
            self._workers = [asyncio.create_task(self._slot()) for _ in range(self.slots)]

    async def _slot(self) -> None:
        while True:
            host = await self._ready.get()
            host.queued = False
            job: Job | None = None
            sent = False
            try:
                now = self.clock()
                # checked again: a Retry-After, a cut or a busy slot may have come while it waited
                start = self._start_time(host, now)
                refused = host.breaker.is_open(now)
                ready = start is not None and start <= now
                # the token is the host's on this machine: another process may just have taken it
                ready = ready and (refused or host.rate.try_take(now))
                job = host.next_job(now) if ready else None
                if job is None or job.batch.cancelled:
                    continue
                sent = not refused
                host.in_flight += sent
                self.review(host)  # it may send again at once: back of the round robin
                await (self.refuse if refused else self.attempt)(job, host)
            except Exception as exc:  # an on_done that failed (a full disk): its batch fails
                if job is not None:
                    job.batch.fail(exc)
            finally:
                host.in_flight -= sent
                with contextlib.suppress(Exception):  # this slot must live on whatever happened
                    self._after(host)

    def _after(self, host: Host) -> None:
        self.review(host)
        if host.in_flight == 0 and not host.has_work():
            self._went_idle(host)

    def _went_idle(self, host: Host) -> None:
        """The others' share grew: hosts held at their share may send more."""
        if self.hosts.get(host.name) is not host:
            return  # a stale entry of a host already forgotten
        self._busy.discard(host.name)
        self._capped.discard(host)
        self._forget_if_untroubled(host)
        capped, self._capped = self._capped, set()
        for other in capped:
            self.review(other)

    def _forget_if_untroubled(self, host: Host) -> None:
        if (
            len(self.hosts) > KEEP_HOSTS
            and host.rate.cuts == 0
            and host.concurrency.cuts == 0
            and host.breaker.failures == 0
            and host.blocked_until < self.clock()
        ):
            self._cancel_timer(host)
            del self.hosts[host.name]

    def cancel(self, batch: Batch) -> None:
        batch.cancelled = True
        for host in self.hosts.values():
            host.fresh = deque(job for job in host.fresh if job.batch is not batch)
            host.retries = [entry for entry in host.retries if entry[2].batch is not batch]
            heapq.heapify(host.retries)
        for host in list(self.hosts.values()):
            if host.in_flight == 0 and not host.has_work() and host.name in self._busy:
                self._went_idle(host)

    async def close(self) -> None:
        for host in self.hosts.values():
            self._cancel_timer(host)
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []
