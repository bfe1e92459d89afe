"""Hosts that die: the per-host circuit breaker and the DNS failure cache.

The breaker's arithmetic on a fake clock; then real loopback servers: a host that takes
connections and never answers beside a healthy one, a host that comes back after its cool-down,
names that do not resolve (through a table resolver, so no DNS server is ever asked), and a whole
`flowdc download` with its overview, report and --retry_failed.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aiohttp.abc import AbstractResolver

from flowdc.core.status import HOST_UNAVAILABLE, INVALID_URL, SUCCESS
from flowdc.shard.fetch.breaker import Breaker, BreakerSettings
from flowdc.shard.fetch.client import Fetcher
from flowdc.shard.fetch.http import FetchResult, parse_url
from flowdc.testserver import HostPolicy, HostsTable, ImageServer
from tests.conftest import run_cli
from tests.test_e2e import assert_ok, read_results, write_csv
from tests.test_fetch import with_fetcher

DEAD, ALIVE = "127.0.0.7", "127.0.0.8"
T = TypeVar("T")


# -- the breaker's arithmetic ------------------------------------------------------------------
def test_breaker_opens_after_the_threshold_in_a_row() -> None:
    breaker = Breaker(BreakerSettings(threshold=3, cooldown=10))
    assert not breaker.on_failure(0.0, 1.0, "timeout")
    assert not breaker.on_failure(0.0, 1.0, "timeout")
    breaker.on_answer()  # any answer breaks the run
    assert not breaker.on_failure(1.0, 2.0, "timeout")
    assert not breaker.on_failure(1.0, 2.0, "timeout")
    assert breaker.on_failure(1.0, 2.0, "refused")
    assert breaker.is_open(2.0) and breaker.is_open(11.9) and not breaker.probing(11.9)
    assert breaker.probing(12.0) and not breaker.is_open(12.0)
    assert "3 connection failures or timeouts in a row (last: refused)" in breaker.describe(5.0)
    assert "probed again in 7 s" in breaker.describe(5.0)


def test_a_host_never_answered_is_down_after_two_failed_connections() -> None:
    """Two connections not made (refused, or no SYN answer) to a host that never answered mark
    it down; once it has answered, the threshold holds again, and timeouts of requests that were
    connected count towards the threshold only."""
    breaker = Breaker(BreakerSettings(threshold=5, cooldown=10))
    assert not breaker.doubtful()
    assert not breaker.on_failure(0.0, 10.0, "no connection", no_connection=True)
    assert breaker.doubtful()  # one request at a time until it answers or is marked down
    assert breaker.on_failure(1.0, 11.0, "no connection", no_connection=True)
    answered = Breaker(BreakerSettings(threshold=5, cooldown=10))
    answered.on_answer()
    for index in range(4):
        assert not answered.on_failure(float(index), 10.0 + index, "refused", no_connection=True)
    assert not answered.doubtful()
    fresh = Breaker(BreakerSettings(threshold=5, cooldown=10))
    assert not fresh.on_failure(0.0, 30.0, "timeout")
    assert not fresh.on_failure(0.0, 30.0, "timeout")


def test_failures_of_requests_sent_before_it_opened_do_not_lengthen_the_cooldown() -> None:
    breaker = Breaker(BreakerSettings(threshold=2, cooldown=10))
    breaker.on_failure(0.0, 5.0, "timeout")
    assert breaker.on_failure(0.0, 5.0, "timeout")
    assert not breaker.on_failure(0.5, 6.0, "timeout")  # sent at 0.5, before it opened at 5
    assert breaker.reopen_at == 15.0


def test_a_failed_probe_doubles_the_cooldown_up_to_a_bound() -> None:
    breaker = Breaker(BreakerSettings(threshold=1, cooldown=10))
    assert breaker.on_failure(0.0, 0.0, "timeout")
    waits = []
    now = 0.0
    for _ in range(6):
        now = breaker.reopen_at
        assert breaker.probing(now)
        assert breaker.on_failure(now, now + 1, "timeout")  # the probe failed
        waits.append(breaker.reopen_at - (now + 1))
    assert waits == [20, 40, 80, 80, 80, 80]
    breaker.on_answer()
    assert not breaker.tripped and breaker.failures == 0


def test_an_unresolved_name_opens_at_once_and_zero_turns_it_off() -> None:
    assert Breaker(BreakerSettings(5, 10)).on_failure(0, 0, "no such name", at_once=True)
    off = Breaker(BreakerSettings(0, 10))
    assert not any(off.on_failure(0, 0, "timeout", at_once=True) for _ in range(50))
    assert not off.tripped


def test_host_names_dns_cannot_carry_are_invalid_urls() -> None:
    """aiohttp raises a bare UnicodeError on a 64-character label: it must not fail a shard."""
    assert parse_url("http://" + "a" * 64 + ".example/x.jpg") is None
    assert parse_url("http://" + "a" * 63 + ".example/x.jpg") is not None
    assert parse_url("http://" + ".".join(["abcdefgh"] * 30) + "/x.jpg") is None  # 269 chars
    assert parse_url("http://xn--a.test/x.jpg") is None  # broken punycode: .host raises
    assert parse_url("http://xn--/x.jpg") is None
    assert parse_url("http://127.0.0.1:8080/x.jpg") is not None
    assert parse_url("http://[::1]:8080/x.jpg") is not None


# -- against real servers ----------------------------------------------------------------------
@pytest.fixture
def dead_and_alive(images: dict[str, bytes]) -> Iterator[ImageServer]:
    """DEAD takes connections and reads requests but answers none (until told); ALIVE is well."""
    policies = {DEAD: HostPolicy(silent=True)}
    with ImageServer(images, hosts=(DEAD, ALIVE), policies=policies) as server:
        yield server


BREAKER_SETTINGS: dict[str, Any] = {
    "retry_backoff_sec": 0.05,
    "timeout": 1,
    "host_failure_threshold": 3,
    "host_cooldown": 30,
}


def with_breaker_fetcher(
    work: Callable[[Fetcher], Awaitable[T]],
    concurrency: int | None = None,
    resolver: AbstractResolver | None = None,
    **options: Any,
) -> T:
    """test_fetch's with_fetcher, on settings that make a dead host cost seconds, not minutes."""
    return with_fetcher(work, concurrency, resolver, **{**BREAKER_SETTINGS, **options})


