"""The Fetcher against the real local image server, plus image inspection and Retry-After."""

from __future__ import annotations

import asyncio
import email.utils
import io
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from aiohttp.abc import AbstractResolver
from PIL import Image

import flowdc
from flowdc.config.loading import build_config
from flowdc.core.errors import ImageRejected
from flowdc.core.images import inspect_image, to_png
from flowdc.core.status import FAILED_TO_DOWNLOAD, INVALID_URL, NOT_AN_IMAGE, SUCCESS, TOO_LARGE
from flowdc.shard.fetch.client import Fetcher
from flowdc.shard.fetch.http import MAX_REDIRECTS, FetchResult, parse_retry_after
from flowdc.testserver import ImageServer, make_image
from tests.conftest import QUICK_RUN

T = TypeVar("T")
BACKOFF = 0.01


def make_config(**overrides: Any):
    values: dict[str, Any] = {
        "input": "x",
        "output": "y",
        "retry_backoff_sec": BACKOFF,
        "timeout": 2,
        "enable_rate_limiting": False,
        "processes": 1,
    }
    values.update(overrides)
    return build_config(overrides=values)


def with_fetcher(
    work: Callable[[Fetcher], Awaitable[T]],
    concurrency: int | None = None,
    resolver: AbstractResolver | None = None,
    **overrides: Any,
) -> T:
    """Run `work(fetcher)` in a fresh event loop with a Fetcher made inside it, then close it."""

    async def main() -> T:
        fetcher = Fetcher(make_config(**overrides), concurrency=concurrency, resolver=resolver)
        try:
            return await work(fetcher)
        finally:
            await fetcher.close()

    return asyncio.run(main())


def fetch_one(url: str | None, **overrides: Any) -> FetchResult:
    return with_fetcher(lambda fetcher: fetcher.fetch(url), **overrides)


def fetch_many(
    urls: list[str], concurrency: int | None = None, **overrides: Any
) -> list[FetchResult]:
    async def work(fetcher: Fetcher) -> list[FetchResult]:
        return list(await asyncio.gather(*(fetcher.fetch(url) for url in urls)))

    return with_fetcher(work, concurrency=concurrency, **overrides)


def timed(call: Callable[[], T]) -> tuple[T, float]:
    started = time.monotonic()
    result = call()
    return result, time.monotonic() - started


# -- success ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["0.jpg", "17.jpg", "pic.png", "anim.gif", "cmyk.jpg"])
def test_image_success(fresh_server: ImageServer, images: dict[str, bytes], name: str) -> None:
    url = fresh_server.url(f"/img/{name}")
    result = fetch_one(url)
    assert result.status == SUCCESS, result.error
    assert result.ok
    assert result.data == images[name]
    assert result.attempts == 1
    assert result.http_status == 200
    assert result.error is None
    assert result.final_url == url
    assert result.content_type is not None and result.content_type.startswith("image/")
    assert fresh_server.hits[f"/img/{name}"] == 1


def test_image_success_on_second_host(fresh_server: ImageServer, images: dict[str, bytes]) -> None:
    url = fresh_server.url("/img/5.jpg", host=1)
    assert "127.0.0.2" in url
    result = fetch_one(url)
    assert result.status == SUCCESS, result.error
    assert result.data == images["5.jpg"]


# -- retries ---------------------------------------------------------------------------------


@pytest.mark.parametrize("retries", [2, 3, 5])
def test_flaky_succeeds_after_retries(
    fresh_server: ImageServer, images: dict[str, bytes], retries: int
) -> None:
    path = f"/flaky/2/{retries}.jpg"
    result = fetch_one(fresh_server.url(path), max_retry_attempts=retries)
    assert result.status == SUCCESS, result.error
    assert result.attempts == 3
    assert result.http_status == 200
    assert result.data == images[f"{retries}.jpg"]
    assert fresh_server.hits[path] == 3


