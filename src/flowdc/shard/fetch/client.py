"""The Fetcher: one per process. It queues URLs by host, runs attempts (fetch/http.py) when the
host's limits allow, learns from each answer, and retries what may heal with backoff.

Which request goes when is the scheduler's business (fetch/scheduler.py: per-host queues); what
each host is allowed is the adaptive limits' (fetch/aimd.py) and its breaker's (fetch/breaker.py).
A body's share of the memory budget (fetch/budget.py) is released once `on_done` returns, unless
`on_done` took it on (a shard hands it to its writer thread, which releases it once written).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable

from aiohttp.abc import AbstractResolver
from yarl import URL

from flowdc.config.options import DownloadConfig
from flowdc.core.errors import FetchFailure
from flowdc.core.status import (
    HOST_UNAVAILABLE,
    INVALID_URL,
)
from flowdc.shard.fetch.aimd import UNLIMITED, AdaptiveRate, RateSettings
from flowdc.shard.fetch.breaker import BreakerSettings
from flowdc.shard.fetch.http import FetchResult, HttpClient, invalid_url_reason, parse_url
from flowdc.shard.fetch.pace import LocalPace, SharedPace, open_table, release_table
from flowdc.shard.fetch.scheduler import Batch, Host, HostFigures, Job, Scheduler

THROTTLE_STATUS = frozenset({429, 503})
MAX_EXCUSED_THROTTLES = 3
"""A 429 to a request sent before the host's rate was last cut is our overshoot (the burst that
made the limiter learn), not a sign the URL is bad: up to this many such attempts per URL do not
count against max_retry_attempts, nor lengthen its backoff."""
"""Answers that say the host is over its capacity: the host's rate is cut and Retry-After obeyed."""
MAX_MALFORMED = 2
"""Answers that are no valid HTTP (garbage, headers over the limit) a URL gets at most: the same
server answers the same way again, so one retry is enough to tell a glitch from a habit."""
MAX_RETRY_AFTER_SECONDS = 120.0
_BACKOFF_CAP_SECONDS = 60.0


