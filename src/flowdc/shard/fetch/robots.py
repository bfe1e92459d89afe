"""X-Robots-Tag opt-outs: a site may say its images are not for AI training or indexing."""

from __future__ import annotations

from collections.abc import Iterable

OPT_OUT_DIRECTIVES = frozenset({"noai", "noimageai", "noindex", "noimageindex", "none"})
AGENT_TOKEN = "flowdc"
_VALUED_DIRECTIVES = frozenset(
    {"unavailable_after", "max-snippet", "max-image-preview", "max-video-preview"}
)


def opt_out_directive(values: Iterable[str], agent: str = AGENT_TOKEN) -> str | None:
    """The first opt-out directive that applies to us, or None.

    Each header value is a comma-separated list of directives, optionally prefixed by the name
    of the crawler it is meant for (`otherbot: noindex` is not meant for us; `flowdc: noai` and
    an unprefixed `noai` are). `none` means `noindex, nofollow`.
    """
    for value in values:
        target: str | None = None
        for part in value.split(","):
            token = part.strip().lower()
            if ":" in token:
                name, _, rest = token.partition(":")
                if name.strip() in _VALUED_DIRECTIVES:
                    continue
                target, token = name.strip(), rest.strip()
            if target not in (None, "*", agent.lower()):
                continue
            if token in OPT_OUT_DIRECTIVES:
                return token
    return None