def test_flaky_fails_when_retries_run_out(fresh_server: ImageServer) -> None:
    path = "/flaky/2/1.jpg"
    result = fetch_one(fresh_server.url(path), max_retry_attempts=1)
    assert result.status == FAILED_TO_DOWNLOAD
    assert result.http_status == 503
    assert result.attempts == 2
    assert result.data is None
    assert result.error and "503" in result.error
    assert fresh_server.hits[path] == 2


def test_no_retries_means_one_attempt(fresh_server: ImageServer) -> None:
    path = "/status/500/none"
    result = fetch_one(fresh_server.url(path), max_retry_attempts=0)
    assert result.status == FAILED_TO_DOWNLOAD
    assert result.attempts == 1
    assert fresh_server.hits[path] == 1


@pytest.mark.parametrize("code", [404, 403, 410, 401])
def test_client_errors_are_not_retried(fresh_server: ImageServer, code: int) -> None:
    path = f"/status/{code}/x"
    result = fetch_one(fresh_server.url(path), max_retry_attempts=3)
    assert result.status == FAILED_TO_DOWNLOAD
    assert result.http_status == code
    assert result.attempts == 1
    assert result.error and str(code) in result.error
    assert fresh_server.hits[path] == 1


@pytest.mark.parametrize("code", [500, 429, 502, 503, 504])
@pytest.mark.parametrize("retries", [1, 3])
def test_server_errors_are_retried(fresh_server: ImageServer, code: int, retries: int) -> None:
    path = f"/status/{code}/x"
    result = fetch_one(fresh_server.url(path), max_retry_attempts=retries)
    assert result.status == FAILED_TO_DOWNLOAD
    assert result.http_status == code
    assert result.attempts == 1 + retries
    assert fresh_server.hits[path] == 1 + retries


@pytest.mark.parametrize("retries", [0, 2])
def test_connection_reset_is_retried(fresh_server: ImageServer, retries: int) -> None:
    path = "/reset/r.jpg"
    result = fetch_one(fresh_server.url(path), max_retry_attempts=retries)
    assert result.status == FAILED_TO_DOWNLOAD
    assert result.data is None
    assert result.error and "Disconnected" in result.error
    assert result.attempts == 1 + retries
    # aiohttp resends once at once on a dropped connection (what saves a stale keep-alive
    # connection from costing an attempt), so a server that resets everything sees two per try
    assert fresh_server.hits[path] == 2 * (1 + retries)


def test_a_keep_alive_connection_the_server_closed_costs_no_attempt(
    images: dict[str, bytes],
) -> None:
    """A server that closes after each answer without saying so (common with idle timeouts):
    the redirect's second request finds the pooled connection dead and still succeeds."""
    body = images["1.jpg"]
    answers = {
        "/hop": b"HTTP/1.1 302 Found\r\nLocation: /final.jpg\r\nContent-Length: 0\r\n\r\n",
        "/final.jpg": raw_ok(body),
    }
    with RawServer(answers) as raw:
        result = fetch_one(raw.url("/hop"), max_retry_attempts=0)
    assert result.status == SUCCESS, result
    assert result.attempts == 1


def test_truncated_body_is_retried_and_fails(fresh_server: ImageServer) -> None:
    path = "/truncated/large.jpg"
    result = fetch_one(fresh_server.url(path), max_retry_attempts=2)
    assert result.status == FAILED_TO_DOWNLOAD
    assert result.data is None
    assert result.error and "incomplete body" in result.error
    assert result.attempts == 3
    assert fresh_server.hits[path] == 3


# -- timeouts --------------------------------------------------------------------------------


@pytest.mark.parametrize("retries", [0, 1])
def test_slow_response_times_out(fresh_server: ImageServer, retries: int) -> None:
    timeout = 0.5
    path = f"/slow/5/{retries}.jpg"
    result, wall = timed(
        lambda: fetch_one(fresh_server.url(path), timeout=timeout, max_retry_attempts=retries)
    )
    assert result.status == FAILED_TO_DOWNLOAD
    assert result.error and "timeout" in result.error
    assert result.attempts == 1 + retries
    assert fresh_server.hits[path] == 1 + retries
    backoff_ceiling = sum(BACKOFF * 2**i for i in range(retries))
    assert wall < (1 + retries) * timeout + backoff_ceiling + 1.5
    assert wall >= (1 + retries) * timeout * 0.9


