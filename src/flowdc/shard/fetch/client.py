"""HTTP fetching with aiohttp: one session per process, retries, redirects and size limits.

Redirects are followed by hand so that each hop is checked (http and https only, at most
MAX_REDIRECTS) and the whole chain shares one deadline (`timeout`). Which request goes when is the
scheduler's business (fetch/scheduler.py: per-host queues); what each host is allowed is the
adaptive limits' (fetch/aimd.py). This module makes one attempt and learns from its answer.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import quote

import aiohttp
from aiohttp.abc import AbstractResolver
from yarl import URL

from flowdc.config.options import DownloadConfig
from flowdc.core.errors import FetchFailure
from flowdc.core.status import (
    FAILED_TO_DOWNLOAD,
    HOST_UNAVAILABLE,
    INVALID_URL,
    OPTED_OUT,
    SUCCESS,
    TOO_LARGE,
)
from flowdc.shard.fetch.aimd import RateSettings
from flowdc.shard.fetch.breaker import BreakerSettings
from flowdc.shard.fetch.dns import CachingResolver
from flowdc.shard.fetch.proxy import Proxies
from flowdc.shard.fetch.robots import opt_out_directive
from flowdc.shard.fetch.scheduler import Batch, Host, HostFigures, Job, Scheduler

MAX_REDIRECTS = 5
RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504, 520, 521, 522, 523, 524})
REDIRECT_STATUS = frozenset({301, 302, 303, 307, 308})
THROTTLE_STATUS = frozenset({429, 503})
MAX_EXCUSED_THROTTLES = 3
"""A 429 to a request sent before the host's rate was last cut is our overshoot (the burst that
made the limiter learn), not a sign the URL is bad: up to this many such attempts per URL do not
count against max_retry_attempts, nor lengthen its backoff."""
"""Answers that say the host is over its capacity: the host's rate is cut and Retry-After obeyed."""
MAX_RETRY_AFTER_SECONDS = 120.0
_BACKOFF_CAP_SECONDS = 60.0


@dataclass
class FetchResult:
    """What one URL gave, after every attempt."""

    status: str
    data: bytes | None = None
    error: str | None = None
    http_status: int | None = None
    attempts: int = 0
    content_type: str | None = None
    final_url: str | None = None
    elapsed_seconds: float = 0.0
    retryable: bool = False
    """A failure a later run may cure (timeouts, resets, 429, 5xx): `--retry_failed` takes it."""
    latency: float | None = None
    """Seconds from sending the last attempt to its first response headers."""

    @property
    def ok(self) -> bool:
        return self.status == SUCCESS


def parse_url(url: str | None) -> URL | None:
    """The URL if it is absolute http(s) with a host, else None."""
    if not url or not url.strip():
        return None
    try:
        parsed = URL(url.strip())
        # .host decodes IDNA and raises on a broken punycode label such as "xn--a"
        if parsed.scheme not in ("http", "https") or not parsed.host or not _valid_host(parsed):
            return None
    except (ValueError, TypeError):
        return None
    return parsed


def _valid_host(url: URL) -> bool:
    """A host name DNS can carry (labels of at most 63 characters, 253 in all): aiohttp raises
    a bare UnicodeError on longer ones instead of failing the request."""
    host = url.raw_host or ""
    if host.startswith("[") or host.replace(".", "").isdigit():
        return True
    labels = host.rstrip(".").split(".")
    return len(host) <= 253 and all(0 < len(label) <= 63 for label in labels)


def invalid_url_reason(url: str | None) -> str:
    if url is None or not url.strip():
        return "empty URL"
    return f"not an absolute http(s) URL: {url[:200]!r}"


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After as seconds from now: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - time.time())


