"""URLs as they are sent: the list's bytes, unchanged.

yarl normalises what it parses: it decodes `%2F` in a query, `%2B` and `%7E` in a path, and
re-encodes the rest its own way. A presigned object-storage URL's signature covers the bytes the
signer saw, and some IIIF image servers read `%2F` in an identifier as part of the name, so a
normalised URL is a different URL to them. Here only what no URL may hold (a space, a raw
non-ASCII character, `"<>\\^`{|}`, a control character, a `%` not followed by two hex digits) is
percent-encoded, as UTF-8 as browsers and curl do; a non-ASCII host name is IDNA-encoded; every
other byte goes out as written (`yarl.URL(..., encoded=True)`).
"""

from __future__ import annotations

import re
from urllib.parse import urljoin

from yarl import URL

_SPLIT = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*:)(//[^/?#]*)?(.*)", re.DOTALL)
"""scheme:, //authority (optional), then path, query and fragment."""
_URL_CHARACTERS = re.compile(r"[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]*")
"""Only characters a URL may hold as themselves (RFC 3986)."""
_STRAY_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_NOT_IN_URLS = re.compile(r"[^A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]|%(?![0-9A-Fa-f]{2})")
"""A character no URL holds as itself, or a `%` that starts no escape."""


def _escape(match: re.Match[str]) -> str:
    return "".join(f"%{byte:02X}" for byte in match.group().encode("utf-8", "surrogateescape"))


def as_sent(text: str) -> URL:
    """`text` as the URL to send: its valid characters untouched, the others percent-encoded.
    Raises ValueError when it is no URL at all."""
    if _URL_CHARACTERS.fullmatch(text) and ("%" not in text or not _STRAY_PERCENT.search(text)):
        return URL(text, encoded=True)  # the common case: nothing to encode (0.2 us to know)
    parts = _SPLIT.fullmatch(text)
    if parts is None:
        raise ValueError(f"not a URL: {text[:200]!r}")
    scheme, authority, rest = parts.groups()
    if authority and _NOT_IN_URLS.search(authority) is not None:
        # a host name in Unicode: IDNA, as yarl encodes hosts (it raises on what no host is)
        authority = "//" + URL(f"{scheme}{authority}").raw_authority
    return URL(f"{scheme}{authority or ''}{_NOT_IN_URLS.sub(_escape, rest)}", encoded=True)


def join_location(current: URL, location: str) -> URL:
    """The URL a Location header points at, relative to `current`, sent as written (yarl's own
    join decodes `%2F` in the base's path). Raw non-UTF-8 bytes in the header (aiohttp keeps them
    as surrogates) are percent-encoded as a browser would, not dropped."""
    return as_sent(urljoin(str(current), location))
