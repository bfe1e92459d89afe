"""Redirects from public hosts into private networks are refused (fetch/addresses.py).

The tests may use loopback only, so FLOWDC_TREAT_AS_PUBLIC makes 127.0.0.2 stand for a public
host; 127.0.0.3 stays what it is, a private (loopback) address. The rule itself is the
production one.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

import flowdc
from flowdc.core.status import PRIVATE_REDIRECT, SUCCESS
from flowdc.shard.fetch.addresses import TREAT_AS_PUBLIC_ENV, AddressRule, treated_as_public
from flowdc.shard.fetch.client import Fetcher
from flowdc.shard.fetch.http import FetchResult
from flowdc.testserver import HostsTable, ImageServer
from tests.conftest import QUICK_RUN
from tests.test_fetch import with_fetcher

PUBLIC, PRIVATE = "127.0.0.2", "127.0.0.3"


@pytest.fixture(scope="module")
def hosts(images: dict[str, bytes]) -> Iterator[ImageServer]:
    with ImageServer(images, hosts=(PUBLIC, PRIVATE)) as running:
        yield running


@pytest.fixture
def web(hosts: ImageServer, monkeypatch: pytest.MonkeyPatch) -> ImageServer:
    monkeypatch.setenv(TREAT_AS_PUBLIC_ENV, f"{PUBLIC}/32")
    hosts.reset_counters()
    return hosts


def goto(server: ImageServer, target: str, host: int = 0) -> str:
    return server.url(f"goto?to={quote(target, safe='')}", host)


def fetch(url: str, resolver: AbstractResolver | None = None, **options: object) -> FetchResult:
    return with_fetcher(lambda fetcher: fetcher.fetch(url), resolver=resolver, **options)


def test_a_public_host_may_not_redirect_to_a_private_address(web: ImageServer) -> None:
    result = fetch(goto(web, web.url("img/0.jpg", 1)))
    assert result.status == PRIVATE_REDIRECT, result
    assert (result.retryable, result.http_status, result.attempts) == (False, 302, 1)
    assert PRIVATE in (result.error or "")
    assert web.hits_on(PRIVATE) == 0  # refused before any request went there


def test_a_name_that_resolves_to_a_private_address_after_a_public_hop_is_refused(
    web: ImageServer,
) -> None:
    """The address the connection uses is checked, not the URL: a name is no literal."""
    port_public, port_private = web.ports[PUBLIC], web.ports[PRIVATE]
    names = HostsTable({"cdn.test": PUBLIC, "inside.test": PRIVATE})
    start = f"http://cdn.test:{port_public}/goto?to="

    refused = fetch(start + quote(f"http://inside.test:{port_private}/img/1.jpg"), names)
    followed = fetch(start + quote(f"http://cdn.test:{port_public}/img/1.jpg"), names)

    assert refused.status == PRIVATE_REDIRECT, refused
    assert web.hits_on(PRIVATE) == 0  # the connection was closed before the request was sent
    assert followed.status == SUCCESS, followed


class Rebinding(AbstractResolver):
    """Answers each name with the next address of its list: DNS rebinding."""

    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers = answers

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        address = self.answers[host].pop(0)
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


def test_a_name_rebound_to_a_private_address_between_hops_is_refused(web: ImageServer) -> None:
    port_public, port_private = web.ports[PUBLIC], web.ports[PRIVATE]
    resolver = Rebinding({"rebind.test": [PUBLIC, PRIVATE]})
    target = quote(f"http://rebind.test:{port_private}/img/2.jpg")
    result = fetch(f"http://rebind.test:{port_public}/goto?to={target}", resolver)
    assert result.status == PRIVATE_REDIRECT, result
    assert web.hits_on(PRIVATE) == 0


def test_a_list_url_on_a_private_address_still_downloads(web: ImageServer) -> None:
    """A lab's own server: the list points inside, and may redirect within private space."""
    names = HostsTable({"inside.test": PRIVATE})
    port_private = web.ports[PRIVATE]
    direct = fetch(web.url("img/3.jpg", 1))
    redirected = fetch(goto(web, f"http://inside.test:{port_private}/img/3.jpg", 1), names)
    by_name = fetch(
        f"http://inside.test:{port_private}/goto?to={quote(web.url('img/3.jpg', 1))}", names
    )
    to_public = fetch(goto(web, web.url("img/3.jpg", 0), 1))
    statuses = [direct.status, redirected.status, by_name.status, to_public.status]
    assert statuses == [SUCCESS] * 4


def test_allow_private_redirects_lets_it_through(web: ImageServer) -> None:
    result = fetch(goto(web, web.url("img/4.jpg", 1)), allow_private_redirects=True)
    assert result.status == SUCCESS, result
    assert web.hits_on(PRIVATE) == 1


def test_a_download_records_the_refusal(web: ImageServer, tmp_path: Path) -> None:
    """Through the CLI's path: worker processes read FLOWDC_TREAT_AS_PUBLIC too."""
    urls = [goto(web, web.url("img/5.jpg", 1)), web.url("img/6.jpg", 0)]
    source = tmp_path / "urls.parquet"
    pq.write_table(pa.table({"url": urls}), source)
    result = flowdc.download(input=str(source), output=str(tmp_path / "ds"), **QUICK_RUN)
    rows = result.results().sort_by("key").to_pylist()
    assert [row["status"] for row in rows] == [PRIVATE_REDIRECT, SUCCESS]
    assert rows[0]["url"] == urls[0]
    assert web.hits_on(PRIVATE) == 0


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.255.0.9",
        "::1",
        "10.1.2.3",
        "172.16.0.1",
        "172.31.255.254",
        "192.168.1.1",
        "169.254.169.254",  # the cloud metadata service
        "169.254.0.1",
        "100.100.100.200",  # shared address space (a cloud's metadata service lives there)
        "fc00::1",
        "fd12:3456::1",
        "fe80::1",
        "0.0.0.0",
        "::",
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
        "224.0.0.1",
        "[::1]",
    ],
)
def test_private_addresses(address: str) -> None:
    """The classification alone (nothing is sent to these addresses)."""
    assert AddressRule().literal_is_private(address) is True


@pytest.mark.parametrize("address", ["8.8.8.8", "151.101.1.69", "2606:4700::1111", "1.1.1.1"])
def test_public_addresses(address: str) -> None:
    assert AddressRule().literal_is_private(address) is False


def test_names_are_no_literals_and_treated_as_public_is_read() -> None:
    assert AddressRule().literal_is_private("example.org") is None
    public = treated_as_public("127.0.0.2/32, 10.9.0.0/16")
    assert AddressRule(public).literal_is_private("127.0.0.2") is False
    assert AddressRule(public).literal_is_private("127.0.0.3") is True
    assert AddressRule(public).literal_is_private("10.9.8.7") is False
    with pytest.raises(flowdc.FlowDCError, match=TREAT_AS_PUBLIC_ENV):
        treated_as_public("not-a-network")


def test_the_check_costs_no_lookup_per_request(web: ImageServer) -> None:
    """The environment is read once per client, and a plain request classifies nothing."""

    async def work(fetcher: Fetcher) -> list[FetchResult]:
        rule = fetcher.http.addresses
        assert rule is not None
        answers = await asyncio.gather(*(fetcher.fetch(web.url(f"img/{i}.jpg")) for i in range(5)))
        assert rule._known == {}
        return list(answers)

    assert {result.status for result in with_fetcher(work)} == {SUCCESS}
