"""Name lookups that remember failures too.

aiohttp's connector caches the addresses a name resolved to (`ttl_dns_cache`) and makes
concurrent lookups of one name share one query, but it asks again for every connection to a name
that did not resolve. A list naming a dead museum domain 100,000 times would ask the resolver
100,000 times; this asks once per `negative_ttl` and answers the rest from memory with the same
error.
"""

from __future__ import annotations

import socket
import time
from collections import OrderedDict

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

KEEP_FAILURES = 65_536
"""Failed names remembered at most (oldest forgotten first)."""


class CachingResolver(AbstractResolver):
    """Wraps a resolver (aiohttp's default unless given); failures are kept `negative_ttl` s."""

    def __init__(self, inner: AbstractResolver | None = None, negative_ttl: float = 60.0) -> None:
        self.inner = inner if inner is not None else DefaultResolver()
        self.negative_ttl = negative_ttl
        self.lookups = 0
        """Queries passed on to the inner resolver (for tests and stats)."""
        self._failures: OrderedDict[tuple[str, int, int], tuple[float, OSError]] = OrderedDict()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        key = (host, port, int(family))
        failed = self._failures.get(key)
        if failed is not None:
            until, error = failed
            if time.monotonic() < until:
                raise type(error)(*error.args)
            del self._failures[key]
        self.lookups += 1
        try:
            return await self.inner.resolve(host, port, family)
        except OSError as error:
            self._failures[key] = (time.monotonic() + self.negative_ttl, error)
            if len(self._failures) > KEEP_FAILURES:
                self._failures.popitem(last=False)
            raise

    async def close(self) -> None:
        await self.inner.close()