# -- content the fetcher does not judge ------------------------------------------------------


def test_html_is_fetched_but_not_an_image(fresh_server: ImageServer) -> None:
    result = fetch_one(fresh_server.url("/html/x"))
    assert result.status == SUCCESS
    assert result.data and b"<html" in result.data
    assert result.content_type and result.content_type.startswith("text/html")
    with pytest.raises(ImageRejected) as caught:
        inspect_image(result.data)
    assert caught.value.status == NOT_AN_IMAGE
    assert "HTML" in caught.value.message


def test_empty_body_is_fetched_but_not_an_image(fresh_server: ImageServer) -> None:
    result = fetch_one(fresh_server.url("/empty/x"))
    assert result.status == SUCCESS
    assert result.data == b""
    with pytest.raises(ImageRejected) as caught:
        inspect_image(result.data)
    assert caught.value.status == NOT_AN_IMAGE
    assert caught.value.message == "empty body"


# -- size limits -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["big", "bigcl"])
def test_too_large_is_refused_and_not_retried(fresh_server: ImageServer, kind: str) -> None:
    path = f"/{kind}/3"
    result, wall = timed(
        lambda: fetch_one(fresh_server.url(path), max_bytes=1_000_000, max_retry_attempts=3)
    )
    assert result.status == TOO_LARGE, result.error
    assert result.data is None
    assert result.attempts == 1
    assert result.http_status == 200
    assert fresh_server.hits[path] == 1
    if kind == "bigcl":
        assert result.error and "Content-Length" in result.error
    else:
        assert result.error and "grew past" in result.error
    assert wall < 5


def test_body_within_limit_is_accepted(fresh_server: ImageServer) -> None:
    result = fetch_one(fresh_server.url("/big/1"), max_bytes=2 << 20)
    assert result.status == SUCCESS, result.error
    assert result.data is not None and len(result.data) == 1 << 20


# -- redirects -------------------------------------------------------------------------------


@pytest.mark.parametrize("hops", [1, 3, MAX_REDIRECTS])
def test_redirects_are_followed(
    fresh_server: ImageServer, images: dict[str, bytes], hops: int
) -> None:
    result = fetch_one(fresh_server.url(f"/redirect/{hops}/{hops}.jpg"))
    assert result.status == SUCCESS, result.error
    assert result.final_url and result.final_url.endswith(f"/img/{hops}.jpg")
    assert result.data == images[f"{hops}.jpg"]
    assert result.attempts == 1
    assert fresh_server.hits[f"/img/{hops}.jpg"] == 1


@pytest.mark.parametrize("hops", [MAX_REDIRECTS + 1, 7])
def test_too_many_redirects_fail(fresh_server: ImageServer, hops: int) -> None:
    result = fetch_one(fresh_server.url(f"/redirect/{hops}/{hops}.jpg"), max_retry_attempts=3)
    assert result.status == FAILED_TO_DOWNLOAD
    assert result.error and "redirects" in result.error
    assert result.attempts == 1
    assert fresh_server.hits[f"/img/{hops}.jpg"] == 0
    assert sum(fresh_server.hits.values()) == MAX_REDIRECTS + 1


def test_redirect_loop_is_bounded(fresh_server: ImageServer) -> None:
    path = "/redirect-loop/x"
    result, wall = timed(lambda: fetch_one(fresh_server.url(path), max_retry_attempts=3))
    assert result.status == FAILED_TO_DOWNLOAD
    assert result.attempts >= 1
    assert 1 <= fresh_server.hits[path] <= (MAX_REDIRECTS + 1) * result.attempts
    assert wall < 5


