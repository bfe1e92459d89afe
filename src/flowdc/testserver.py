"""A local image server that can misbehave on chosen paths: for the demo, the tests, benchmarks.

It binds only to loopback addresses (127.0.0.x), runs its own event loop in a background thread
and stops with the object. Paths:

- /img/NAME                 the image NAME
- /flaky/N/NAME             503 for the first N requests of this path, then the image
- /status/CODE/NAME         that HTTP status, with a short text body
- /reset/NAME               the connection is dropped before any response
- /truncated/NAME           Content-Length of the image, then half the body and a closed socket
- /slow/SECONDS/NAME        waits, then the image
- /html/NAME                an HTML page with status 200
- /empty/NAME               an empty body with status 200 and an image content type
- /big/MEGABYTES            that many MiB of bytes, chunked (no Content-Length)
- /bigcl/MEGABYTES          the same with a Content-Length
- /redirect/N/NAME          N redirects, then the image
- /redirect-loop/NAME       a redirect to itself
- /redirect-file/NAME       a redirect to file:///etc/passwd
- /goto?to=URL              a redirect to URL
- /robots/DIRECTIVES/NAME   the image with `X-Robots-Tag: DIRECTIVES`

A host may also be given a HostPolicy: a hidden capacity (a token bucket above which it answers
429, with or without Retry-After), a slowdown when too many requests are in flight, or silence
(it takes connections and requests and answers none until `silent` is cleared). Every request a
host answers is logged with its arrival time and status (`log`).

`HostsTable` is a name resolver answering from a table, like /etc/hosts, so tests can give
loopback servers names (and names that do not resolve) without asking any DNS server.
"""

from __future__ import annotations

import asyncio
import io
import random
import socket
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult

_MIME = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "GIF": "image/gif"}


