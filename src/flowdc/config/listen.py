"""Addresses an engine's manager listens on: 'HOST:PORT', 'tcp://HOST:PORT', ':PORT', 'PORT'."""

from __future__ import annotations

from dataclasses import dataclass

from flowdc.core.errors import FlowDCError

DEFAULT_PORT = 8786
"""Dask's scheduler port, the default in the examples."""


@dataclass
class ListenAddress:
    protocol: str
    host: str
    port: int


def parse_listen(text: str) -> ListenAddress:
    """'HOST:PORT', 'tcp://HOST:PORT', 'tls://HOST:PORT', ':PORT' or 'PORT'."""
    protocol, sep, rest = text.partition("://")
    if not sep:
        protocol, rest = "tcp", text
    host, colon, port = rest.rpartition(":")
    if not colon:
        host, port = "", rest
    host = host.strip("[]") or "127.0.0.1"
    if protocol not in ("tcp", "tls") or not port.isdigit() or int(port) > 65535:
        raise FlowDCError(
            f"bad --listen {text!r}: give HOST:PORT, e.g. 127.0.0.1:{DEFAULT_PORT} (or "
            f"tls://HOST:PORT with Dask's TLS settings, see docs/distributed.md)"
        )
    return ListenAddress(protocol, host, int(port))
