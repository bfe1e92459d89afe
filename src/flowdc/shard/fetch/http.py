"""One HTTP attempt with aiohttp: the process's session, redirects followed by hand (each hop
checked: http and https only, at most MAX_REDIRECTS, no public-to-private redirect
(fetch/addresses.py), one deadline for the chain), the size limit, the memory budget
(fetch/budget.py), the opt-out header, and every failure mapped to a FetchFailure with its status
and flags. URLs go out as written (fetch/urls.py).

The deadline (`timeout`) is one asyncio timeout around the whole attempt, paused while the body
waits for the memory budget: that wait is this process's doing, not the host's, and must not
turn into a timeout that cuts the host's rate.

Which request goes when, retries, and what each answer teaches about its host are the
Fetcher's (client.py).
"""

from __future__ import annotations

import asyncio
import email.utils
import sys
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver
from yarl import URL

from flowdc.config.options import DownloadConfig
from flowdc.core.errors import FetchFailure
from flowdc.core.status import FAILED_TO_DOWNLOAD, INVALID_URL, OPTED_OUT, SUCCESS, TOO_LARGE
from flowdc.shard.fetch.addresses import (
    CURRENT_HOPS,
    AddressRule,
    CheckedConnector,
    Hops,
    treated_as_public,
)
from flowdc.shard.fetch.budget import MemoryBudget, Reservation, default_budget
from flowdc.shard.fetch.dns import CachingResolver
from flowdc.shard.fetch.proxy import Proxies
from flowdc.shard.fetch.robots import opt_out_directive
from flowdc.shard.fetch.urls import as_sent, join_location

if sys.version_info >= (3, 11):
    from asyncio import timeout_at
else:  # aiohttp's own dependency on Python 3.10
    from async_timeout import timeout_at

CONNECT_TIMEOUT_SECONDS = 10.0
"""A connection not made within this (inside the request's `timeout`) fails on its own: a host
whose SYNs vanish (down, or behind a firewall that drops) is found out in seconds, not after the
whole timeout."""
MAX_REDIRECTS = 5
RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504, 520, 521, 522, 523, 524})
REDIRECT_STATUS = frozenset({301, 302, 303, 307, 308})


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
    memory: Reservation | None = None
    """The memory budget `data` holds: whoever holds `data` last releases it."""

    @property
    def ok(self) -> bool:
        return self.status == SUCCESS


def parse_url(url: str | None) -> URL | None:
    """The URL if it is absolute http(s) with a host, else None."""
    if not url or not url.strip():
        return None
    try:
        parsed = as_sent(url.strip())
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


class _Call:
    """One attempt's deadline and timing, shared by its hops."""

    __slots__ = ("answered", "deadline", "loop", "sent", "timer")

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        self.loop = loop
        self.sent = time.monotonic()
        self.deadline = loop.time() + timeout
        self.timer: Any = None  # the asyncio timeout around the attempt
        self.answered: float | None = None
        """When the first response headers came."""

    def latency(self) -> float | None:
        return None if self.answered is None else self.answered - self.sent

    async def wait_for_memory(self, reservation: Reservation, nbytes: int) -> None:
        """`nbytes` more of the memory budget, when `try_grow` said no: the deadline stands still
        while the body waits."""
        _set_deadline(self.timer, None)
        waited_from = self.loop.time()
        try:
            await reservation.grow(nbytes)
        finally:
            self.deadline += self.loop.time() - waited_from
            _set_deadline(self.timer, self.deadline)


def _set_deadline(timer: Any, when: float | None) -> None:
    if sys.version_info >= (3, 11):
        timer.reschedule(when)
    elif when is None:
        timer.reject()  # async_timeout's names
    else:
        timer.update(when)