def make_image(
    seed: int, width: int = 96, height: int = 72, fmt: str = "JPEG", mode: str = "RGB"
) -> bytes:
    """A deterministic picture: a colour gradient with a few shapes, distinct for each seed."""
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    base = tuple(rng.randrange(256) for _ in range(3))
    image = Image.new("RGB", (width, height), base)
    draw = ImageDraw.Draw(image)
    for _ in range(4):
        x0, y0 = rng.randrange(width), rng.randrange(height)
        x1, y1 = (
            x0 + rng.randrange(4, max(5, width // 2)),
            y0 + rng.randrange(4, max(5, height // 2)),
        )
        colour = tuple(rng.randrange(256) for _ in range(3))
        draw.ellipse((x0, y0, x1, y1), fill=colour)
    if mode != "RGB":
        image = image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, quality=85) if fmt == "JPEG" else image.save(buffer, format=fmt)
    return buffer.getvalue()


def mime_of(data: bytes) -> str:
    if data.startswith(b"\x89PNG"):
        return _MIME["PNG"]
    if data[:4] == b"RIFF":
        return _MIME["WEBP"]
    if data[:3] == b"GIF":
        return _MIME["GIF"]
    return _MIME["JPEG"]


@dataclass
class HostPolicy:
    """How one host behaves beyond its paths: its hidden capacity and its slowdown."""

    rate: float | None = None
    """Requests/s the host accepts (a token bucket holding one second's worth); 429 above."""
    retry_after: int | None = None
    """Seconds sent in Retry-After with each 429 (None: no header)."""
    slow_above: int | None = None
    """Above this many requests in flight on the host, each answer waits `slow_seconds` more."""
    slow_seconds: float = 1.0
    delay: float = 0.0
    """Seconds every answer waits (the host's base latency)."""
    silent: bool = False
    """Requests are read and left unanswered while this is set (a host that hangs)."""
    _tokens: float = field(default=0.0, repr=False)
    _stamp: float = field(default=-1.0, repr=False)

    def admit(self, now: float) -> bool:
        """Take a token of the hidden bucket; False when the host is over its capacity."""
        if self.rate is None:
            return True
        capacity = max(1.0, self.rate)
        if self._stamp < 0:
            self._tokens, self._stamp = capacity, now
        self._tokens = min(capacity, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


class ImageServer:
    """Serve `images` (name -> bytes) from every host in `hosts`, each on its own port."""

    def __init__(
        self,
        images: dict[str, bytes],
        hosts: Iterable[str] = ("127.0.0.1",),
        policies: dict[str, HostPolicy] | None = None,
    ) -> None:
        self.images = images
        self.hosts = list(hosts)
        self.policies = policies or {}
        self.log: dict[str, list[tuple[float, int]]] = defaultdict(list)
        """host -> (time.monotonic() the request arrived, status) for every request answered."""
        self.host_in_flight: Counter[str] = Counter()
        self.user_agents: Counter[str] = Counter()
        for host in self.hosts:
            if not host.startswith("127."):
                raise ValueError(f"test server binds to loopback only, not {host}")
        self.hits: Counter[str] = Counter()
        self.arrivals: Counter[str] = Counter()
        """host -> requests received, answered or not."""
        self.in_flight = 0
        self.max_in_flight = 0
        self.ports: dict[str, int] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._ready = threading.Event()
        self._lock = threading.Lock()

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> ImageServer:
        self._thread = threading.Thread(target=self._serve, name="flowdc-image-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(15):
            raise RuntimeError("image server did not start")
        return self

    def stop(self) -> None:
        if self._loop is None:
            return
        future = asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop)
        future.result(15)
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread:
            self._thread.join(15)
        self._loop = None

    def __enter__(self) -> ImageServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def url(self, path: str, host: int = 0) -> str:
        address = self.hosts[host]
        return f"http://{address}:{self.ports[address]}/{path.lstrip('/')}"

    def hits_on(self, host: str) -> int:
        """Requests the host received, answered or not."""
        with self._lock:
            return self.arrivals[host]

    def reset_counters(self) -> None:
        with self._lock:
            self.hits.clear()
            self.arrivals.clear()
            self.max_in_flight = 0
            self.log.clear()
            self.user_agents.clear()

    # -- server ------------------------------------------------------------------------------
    def _serve(self) -> None:
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._startup())
        self._ready.set()
        self._loop.run_forever()
        self._loop.close()

    async def _startup(self) -> None:
        app = web.Application(middlewares=[self._count])
        app.router.add_get("/img/{name}", self._image)
        app.router.add_get("/flaky/{times}/{name}", self._flaky)
        app.router.add_get("/status/{code}/{name}", self._status)
        app.router.add_get("/reset/{name}", self._reset)
        app.router.add_get("/truncated/{name}", self._truncated)
        app.router.add_get("/slow/{seconds}/{name}", self._slow)
        app.router.add_get("/html/{name}", self._html)
        app.router.add_get("/empty/{name}", self._empty)
        app.router.add_get("/big/{mib}", self._big)
        app.router.add_get("/bigcl/{mib}", self._big_with_length)
        app.router.add_get("/redirect/{n}/{name}", self._redirect)
        app.router.add_get("/redirect-loop/{name}", self._redirect_loop)
        app.router.add_get("/redirect-file/{name}", self._redirect_file)
        app.router.add_get("/goto", self._goto)
        app.router.add_get("/robots/{directives}/{name}", self._robots)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        for host in self.hosts:
            site = web.TCPSite(self._runner, host, 0, backlog=1024)
            await site.start()
            self.ports[host] = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def _shutdown(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    @web.middleware
    async def _count(self, request: web.Request, handler):  # type: ignore[no-untyped-def]
        host = request.transport.get_extra_info("sockname")[0] if request.transport else ""
        with self._lock:
            self.hits[request.path] += 1
            self.arrivals[host] += 1
            self.user_agents[request.headers.get("User-Agent", "")] += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self.host_in_flight[host] += 1
        status, arrived = 500, time.monotonic()
        try:
            response = await self._with_policy(request, handler, host)
            status = response.status
            return response
        finally:
            with self._lock:
                self.in_flight -= 1
                self.host_in_flight[host] -= 1
                self.log[host].append((arrived, status))

    async def _with_policy(self, request: web.Request, handler, host: str):  # type: ignore[no-untyped-def]
        policy = self.policies.get(host)
        if policy is None:
            return await handler(request)
        while policy.silent:
            await asyncio.sleep(0.05)
        if policy.delay:
            await asyncio.sleep(policy.delay)
        if policy.slow_above is not None and self.host_in_flight[host] > policy.slow_above:
            await asyncio.sleep(policy.slow_seconds)
        if not policy.admit(time.monotonic()):
            headers = {"Retry-After": str(policy.retry_after)} if policy.retry_after else {}
            return web.Response(status=429, text="too many requests", headers=headers)
        return await handler(request)

    def _image_response(self, name: str) -> web.Response:
        data = self.images.get(name)
        if data is None:
            return web.Response(status=404, text="no such image")
        return web.Response(body=data, content_type=mime_of(data))

    async def _image(self, request: web.Request) -> web.StreamResponse:
        return self._image_response(request.match_info["name"])

    async def _flaky(self, request: web.Request) -> web.StreamResponse:
        if self.hits[request.path] <= int(request.match_info["times"]):
            return web.Response(status=503, text="try again", headers={"Retry-After": "0"})
        return self._image_response(request.match_info["name"])

    async def _status(self, request: web.Request) -> web.StreamResponse:
        return web.Response(status=int(request.match_info["code"]), text="status page")

    async def _reset(self, request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        request.transport.abort()
        await asyncio.sleep(0.05)
        return web.Response(status=500)

    async def _truncated(self, request: web.Request) -> web.StreamResponse:
        data = self.images.get(request.match_info["name"], b"")
        response = web.StreamResponse(headers={"Content-Type": mime_of(data)})
        response.content_length = len(data)
        await response.prepare(request)
        await response.write(data[: len(data) // 2])
        assert request.transport is not None
        request.transport.close()
        return response

    async def _slow(self, request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(float(request.match_info["seconds"]))
        return self._image_response(request.match_info["name"])

    async def _html(self, request: web.Request) -> web.StreamResponse:
        return web.Response(
            text="<html><body><h1>Not an image</h1></body></html>", content_type="text/html"
        )

    async def _empty(self, request: web.Request) -> web.StreamResponse:
        return web.Response(body=b"", content_type="image/jpeg")

    async def _big(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        chunk = b"\xff" * (1 << 16)
        for _ in range(int(request.match_info["mib"]) * 16):
            await response.write(chunk)
        await response.write_eof()
        return response

    async def _big_with_length(self, request: web.Request) -> web.StreamResponse:
        size = int(request.match_info["mib"]) << 20
        response = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
        response.content_length = size
        await response.prepare(request)
        chunk = b"\xff" * (1 << 16)
        for _ in range(size >> 16):
            await response.write(chunk)
        await response.write_eof()
        return response

    async def _redirect(self, request: web.Request) -> web.StreamResponse:
        remaining = int(request.match_info["n"])
        name = request.match_info["name"]
        target = f"/redirect/{remaining - 1}/{name}" if remaining > 1 else f"/img/{name}"
        raise web.HTTPFound(target)

    async def _redirect_loop(self, request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(request.path)

    async def _redirect_file(self, request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("file:///etc/passwd")

    async def _goto(self, request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(request.query["to"])

    async def _robots(self, request: web.Request) -> web.StreamResponse:
        response = self._image_response(request.match_info["name"])
        response.headers["X-Robots-Tag"] = request.match_info["directives"]
        return response


class HostsTable(AbstractResolver):
    """Resolves names from `table` (name -> 127.0.0.x) and nothing else; counts every lookup."""

    def __init__(self, table: dict[str, str]) -> None:
        for address in table.values():
            if not address.startswith("127."):
                raise ValueError(f"names resolve to loopback only, not {address}")
        self.table = table
        self.lookups: Counter[str] = Counter()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.lookups[host] += 1
        address = self.table.get(host)
        if address is None:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [
            {
                "hostname": host,
                "host": address,
                "port": port,
                "family": socket.AF_INET,
                "proto": 0,
                "flags": socket.AI_NUMERICHOST,
            }
        ]

    async def close(self) -> None:
        return None