def test_redirect_to_file_url_is_refused(fresh_server: ImageServer) -> None:
    path = "/redirect-file/x"
    result = fetch_one(fresh_server.url(path), max_retry_attempts=3)
    assert result.status == FAILED_TO_DOWNLOAD
    assert result.error and "non-http(s)" in result.error
    assert "file:///etc/passwd" in result.error
    assert result.data is None
    assert result.attempts == 1
    assert fresh_server.hits[path] == 1


# -- invalid URLs ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    ["", None, "ftp://x/y", "not a url", "http://", "   ", "file:///etc/passwd", "/img/1.jpg"],
)
def test_invalid_urls_make_no_request(fresh_server: ImageServer, url: str | None) -> None:
    result = fetch_one(url)
    assert result.status == INVALID_URL
    assert result.attempts == 0
    assert result.data is None
    assert result.error
    assert sum(fresh_server.hits.values()) == 0


# -- concurrency and rate limits -------------------------------------------------------------


def test_concurrency_is_bounded(fresh_server: ImageServer, images: dict[str, bytes]) -> None:
    urls = [fresh_server.url(f"/slow/0.05/{i % 60}.jpg") for i in range(200)]
    results, wall = timed(lambda: fetch_many(urls, concurrency=8))
    assert [r.status for r in results] == [SUCCESS] * 200
    assert all(r.data == images[f"{i % 60}.jpg"] for i, r in enumerate(results))
    assert 1 < fresh_server.max_in_flight <= 8
    assert sum(fresh_server.hits.values()) == 200
    assert wall < 15


def test_concurrency_defaults_to_config(fresh_server: ImageServer) -> None:
    urls = [fresh_server.url(f"/slow/0.05/{i % 60}.jpg") for i in range(40)]
    results = fetch_many(urls, concurrent_downloads=3)
    assert all(r.ok for r in results)
    assert 1 < fresh_server.max_in_flight <= 3


RATE = {
    "enable_rate_limiting": True,
    "adaptive_rate_limit": False,
    "rate_limit": 20,
    "rate_capacity": 5,
}


def test_rate_limit_per_host(fresh_server: ImageServer) -> None:
    single = [fresh_server.url(f"/img/{i}.jpg") for i in range(25)]
    results, single_wall = timed(lambda: fetch_many(single, **RATE))
    assert all(r.ok for r in results)
    # 5 at once, then one every 1/20 s: the 25th may start (25 - 5) / 20 = 1.0 s after the first.
    assert single_wall >= 0.85
    assert single_wall < 4

    spread = [fresh_server.url(f"/img/{i}.jpg", host=i % 2) for i in range(25)]
    results, spread_wall = timed(lambda: fetch_many(spread, **RATE))
    assert all(r.ok for r in results)
    # Each host has its own bucket: 13 requests on the busier one, (13 - 5) / 20 = 0.4 s.
    assert spread_wall >= 0.3
    assert spread_wall < single_wall - 0.3


def test_burst_within_capacity_is_not_delayed(fresh_server: ImageServer) -> None:
    urls = [fresh_server.url(f"/img/{i}.jpg") for i in range(5)]
    results, wall = timed(lambda: fetch_many(urls, **RATE))
    assert all(r.ok for r in results)
    assert wall < 0.8


# -- Retry-After -----------------------------------------------------------------------------


def test_parse_retry_after_seconds() -> None:
    assert parse_retry_after("5") == 5
    assert parse_retry_after(" 12 ") == 12
    assert parse_retry_after("0") == 0


def test_parse_retry_after_http_date() -> None:
    future = datetime.now(timezone.utc) + timedelta(seconds=90)
    value = parse_retry_after(email.utils.format_datetime(future, usegmt=True))
    assert value is not None and 60 < value <= 91
    past = datetime.now(timezone.utc) - timedelta(seconds=90)
    assert parse_retry_after(email.utils.format_datetime(past, usegmt=True)) == 0