async def fetch_urls(fetcher: Fetcher, urls: list[str]) -> list[FetchResult]:
    return list(await asyncio.gather(*(fetcher.fetch(url) for url in urls)))


def test_a_host_that_never_answers_costs_a_few_timeouts_not_hundreds(
    dead_and_alive: ImageServer,
) -> None:
    server = dead_and_alive
    dead = [server.url(f"/img/{i % 40}.jpg", host=0) for i in range(300)]
    alive = [server.url(f"/img/{i % 40}.jpg", host=1) for i in range(100)]

    async def work(fetcher: Fetcher) -> tuple[list[FetchResult], float, Breaker]:
        started = time.monotonic()
        results = await fetch_urls(fetcher, dead + alive)
        return results, time.monotonic() - started, fetcher.scheduler.hosts[DEAD].breaker

    results, seconds, breaker = with_breaker_fetcher(work, concurrency=32)
    assert [r.status for r in results[300:]] == [SUCCESS] * 100
    dead_results = results[:300]
    assert {r.status for r in dead_results} == {HOST_UNAVAILABLE}
    assert all(r.retryable for r in dead_results)
    assert "marked down after" in (dead_results[-1].error or "")
    assert "timeout after 1 s" in (dead_results[-1].error or "")
    # 300 URLs x 4 attempts x 1 s of timeout would be 1,200 s; the breaker opens after the
    # first few time out together
    assert seconds < 8, f"{seconds:.1f} s"
    assert server.hits_on(DEAD) <= 12
    assert breaker.tripped and breaker.times_opened == 1


def test_a_host_that_comes_back_after_its_cooldown_is_reopened(
    dead_and_alive: ImageServer,
) -> None:
    server = dead_and_alive
    urls = [server.url(f"/img/{i}.jpg", host=0) for i in range(20)]

    async def work(fetcher: Fetcher) -> None:
        first = await fetch_urls(fetcher, urls)
        assert {r.status for r in first} == {HOST_UNAVAILABLE}
        breaker = fetcher.scheduler.hosts[DEAD].breaker
        server.policies[DEAD].silent = False  # it comes back
        during = await fetch_urls(fetcher, urls[:5])  # still cooling: nothing is sent
        assert {r.status for r in during} == {HOST_UNAVAILABLE}
        hits = server.hits_on(DEAD)
        await asyncio.sleep(max(0.0, breaker.reopen_at - time.monotonic()) + 0.1)
        after = await fetch_urls(fetcher, urls)
        assert [r.status for r in after] == [SUCCESS] * 20
        assert not breaker.tripped
        assert server.hits_on(DEAD) - hits == 20  # the probe and the rest, nothing refused

    with_breaker_fetcher(work, concurrency=8, host_cooldown=1.5, host_failure_threshold=2)


