"""One HTTP attempt with aiohttp: the process's session, redirects followed by hand (each hop
checked: http and https only, at most MAX_REDIRECTS, one deadline for the chain), the size limit
and the opt-out header, and every failure mapped to a FetchFailure with its status and flags.

Which request goes when, retries, and what each answer teaches about its host are the
Fetcher's (client.py).
"""

from __future__ import annotations

import asyncio
import email.utils
import time
from dataclasses import dataclass
from urllib.parse import quote

import aiohttp
from aiohttp.abc import AbstractResolver
from yarl import URL

from flowdc.config.options import DownloadConfig
from flowdc.core.errors import FetchFailure
from flowdc.core.status import FAILED_TO_DOWNLOAD, INVALID_URL, OPTED_OUT, SUCCESS, TOO_LARGE
from flowdc.shard.fetch.dns import CachingResolver
from flowdc.shard.fetch.proxy import Proxies
from flowdc.shard.fetch.robots import opt_out_directive

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


class HttpClient:
    """The process's HTTP session and one attempt at a URL; create inside the running loop."""

    def __init__(self, config: DownloadConfig, resolver: AbstractResolver | None = None) -> None:
        """`resolver` answers name lookups (aiohttp's default, the system's, unless given);
        failed lookups are remembered for host_cooldown seconds either way."""
        self.config = config
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
        await self.session.close()

    async def attempt(self, url: URL) -> FetchResult:
        """One request and its redirects; a FetchFailure says why it gave no image body."""
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
