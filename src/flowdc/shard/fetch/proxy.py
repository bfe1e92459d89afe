"""The proxy for a URL, from http_proxy / https_proxy / no_proxy, as curl and pip read them.

Cluster compute nodes often reach the web only through such a proxy. aiohttp's `trust_env` reads
the same variables, but on every request and in a thread (with a ~/.netrc lookup in another):
about 300 us and two thread hops per image, a third of a download's CPU. Here the environment is
read once and the answer kept per scheme and host.
"""

from __future__ import annotations

import urllib.request

import aiohttp
from yarl import URL


class Proxies:
    def __init__(self) -> None:
        self.table = urllib.request.getproxies_environment()
        self._chosen: dict[tuple[str, str], tuple[URL, aiohttp.BasicAuth | None] | None] = {}

    def for_url(self, url: URL) -> tuple[URL, aiohttp.BasicAuth | None] | None:
        """(proxy URL without credentials, its credentials) for `url`, or None to go direct."""
        if not self.table:
            return None
        key = (url.scheme, url.host or "")
        if key not in self._chosen:
            self._chosen[key] = self._choose(*key)
        return self._chosen[key]

    def _choose(self, scheme: str, host: str) -> tuple[URL, aiohttp.BasicAuth | None] | None:
        address = self.table.get(scheme)
        if not address or urllib.request.proxy_bypass_environment(host, self.table):
            return None
        proxy = URL(address if "://" in address else f"http://{address}")
        return proxy.with_user(None), aiohttp.BasicAuth.from_url(proxy)