class HttpClient:
    """The process's HTTP session and one attempt at a URL; create inside the running loop."""

    def __init__(self, config: DownloadConfig, resolver: AbstractResolver | None = None) -> None:
        """`resolver` answers name lookups (aiohttp's default, the system's, unless given);
        failed lookups are remembered for host_cooldown seconds either way."""
        self.config = config
        self.resolver = CachingResolver(resolver, negative_ttl=config.host_cooldown)
        self.proxies = Proxies()  # http(s)_proxy and no_proxy, as curl and pip use them
        self.budget = MemoryBudget(config.max_memory or default_budget())
        self.addresses = (
            None if config.allow_private_redirects else AddressRule(treated_as_public())
        )
        connector = CheckedConnector(
            limit=0,
            limit_per_host=0,
            ttl_dns_cache=300,
            resolver=self.resolver,
            enable_cleanup_closed=True,
            ssl=config.verify_tls,  # False: any certificate (--no-verify_tls)
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
        await self.session.close()

    async def attempt(self, url: URL) -> FetchResult:
        """One request and its redirects; a FetchFailure says why it gave no image body."""
        call = _Call(asyncio.get_running_loop(), self.config.timeout)
        chain = CURRENT_HOPS.set(None if self.addresses is None else Hops(self.addresses, url))
        try:
            try:
                async with timeout_at(call.deadline) as call.timer:
                    result = await self._follow(url, call)
            except asyncio.TimeoutError:
                raise self._timed_out() from None
        except FetchFailure as failure:
            failure.latency = call.latency()
            raise
        finally:
            CURRENT_HOPS.reset(chain)
        result.latency = call.latency()
        return result

    async def _follow(self, url: URL, call: _Call) -> FetchResult:
        """The request and its redirects."""
        current = url
        for _hop in range(MAX_REDIRECTS + 1):
            try:
                proxy = self.proxies.for_url(current)
                async with self.session.get(
                    current,
                    allow_redirects=False,
                    timeout=aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT_SECONDS),
                    proxy=proxy and proxy[0],
                    proxy_auth=proxy and proxy[1],
                ) as response:
                    if call.answered is None:
                        call.answered = time.monotonic()
                    if response.status in REDIRECT_STATUS and "Location" in response.headers:
                        current = self._next_hop(current, response)
                        continue
                    return await self._read(current, response, call)
            except FetchFailure:
                raise
            except aiohttp.ConnectionTimeoutError:
                raise FetchFailure(
                    FAILED_TO_DOWNLOAD,
                    f"no connection within {CONNECT_TIMEOUT_SECONDS:g} s",
                    True,
                    unreachable=True,
                    no_connection=True,
                ) from None
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
            except aiohttp.ClientConnectorError as exc:  # refused, unreachable: no connection
                raise FetchFailure(
                    FAILED_TO_DOWNLOAD,
                    f"{type(exc).__name__}: {_brief(exc)}",
                    True,
                    unreachable=True,
                    no_connection=True,
                ) from None
            except aiohttp.ClientResponseError as exc:
                # raised by aiohttp's parser (bad Content-Length, broken chunks, garbage status
                # line, headers over the limit): its 400 is aiohttp's own, not the server's, so no
                # status is recorded; the same server likely answers the same way again
                raise FetchFailure(
                    FAILED_TO_DOWNLOAD,
                    f"malformed response: {_brief(exc)}",
                    True,
                    malformed=True,
                ) from None
            except asyncio.TimeoutError:  # aiohttp's own (the deadline's comes at the end)
                raise self._timed_out() from None
            except (aiohttp.ClientError, OSError) as exc:
                raise FetchFailure(
                    FAILED_TO_DOWNLOAD,
                    f"{type(exc).__name__}: {_brief(exc)}",
                    True,
                    unreachable=call.answered is None,  # refused, reset or dropped before headers
                ) from None
        raise FetchFailure(FAILED_TO_DOWNLOAD, f"more than {MAX_REDIRECTS} redirects", False)

    def _timed_out(self) -> FetchFailure:
        return FetchFailure(
            FAILED_TO_DOWNLOAD, f"timeout after {self.config.timeout:g} s", True, timed_out=True
        )

    def _next_hop(self, current: URL, response: aiohttp.ClientResponse) -> URL:
        location = response.headers["Location"]
        try:
            target = join_location(current, location)
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
        hops = CURRENT_HOPS.get()
        if hops is not None:
            hops.redirect(target, response.status)
        return target

    async def _read(self, url: URL, response: aiohttp.ClientResponse, call: _Call) -> FetchResult:
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
        memory = self.budget.reservation()
        try:
            if length is not None and "Content-Encoding" not in response.headers:
                if not memory.try_grow(length):
                    await call.wait_for_memory(memory, length)
                data = await response.read()
            else:
                buffer = bytearray()
                async for chunk in response.content.iter_chunked(1 << 16):
                    if not memory.try_grow(len(chunk)):
                        await call.wait_for_memory(memory, len(chunk))
                    buffer += chunk
                    if len(buffer) > limit:
                        raise FetchFailure(
                            TOO_LARGE,
                            f"body grew past max_bytes {limit}",
                            False,
                            http_status=status,
                        )
                data = bytes(buffer)
        except BaseException:
            memory.release()
            raise
        return FetchResult(
            status=SUCCESS,
            data=data,
            http_status=status,
            content_type=response.headers.get("Content-Type"),
            final_url=str(url),
            memory=memory,
        )


def _brief(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]
