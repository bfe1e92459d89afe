"""Redirects into private networks: which addresses are private, and the connector that checks
the address each connection really uses.

A public host named by a list must not be able to turn, by a redirect, into a request to the
machine's own loopback, its private network or the cloud's metadata service (169.254.169.254):
the request may do harm, and its answer would land in a dataset. The rule is the ipaddress
module's: an address that is not global (private, loopback, link-local, reserved, unspecified,
the shared 100.64/10) or that is multicast; IPv4 inside IPv6 (::ffff:a.b.c.d, 64:ff9b::a.b.c.d)
is judged as IPv4. A list's own URL may point anywhere (a lab's own server): a row whose first
connection went to a private address may redirect within private space.

The check looks at the peer address of the connection the connector hands over for each hop
after the first, before the request is written on it, so a name that resolves to a public
address for the first hop and to a private one for a later hop (DNS rebinding, or a name set up
to point inside) is caught whatever the resolver and its cache said. A redirect to a private
address literal is refused before any connection. Through a proxy the proxy resolves names, so
only address literals are checked there.

`FLOWDC_TREAT_AS_PUBLIC` (networks, comma-separated, read once per process; not an option) names
addresses to treat as public: the tests, which may use loopback only, make 127.0.0.2 stand for a
public host with it, and everything else takes the production path.
"""

from __future__ import annotations

import ipaddress
import os
from contextvars import ContextVar
from typing import Any

import aiohttp
from aiohttp.connector import Connection
from yarl import URL

from flowdc.core.errors import FetchFailure, FlowDCError
from flowdc.core.status import PRIVATE_REDIRECT

TREAT_AS_PUBLIC_ENV = "FLOWDC_TREAT_AS_PUBLIC"
KEEP_ADDRESSES = 65_536
_NAT64 = ipaddress.ip_network("64:ff9b::/96")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def treated_as_public(value: str | None = None) -> tuple[Network, ...]:
    """The networks FLOWDC_TREAT_AS_PUBLIC names (`value` instead, when given)."""
    text = os.environ.get(TREAT_AS_PUBLIC_ENV, "") if value is None else value
    try:
        return tuple(
            ipaddress.ip_network(part.strip(), strict=False)
            for part in text.split(",")
            if part.strip()
        )
    except ValueError as exc:
        raise FlowDCError(
            f"{TREAT_AS_PUBLIC_ENV}={text!r}: {exc}; give networks such as 127.0.0.2/32,10.1.0.0/16"
        ) from None


class AddressRule:
    """Whether an address is private; the answers are remembered per address text."""

    def __init__(self, public: tuple[Network, ...] = ()) -> None:
        self.public = public
        self._known: dict[str, bool | None] = {}

    def literal_is_private(self, host: str | None) -> bool | None:
        """For an address literal (IPv6 with or without brackets), whether it is private; None
        for a host name."""
        if host is None:
            return None
        known = self._known.get(host, ...)
        if known is not ...:
            return known  # type: ignore[return-value]
        try:
            address = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            private = None
        else:
            private = self._private(address)
        if len(self._known) >= KEEP_ADDRESSES:
            self._known.clear()
        self._known[host] = private
        return private

    def _private(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        if any(address in network for network in self.public):
            return False
        if isinstance(address, ipaddress.IPv6Address):
            if address.ipv4_mapped is not None:
                return self._private(address.ipv4_mapped)
            if address in _NAT64:
                return self._private(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
        return not address.is_global or address.is_multicast


class Hops:
    """One attempt's redirect chain, as the connector and the redirect code see it."""

    __slots__ = ("first_peer", "protect", "redirects", "rule", "status", "url")

    def __init__(self, rule: AddressRule, url: URL) -> None:
        self.rule = rule
        self.url = url
        self.redirects = 0
        self.first_peer: Any = None  # the first hop's transport (its peer is read if it redirects)
        self.protect: bool | None = None
        """The first hop went to a public address: no later hop may go to a private one."""
        self.status: int | None = None  # the last redirect's HTTP status

    def redirect(self, target: URL, status: int) -> None:
        """Before the next hop: refuse a private address literal after a public first hop."""
        self.redirects += 1
        self.status = status
        if self.protect is None:
            self.protect = not self._first_hop_private()
        if self.protect and self.rule.literal_is_private(target.raw_host):
            raise self.refusal(target.raw_host or "")

    def connected(self, connection: Connection, proxied: bool) -> None:
        """A hop's connection, before the request is written on it."""
        if not self.redirects:
            if not proxied:
                self.first_peer = connection.transport
            return
        if not self.protect or proxied:
            return
        peer = _peer(connection.transport)
        if peer is None or self.rule.literal_is_private(peer) is not False:
            connection.close()
            raise self.refusal(peer or "an unknown address")

    def _first_hop_private(self) -> bool:
        peer = _peer(self.first_peer) if self.first_peer is not None else None
        return bool(self.rule.literal_is_private(peer or self.url.raw_host))

    def refusal(self, address: str) -> FetchFailure:
        return FetchFailure(
            PRIVATE_REDIRECT,
            f"redirect from a public address to the private address {address} refused "
            f"(--allow_private_redirects allows it)",
            False,
            http_status=self.status,
        )


CURRENT_HOPS: ContextVar[Hops | None] = ContextVar("flowdc_hops", default=None)
"""The redirect chain the running task is following (None: no check)."""


def _peer(transport: Any) -> str | None:
    peer = transport.get_extra_info("peername") if transport is not None else None
    return peer[0] if isinstance(peer, tuple) and peer else None


class CheckedConnector(aiohttp.TCPConnector):
    """aiohttp's connector; the running attempt's Hops see each connection before it is used."""

    async def connect(self, req: Any, traces: Any, timeout: Any) -> Connection:
        connection = await super().connect(req, traces, timeout)
        hops = CURRENT_HOPS.get()
        if hops is not None:
            hops.connected(connection, req.proxy is not None)
        return connection