def test_a_failed_probe_keeps_the_host_down_for_longer(dead_and_alive: ImageServer) -> None:
    server = dead_and_alive
    urls = [server.url(f"/img/{i}.jpg", host=0) for i in range(10)]

    async def work(fetcher: Fetcher) -> None:
        await fetch_urls(fetcher, urls)
        breaker = fetcher.scheduler.hosts[DEAD].breaker
        await asyncio.sleep(max(0.0, breaker.reopen_at - time.monotonic()) + 0.05)
        before = server.hits_on(DEAD)
        started = time.monotonic()
        again = await fetch_urls(fetcher, urls)
        assert {r.status for r in again} == {HOST_UNAVAILABLE}
        assert server.hits_on(DEAD) - before == 1  # one probe, then refusals
        assert time.monotonic() - started < 2.5  # the probe's timeout, not ten of them
        assert breaker.times_opened == 2
        assert breaker.reopen_at - breaker.opened_at == pytest.approx(1.0)

    with_breaker_fetcher(work, concurrency=8, host_cooldown=0.5, host_failure_threshold=2)


def test_a_name_that_does_not_resolve_is_looked_up_once(dead_and_alive: ImageServer) -> None:
    server = dead_and_alive
    port = server.ports[ALIVE]
    table = HostsTable({"museum.test": ALIVE})
    good = [f"http://museum.test:{port}/img/{i}.jpg" for i in range(30)]
    gone = [f"http://herbarium-gone.test:{port}/img/{i}.jpg" for i in range(200)]

    async def work(fetcher: Fetcher) -> tuple[list[FetchResult], float]:
        started = time.monotonic()
        return await fetch_urls(fetcher, gone + good), time.monotonic() - started

    def run(**options: Any) -> tuple[list[FetchResult], float]:
        return with_breaker_fetcher(work, concurrency=16, resolver=table, **options)

    results, seconds = run()
    assert [r.status for r in results[200:]] == [SUCCESS] * 30
    assert {r.status for r in results[:200]} == {HOST_UNAVAILABLE}
    assert "does not resolve" in (results[0].error or "")
    assert table.lookups["herbarium-gone.test"] == 1
    assert table.lookups["museum.test"] == 1
    assert seconds < 5

    # without the breaker each URL fails on its own, and still only one lookup is made
    table.lookups.clear()
    results, _ = run(host_failure_threshold=0, max_retry_attempts=1)
    assert {r.status for r in results[:200]} == {"failed_to_download"}
    assert all("does not resolve" in (r.error or "") for r in results[:200])
    assert table.lookups["herbarium-gone.test"] == 1


def test_an_overlong_host_name_fails_its_row_not_the_shard(dead_and_alive: ImageServer) -> None:
    bad = "http://" + "a" * 64 + ".test/x.jpg"
    urls = [bad, dead_and_alive.url("/img/1.jpg", host=1)]
    results = with_breaker_fetcher(lambda fetcher: fetch_urls(fetcher, urls))
    assert [r.status for r in results] == [INVALID_URL, SUCCESS]