class Fetcher:
    """Fetches URLs for one process; create inside the running event loop, close when done."""

    def __init__(
        self,
        config: DownloadConfig,
        concurrency: int | None = None,
        processes: int = 1,
        resolver: AbstractResolver | None = None,
    ) -> None:
        """`resolver` answers name lookups (aiohttp's default, the system's, unless given);
        failed lookups are remembered for host_cooldown seconds either way."""
        self.config = config
        self.concurrency = concurrency or config.concurrent_downloads
        rate = (
            RateSettings(
                initial=config.rate_limit / processes,
                floor=config.min_rate_limit / processes,
                ceiling=config.max_rate_limit / processes,
                capacity=config.rate_capacity,
                adaptive=config.adaptive_rate_limit,
            )
            if config.enable_rate_limiting
            else None
        )
        self.scheduler = Scheduler(
            self.concurrency,
            rate,
            self._run_attempt,
            self._refuse,
            BreakerSettings(config.host_failure_threshold, config.host_cooldown),
        )
        self.resolver = CachingResolver(resolver, negative_ttl=config.host_cooldown)
        self.proxies = Proxies()  # http(s)_proxy and no_proxy, as curl and pip use them
        connector = aiohttp.TCPConnector(
            limit=0,
            limit_per_host=0,
            ttl_dns_cache=300,
            resolver=self.resolver,
            enable_cleanup_closed=True,
        )
        self.session = aiohttp.ClientSession(
            connector=connector,
            headers={"User-Agent": config.user_agent, "Accept": "image/*,*/*;q=0.8"},
            cookie_jar=aiohttp.DummyCookieJar(),
            timeout=aiohttp.ClientTimeout(total=None),
            read_bufsize=1 << 17,
            max_line_size=16384,
            max_field_size=16384,
        )
        # aiohttp resends a GET once, at once, when the connection drops before an answer: that
        # is what keeps a keep-alive connection the server closed while idle from costing an
        # attempt and a backoff. So a server that resets every connection sees two requests
        # per attempt; retries beyond that are ours (max_retry_attempts, backoff, rate limit).

    async def close(self) -> None:
        await self.scheduler.close()
        await self.session.close()

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
            result = await self._attempt(job.url)
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
            if failure.retryable and counted < max_attempts and not job.batch.cancelled:
                delay = self._backoff(max(1, counted), failure.retry_after)
                self.scheduler.retry_later(job, host, delay)
                job.batch.retried += 1
                return
            result = FetchResult(
                status=failure.status,
                error=failure.message,
                http_status=failure.http_status,
                retryable=failure.retryable,
                latency=failure.latency,
            )
        else:
            self._learn(job, host, figures, sent_at, result.latency, None)
            figures.successes += 1
        result.attempts = job.attempts
        result.elapsed_seconds = clock() - job.first_sent
        await job.on_done(result)
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
            sent_at, now, failure.message, at_once=failure.unresolved
        ):
            figures.marked_down += 1
            self.scheduler.review(host)  # its queued jobs fail now, not after their waits
        if failure is None:
            host.rate.on_success()
        elif failure.timed_out and host_trouble:
            host.rate.on_throttle(sent_at, now)
            host.concurrency.on_timeout(sent_at, now)
        elif failure.http_status in THROTTLE_STATUS:
            figures.throttled += 1
            host.rate.on_throttle(sent_at, now)
            if failure.retry_after is not None:
                wait = min(failure.retry_after, MAX_RETRY_AFTER_SECONDS)
                held_until = max(host.blocked_until, now)
                if now + wait > held_until:
                    figures.held_seconds += now + wait - held_until
                    host.blocked_until = now + wait
        elif failure.http_status is not None:
            host.rate.on_success()  # a 404 is a healthy answer
        figures.rate = host.rate.rate
        figures.concurrency = host.concurrency.allowed(self.scheduler.share())

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        """Full-jitter exponential backoff; a server's Retry-After is a floor."""
        ceiling = min(_BACKOFF_CAP_SECONDS, self.config.retry_backoff_sec * 2 ** (attempt - 1))
        delay = random.uniform(0, ceiling)
        if retry_after is not None:
            delay = max(delay, min(retry_after, MAX_RETRY_AFTER_SECONDS))
        return delay

    async def _attempt(self, url: URL) -> FetchResult:
        sent = time.monotonic()
        answered: list[float] = []
        try:
            result = await self._follow(url, sent + self.config.timeout, answered)
        except FetchFailure as failure:
            failure.latency = answered[0] - sent if answered else None
            raise
        result.latency = answered[0] - sent if answered else None
        return result

    async def _follow(self, url: URL, deadline: float, answered: list[float]) -> FetchResult:
        """The request and its redirects; `answered` gets the time of the first headers."""
        current = url
        for _hop in range(MAX_REDIRECTS + 1):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._timed_out()
            try:
                proxy = self.proxies.for_url(current)
                async with self.session.get(
                    current,
                    allow_redirects=False,
                    timeout=aiohttp.ClientTimeout(total=remaining),
                    proxy=proxy and proxy[0],
                    proxy_auth=proxy and proxy[1],
                ) as response:
                    if not answered:
                        answered.append(time.monotonic())
                    if response.status in REDIRECT_STATUS and "Location" in response.headers:
                        current = self._next_hop(current, response)
                        continue
                    return await self._read(current, response)
            except FetchFailure:
                raise
            except asyncio.TimeoutError:
                raise self._timed_out() from None
            except aiohttp.ClientPayloadError as exc:
                raise FetchFailure(
                    FAILED_TO_DOWNLOAD, f"incomplete body: {_brief(exc)}", True
                ) from None
            except aiohttp.InvalidURL as exc:
                raise FetchFailure(INVALID_URL, f"invalid URL: {_brief(exc)}", False) from None
            except aiohttp.ClientConnectorDNSError as exc:
                raise FetchFailure(
                    FAILED_TO_DOWNLOAD,
                    f"host name does not resolve: {_brief(exc)}",
                    True,
                    unreachable=True,
                    unresolved=True,
                ) from None
            except aiohttp.ClientSSLError as exc:
                # a certificate or TLS failure does not heal by asking again
                message = f"TLS error: {_brief(exc)}"
                raise FetchFailure(FAILED_TO_DOWNLOAD, message, False) from None
            except aiohttp.ClientResponseError as exc:
                # raised by aiohttp's parser (bad Content-Length, broken chunks, garbage status
                # line): its 400 is aiohttp's own, not the server's, so no status is recorded
                raise FetchFailure(
                    FAILED_TO_DOWNLOAD, f"malformed response: {_brief(exc)}", True
                ) from None
            except (aiohttp.ClientError, OSError) as exc:
                raise FetchFailure(
                    FAILED_TO_DOWNLOAD,
                    f"{type(exc).__name__}: {_brief(exc)}",
                    True,
                    unreachable=not answered,  # refused, reset or dropped before headers
                ) from None
        raise FetchFailure(FAILED_TO_DOWNLOAD, f"more than {MAX_REDIRECTS} redirects", False)

    def _timed_out(self) -> FetchFailure:
        return FetchFailure(
            FAILED_TO_DOWNLOAD, f"timeout after {self.config.timeout:g} s", True, timed_out=True
        )

    def _next_hop(self, current: URL, response: aiohttp.ClientResponse) -> URL:
        location = response.headers["Location"]
        try:
            target = current.join(_location_url(location))
        except (ValueError, TypeError):
            raise FetchFailure(
                FAILED_TO_DOWNLOAD,
                f"bad redirect location {location[:200]!r}",
                False,
                http_status=response.status,
            ) from None
        if target.scheme not in ("http", "https") or not target.host:
            raise FetchFailure(
                FAILED_TO_DOWNLOAD,
                f"redirect to a non-http(s) URL refused: {location[:200]!r}",
                False,
                http_status=response.status,
            )
        return target

    async def _read(self, url: URL, response: aiohttp.ClientResponse) -> FetchResult:
        status = response.status
        if status != 200:
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            raise FetchFailure(
                FAILED_TO_DOWNLOAD,
                f"HTTP {status} {response.reason or ''}".strip(),
                status in RETRYABLE_STATUS,
                http_status=status,
                retry_after=retry_after,
            )
        if not self.config.ignore_opt_out:
            directive = opt_out_directive(response.headers.getall("X-Robots-Tag", []))
            if directive is not None:
                raise FetchFailure(
                    OPTED_OUT, f"X-Robots-Tag says {directive}", False, http_status=status
                )
        limit = self.config.max_bytes
        length = response.content_length
        if length is not None and length > limit:
            raise FetchFailure(
                TOO_LARGE,
                f"Content-Length {length} is over max_bytes {limit}",
                False,
                http_status=status,
            )
        if length is not None and "Content-Encoding" not in response.headers:
            data = await response.read()
        else:
            buffer = bytearray()
            async for chunk in response.content.iter_chunked(1 << 16):
                buffer += chunk
                if len(buffer) > limit:
                    raise FetchFailure(
                        TOO_LARGE, f"body grew past max_bytes {limit}", False, http_status=status
                    )
            data = bytes(buffer)
        return FetchResult(
            status=SUCCESS,
            data=data,
            http_status=status,
            content_type=response.headers.get("Content-Type"),
            final_url=str(url),
        )


def _location_url(location: str) -> URL:
    """A Location header as a URL; raw non-UTF-8 bytes (aiohttp keeps them as surrogates) are
    percent-encoded as a browser or curl would, not dropped."""
    if any("\udc80" <= char <= "\udcff" for char in location):
        raw = location.encode("utf-8", "surrogateescape")
        return URL(quote(raw, safe=":/?#[]@!$&'()*+,;=%"), encoded=True)
    return URL(location)


def _brief(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]