@pytest.mark.parametrize("value", [None, "", "soon", "-5", "1.5e3x", "Mon, 99 Foo 20xx"])
def test_parse_retry_after_garbage(value: str | None) -> None:
    assert parse_retry_after(value) is None


# -- image inspection ------------------------------------------------------------------------


def _webp(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (10, 200, 30)).save(buffer, format="WEBP")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("data", "fmt", "extension", "size"),
    [
        (make_image(1, 50, 40, fmt="PNG"), "PNG", "png", (50, 40)),
        (make_image(2, 40, 30, fmt="GIF"), "GIF", "gif", (40, 30)),
        (make_image(3, 41, 31, fmt="JPEG", mode="CMYK"), "JPEG", "jpg", (41, 31)),
        (make_image(4, 33, 22, fmt="JPEG"), "JPEG", "jpg", (33, 22)),
        (_webp(37, 29), "WEBP", "webp", (37, 29)),
    ],
    ids=["png", "gif", "cmyk-jpeg", "jpeg", "webp"],
)
def test_inspect_image_formats(
    data: bytes, fmt: str, extension: str, size: tuple[int, int]
) -> None:
    info = inspect_image(data)
    assert info.format == fmt
    assert info.extension == extension
    assert (info.width, info.height) == size


def test_inspect_cmyk_mode() -> None:
    assert inspect_image(make_image(3, 20, 10, fmt="JPEG", mode="CMYK")).mode == "CMYK"


def test_to_png_of_gif() -> None:
    gif = make_image(5, 40, 30, fmt="GIF")
    png = to_png(gif)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    info = inspect_image(png)
    assert (info.format, info.extension, info.width, info.height) == ("PNG", "png", 40, 30)


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (b"", "empty body"),
        (b"<!DOCTYPE html><html></html>", "HTML"),
        (b'{"error": "nope"}', "JSON"),
        (b"\x00\x01\x02garbage", "bytes"),
        (make_image(6, 40, 30)[:20], ""),
    ],
    ids=["empty", "html", "json", "garbage", "truncated-header"],
)
def test_inspect_image_rejects(data: bytes, needle: str) -> None:
    with pytest.raises(ImageRejected) as caught:
        inspect_image(data)
    assert caught.value.status == NOT_AN_IMAGE
    assert needle in caught.value.message


# -- protocol-level misbehaviour: a raw socket server on 127.0.0.3 -------------------------------
def raw_ok(body: bytes, headers: bytes = b"") -> bytes:
    """A well-formed 200 response carrying `body`, as raw bytes."""
    return b"HTTP/1.1 200 OK\r\n%bContent-Length: %d\r\n\r\n%b" % (headers, len(body), body)


class RawServer:
    """Answers each request with the raw bytes mapped to its path (then closes), in a thread."""

    def __init__(self, answers: dict[str, bytes]) -> None:
        self.answers = answers
        self.hits: dict[str, int] = {}
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.3", 0))
        self._sock.listen(16)
        self._sock.settimeout(0.2)
        self.port = self._sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.3:{self.port}{path}"

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(2)
                request = b""
                while b"\r\n\r\n" not in request and len(request) < 65536:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    request += chunk
                path = request.split(b" ", 2)[1].decode("latin-1") if b" " in request else ""
                self.hits[path] = self.hits.get(path, 0) + 1
                conn.sendall(self.answers.get(path, b"HTTP/1.1 404 Not Found\r\n\r\n"))

    def __enter__(self) -> RawServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()


def test_malformed_responses_record_no_http_status() -> None:
    """aiohttp's parser answers a broken response with its own 400; that is not the server's."""
    answers = {
        "/negative-length": b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\nabc",
        "/garbage": b"HELLO THERE\r\n\r\n",
        "/bad-chunk": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n",
    }
    with RawServer(answers) as raw:
        results = fetch_many([raw.url(path) for path in answers], max_retry_attempts=1)
        for path, result in zip(answers, results, strict=True):
            assert result.status == FAILED_TO_DOWNLOAD, (path, result)
            assert result.http_status is None, (path, result)
            assert result.error.startswith("malformed response"), (path, result.error)
            assert raw.hits[path] == 2, (path, raw.hits)