class Fetcher:
    """Fetches URLs for one process; create inside the running event loop, close when done."""

    def __init__(
        self,
        config: DownloadConfig,
        concurrency: int | None = None,
        processes: int = 1,
        resolver: AbstractResolver | None = None,
        run_key: str | None = None,
        machines: int = 1,
    ) -> None:
        """`resolver` answers name lookups (aiohttp's default, the system's, unless given);
        failed lookups are remembered for host_cooldown seconds either way.

        `run_key` names the run: the worker processes of one run on one machine then take each
        host's turns from one table (fetch/pace.py) and each holds the machine's share of the
        run's limits (the limits over `machines`); without it, or where the table cannot be
        made, each process paces on its own with the limits over `processes` (the run's
        processes on all machines)."""
        self.config = config
        self.concurrency = concurrency or config.concurrent_downloads
        self.pace_table = open_table(run_key) if run_key and config.enable_rate_limiting else None

        def limits(share: int) -> RateSettings:
            return RateSettings(
                initial=config.rate_limit / share,
                floor=config.min_rate_limit / share,
                ceiling=config.max_rate_limit / share,
                capacity=config.rate_capacity,
                adaptive=config.adaptive_rate_limit,
            )

        machine_limits, process_limits = limits(max(1, machines)), limits(max(1, processes))

        def rate_for(host: str) -> AdaptiveRate:
            """The machine's rate of the host, or this process's share when the table is full
            or there is none."""
            if not config.enable_rate_limiting:
                return AdaptiveRate(UNLIMITED)
            pace = self.pace_table.pace(host) if self.pace_table else LocalPace()
            shared = isinstance(pace, SharedPace)
            return AdaptiveRate(machine_limits if shared else process_limits, pace)

        self.scheduler = Scheduler(
            self.concurrency,
            rate_for,
            self._run_attempt,
            self._refuse,
            BreakerSettings(config.host_failure_threshold, config.host_cooldown),
        )
        try:
            self.http = HttpClient(config, resolver)
        except BaseException:
            if self.pace_table is not None:
                release_table(self.pace_table)
            raise

    async def close(self) -> None:
        try:
            await self.scheduler.close()
            await self.http.close()
        finally:
            if self.pace_table is not None:
                release_table(self.pace_table)
                self.pace_table = None

    def submit(
        self,
        url: str | URL | None,
        on_done: Callable[[FetchResult], Awaitable[None]],
        batch: Batch,
    ) -> FetchResult | None:
        """Queue `url` (text, or a URL parse_url accepted); `on_done` gets its final result. An
        invalid URL is answered at once."""
        parsed = url if isinstance(url, URL) else parse_url(url)
        if parsed is None:
            return FetchResult(status=INVALID_URL, error=invalid_url_reason(url), attempts=0)
        batch.add()
        self.scheduler.submit(Job(parsed, on_done, batch))
        return None

    async def fetch(self, url: str | None) -> FetchResult:
        """One URL with the same per-host politeness, retries and checks as a shard's rows."""
        answer: asyncio.Future[FetchResult] = asyncio.get_running_loop().create_future()

        async def deliver(result: FetchResult) -> None:
            if not answer.done():
                answer.set_result(result)

        batch = Batch()
        immediate = self.submit(url, deliver, batch)
        if immediate is not None:
            return immediate
        try:
            return await answer
        finally:
            if not answer.done():  # cancelled: its retry must not go on without it
                self.scheduler.cancel(batch)

    async def _run_attempt(self, job: Job, host: Host) -> None:
        """One attempt of `job`, then either its final result or a place in the retry queue."""
        clock = self.scheduler.clock
        sent_at = clock()
        if job.first_sent is None:
            job.first_sent = sent_at
        job.attempts += 1
        figures = job.batch.figures(host.name)
        figures.requests += 1
        try:
            result = await self.http.attempt(job.url)
        except FetchFailure as failure:
            self._learn(job, host, figures, sent_at, failure.latency, failure)
            if (
                failure.http_status == 429
                and host.rate.last_cut > sent_at
                and job.excused < MAX_EXCUSED_THROTTLES
            ):
                job.excused += 1
            max_attempts = 1 + self.config.max_retry_attempts
            counted = job.attempts - job.excused
            job.malformed += failure.malformed
            retryable = failure.retryable and job.malformed < MAX_MALFORMED
            if retryable and counted < max_attempts and not job.batch.cancelled:
                delay = self._backoff(max(1, counted), failure.retry_after)
                self.scheduler.retry_later(job, host, delay)
                job.batch.retried += 1
                return
            result = FetchResult(
                status=failure.status,
                error=failure.message,
                http_status=failure.http_status,
                retryable=retryable,
                latency=failure.latency,
            )
        else:
            self._learn(job, host, figures, sent_at, result.latency, None)
            figures.successes += 1
        result.attempts = job.attempts
        result.elapsed_seconds = clock() - job.first_sent
        try:
            await job.on_done(result)
        finally:
            if result.memory is not None:  # on_done did not take the body on
                result.memory.release()
        job.batch.done()

    async def _refuse(self, job: Job, host: Host) -> None:
        """A job of a host marked down fails at once, retryable by a later --retry_failed."""
        now = self.scheduler.clock()
        job.batch.figures(host.name).unavailable += 1
        result = FetchResult(
            status=HOST_UNAVAILABLE,
            error=host.breaker.describe(now),
            retryable=True,
            attempts=job.attempts,
            elapsed_seconds=now - job.first_sent if job.first_sent is not None else 0.0,
        )
        await job.on_done(result)
        job.batch.done()

    def _learn(
        self,
        job: Job,
        host: Host,
        figures: HostFigures,
        sent_at: float,
        latency: float | None,
        failure: FetchFailure | None,
    ) -> None:
        """What this answer says of the host's capacity and health.

        A timeout or a dropped connection while the host answered other requests is this URL's
        own trouble (a stalled body, a dead backend path), not a sign the host is overloaded or
        down; so are its retries' failures. Only the others cut the host's limits and count
        towards its breaker."""
        now = self.scheduler.clock()
        if latency is not None:
            host.last_answer_at = max(host.last_answer_at, sent_at + latency)
            figures.latency_sum += latency
            host.concurrency.on_answer(latency, sent_at, now, host.in_flight)
        no_answer = failure is not None and (failure.timed_out or failure.unreachable)
        if no_answer and (job.fails_alone or host.last_answer_at > sent_at):
            job.fails_alone = True
        host_trouble = no_answer and not job.fails_alone
        if not no_answer:
            host.breaker.on_answer()
        elif host_trouble and host.breaker.on_failure(
            sent_at,
            now,
            failure.message,
            at_once=failure.unresolved,
            no_connection=failure.no_connection,
        ):
            figures.marked_down += 1
            self.scheduler.review(host)  # its queued jobs fail now, not after their waits
        if failure is None:
            host.rate.on_success(sent_at, now)
        elif failure.timed_out and host_trouble:
            host.rate.on_throttle(sent_at, now)
            host.concurrency.on_timeout(sent_at, now)
        elif failure.http_status in THROTTLE_STATUS:
            figures.throttled += 1
            not_about_rate = failure.http_status == 503 and failure.retry_after is None
            host.rate.on_throttle(sent_at, now, may_be_noise=not_about_rate)
            if failure.retry_after is not None:
                wait = min(failure.retry_after, MAX_RETRY_AFTER_SECONDS)
                held_until = max(host.blocked_until, now)
                if now + wait > held_until:
                    figures.held_seconds += now + wait - held_until
                    host.blocked_until = now + wait
        elif failure.http_status is not None:
            host.rate.on_success(sent_at, now)  # a 404 is a healthy answer
        figures.rate = host.rate.rate
        figures.concurrency = host.concurrency.allowed(self.scheduler.share())

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        """Full-jitter exponential backoff; a server's Retry-After is a floor."""
        ceiling = min(_BACKOFF_CAP_SECONDS, self.config.retry_backoff_sec * 2 ** (attempt - 1))
        delay = random.uniform(0, ceiling)
        if retry_after is not None:
            delay = max(delay, min(retry_after, MAX_RETRY_AFTER_SECONDS))
        return delay