def test_download_lists_hosts_down_and_retry_failed_takes_their_rows(
    dead_and_alive: ImageServer, tmp_path: Path
) -> None:
    """The whole command: the run ends soon after the healthy host's work, the overview and
    report name the dead host, and once it is back --retry_failed fetches its rows."""
    server = dead_and_alive
    rows = [{"url": server.url(f"/img/{i % 40}.jpg", host=0), "label": "d"} for i in range(240)]
    rows += [{"url": server.url(f"/img/{i % 40}.jpg", host=1), "label": "a"} for i in range(60)]
    input_path = write_csv(tmp_path / "in.csv", rows)
    output = tmp_path / "out"
    common = (
        "--input", str(input_path), "--output", str(output), "--label", "label",
        "--shard_size", "100", "--processes", "1", "--timeout", "1",
        "--host_failure_threshold", "3", "--no-progress", "--retry_backoff_sec", "0.05",
    )  # fmt: skip
    started = time.monotonic()
    assert_ok(run_cli("download", *common))
    seconds = time.monotonic() - started
    assert seconds < 40, f"{seconds:.1f} s"  # 240 URLs x 4 timeouts would be 960 s
    results = read_results(output)
    assert len(results) == 300
    by_status: dict[str, int] = {}
    for row in results:
        by_status[row["status"]] = by_status.get(row["status"], 0) + 1
    assert by_status == {SUCCESS: 60, HOST_UNAVAILABLE: 240}
    assert all(r["retryable"] for r in results if r["status"] == HOST_UNAVAILABLE)
    overview = json.loads((output / "overview.json").read_text())
    assert overview["hosts_down"][DEAD]["urls_unavailable"] == 240
    assert overview["hosts_down"][DEAD]["times_marked_down"] >= 1
    assert list(overview["hosts_down"]) == [DEAD]
    assert overview["per_host"][DEAD]["unavailable"] == 240
    report = (output / "report.html").read_text()
    assert "Hosts marked down" in report and DEAD in report
    first = run_cli("download", *common)  # finished: says it again, from the overview
    assert f"hosts marked down (no answer): {DEAD} (240 URLs)" in first.stdout
    assert "--retry_failed" in first.stdout

    server.policies[DEAD].silent = False
    done = run_cli("download", *common, "--retry_failed")
    assert_ok(done)
    assert "retrying 240 failed row(s)" in done.stderr
    results = read_results(output)
    assert len(results) == 300 and all(r["status"] == SUCCESS for r in results)
    overview = json.loads((output / "overview.json").read_text())
    assert overview["hosts_down"][DEAD]["urls_unavailable"] == 0  # the history stays


@pytest.fixture
def black_hole() -> Iterator[str]:
    """An address whose SYNs go unanswered: a listening socket that never accepts, its accept
    queue filled (Linux drops a SYN to a full queue); yields its host:port."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.9", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(3):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.9", port))  # in progress: the queue fills
        fillers.append(filler)
    time.sleep(0.2)
    probe = socket.socket()
    probe.settimeout(1.0)
    try:
        probe.connect(("127.0.0.9", port))
        pytest.skip("a full accept queue does not drop SYNs here: no black hole to test with")
    except OSError:
        pass
    finally:
        probe.close()
    try:
        yield f"127.0.0.9:{port}"
    finally:
        for sock in (*fillers, listener):
            sock.close()


def refused_address() -> str:
    """A loopback port nothing listens on: connections are refused."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.10", 0))
        port = sock.getsockname()[1]
    return f"127.0.0.10:{port}"


def test_a_black_hole_and_a_refusing_host_cost_seconds_with_the_defaults(
    dead_and_alive: ImageServer, black_hole: str
) -> None:
    """With the default timeout (30 s), threshold and cool-down: a host whose SYNs vanish is
    marked down after two connections that were not made within the connect timeout (10 s),
    a refusing host after two refusals, so both end in well under 30 s, their rows
    host_unavailable and retryable. Before, a black hole cost about 2 minutes per process."""
    refusing = refused_address()
    holes = [f"http://{black_hole}/img/{i}.jpg" for i in range(40)]
    refused = [f"http://{refusing}/img/{i}.jpg" for i in range(40)]
    alive = [dead_and_alive.url(f"/img/{i % 40}.jpg", host=1) for i in range(20)]

    async def work(fetcher: Fetcher) -> tuple[list[FetchResult], float]:
        started = time.monotonic()
        results = await fetch_urls(fetcher, holes + refused + alive)
        return results, time.monotonic() - started

    defaults = {"timeout": 30, "enable_rate_limiting": True, "retry_backoff_sec": 1}
    results, seconds = with_fetcher(work, 32, None, **defaults)
    assert [r.status for r in results[80:]] == [SUCCESS] * 20
    for result in results[:80]:
        assert result.status == HOST_UNAVAILABLE and result.retryable, result
    assert "no connection within 10 s" in (results[0].error or "")
    assert seconds < 20, f"{seconds:.1f} s"