def test_a_server_that_answers_garbage_every_time_gets_one_retry() -> None:
    """A malformed answer is likely the server's habit: one retry tells a glitch from it, more
    only load the server (it was retried max_retry_attempts times)."""
    answers = {
        "/garbage": b"HELLO THERE\r\n\r\n",
        "/huge-headers": b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 40000 + b"\r\n\r\n",
        "/many-headers": b"HTTP/1.1 200 OK\r\n" + b"X-A: b\r\n" * 200 + b"\r\n",
    }
    with RawServer(answers) as raw:
        results = fetch_many([raw.url(path) for path in answers], max_retry_attempts=3)
        for path, result in zip(answers, results, strict=True):
            assert result.error.startswith("malformed response"), (path, result.error)
            assert (result.attempts, result.retryable) == (2, False), (path, result)
            assert raw.hits[path] == 2, (path, raw.hits)


def test_redirect_with_raw_latin1_bytes_is_percent_encoded(images: dict[str, bytes]) -> None:
    body = images["0.jpg"]
    answers = {
        "/start": b"HTTP/1.1 302 Found\r\nLocation: /caf\xe9.jpg\r\nContent-Length: 0\r\n\r\n",
        "/caf%E9.jpg": raw_ok(body, b"Content-Type: image/jpeg\r\n"),
    }
    with RawServer(answers) as raw:
        result = fetch_one(raw.url("/start"))
    assert result.status == SUCCESS, result
    assert result.data == body
    assert result.final_url.endswith("/caf%E9.jpg")


# -- networks ------------------------------------------------------------------------------------
def test_http_proxy_from_the_environment_is_used(
    fresh_server: ImageServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cluster compute nodes often reach the web only through the proxy that http_proxy /
    https_proxy name (curl, wget, pip and requests use it); FLOW-DC ignored it, so every URL
    failed to connect. Nothing listens on port 9: only the proxy (the test server, which
    answers absolute-form requests) can serve these URLs."""
    monkeypatch.setenv("HTTP_PROXY", fresh_server.url("").rstrip("/"))
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    urls = [f"http://127.0.0.1:9/img/{i}.jpg" for i in range(3)]
    source = tmp_path / "urls.parquet"
    pq.write_table(pa.table({"url": urls}), source)

    result = flowdc.download(input=str(source), output=str(tmp_path / "ds"), **QUICK_RUN)

    assert (result.total, result.successful) == (3, 3)
    assert flowdc.fetch(urls[0], timeout=5).status == "success"


def test_the_proxy_is_chosen_once_per_host_and_no_proxy_is_honoured(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Read once (aiohttp's trust_env read the environment and ~/.netrc on every request, in
    threads: 300 us an image); no_proxy hosts go direct; credentials go apart from the URL."""
    from yarl import URL

    from flowdc.shard.fetch.proxy import Proxies

    monkeypatch.setenv("HTTP_PROXY", "http://user:secret@127.0.0.9:3128")
    monkeypatch.setenv("NO_PROXY", "127.0.0.2,.example.org")
    proxies = Proxies()
    monkeypatch.delenv("HTTP_PROXY")  # read once: a later change is not seen
    chosen = proxies.for_url(URL("http://127.0.0.1/a.jpg"))
    assert chosen is not None
    assert (str(chosen[0]), chosen[1] and chosen[1].password) == ("http://127.0.0.9:3128", "secret")
    assert proxies.for_url(URL("http://127.0.0.2/a.jpg")) is None
    assert proxies.for_url(URL("http://img.example.org/a.jpg")) is None
    assert proxies.for_url(URL("https://127.0.0.1/a.jpg")) is None  # no https_proxy given
