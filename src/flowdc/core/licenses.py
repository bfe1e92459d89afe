"""Image licences: one canonical form for the many ways a licence is written, and the filter.

GBIF and its publishers write the same licence as `http://creativecommons.org/licenses/by-nc/4.0/`,
`CC_BY_NC_4_0`, `CC-BY-NC 4.0` or `Creative Commons Attribution-NonCommercial 4.0`. All of them
become the licence's canonical URL (https://creativecommons.org/...), so counts and filters see
one licence. A text that is no Creative Commons licence stays as written (trimmed).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from flowdc.core.errors import FlowDCError

NO_LICENSE = "(none)"
_CC = "https://creativecommons.org"
_URL = re.compile(r"creativecommons\.org/(licenses|publicdomain)/([a-z-]+)(?:/(\d+(?:\.\d+)?))?")
_WORDS = {
    "attribution": "by",
    "noncommercial": "nc",
    "non-commercial": "nc",
    "sharealike": "sa",
    "share-alike": "sa",
    "noderivatives": "nd",
    "noderivs": "nd",
    "no-derivatives": "nd",
}
_FAMILIES = ("by", "by-sa", "by-nd", "by-nc", "by-nc-sa", "by-nc-nd")


@dataclass(frozen=True)
class License:
    """A recognised licence: `family` (by, by-nc, ..., cc0, pdm) and `version` (4.0, or None)."""

    family: str
    version: str | None

    @property
    def url(self) -> str:
        if self.family == "cc0":
            return f"{_CC}/publicdomain/zero/{self.version or '1.0'}/"
        if self.family == "pdm":
            return f"{_CC}/publicdomain/mark/{self.version or '1.0'}/"
        return f"{_CC}/licenses/{self.family}/" + (f"{self.version}/" if self.version else "")

    @property
    def name(self) -> str:
        """The SPDX-like short name: CC-BY-NC-4.0, CC0-1.0, PDM-1.0."""
        if self.family == "cc0":
            return f"CC0-{self.version or '1.0'}"
        if self.family == "pdm":
            return f"PDM-{self.version or '1.0'}"
        return f"CC-{self.family.upper()}" + (f"-{self.version}" if self.version else "")


def _version(major: str | None, minor: str | None) -> str | None:
    if major is None:
        return None
    return f"{major}.{minor or '0'}"


def parse_license(text: str | None) -> License | None:
    """The Creative Commons licence (or public-domain tool) `text` names, or None."""
    if text is None:
        return None
    lowered = text.strip().lower()
    if not lowered:
        return None
    found = _URL.search(lowered)
    if found:
        kind, code, version = found.groups()
        if kind == "publicdomain":
            family = {"zero": "cc0", "mark": "pdm"}.get(code)
            return License(family, version or "1.0") if family else None
        code = _order(code)
        return License(code, version) if code in _FAMILIES else None
    compact = re.sub(r"[\s_]+", "-", lowered).strip("-")
    cc0 = re.fullmatch(r"cc-?(?:0|zero)(?:-v?1(?:[.-]0)?)?(?:-universal)?", compact)
    if cc0 or compact in ("public-domain-dedication", "publicdomainzero"):
        return License("cc0", "1.0")  # the only version there is
    if compact in ("pdm", "public-domain", "public-domain-mark") or re.fullmatch(
        r"pdm-?(\d)(?:[.-](\d))?", compact
    ):
        return License("pdm", "1.0")
    words = compact.replace("creative-commons-", "cc-").replace("-international", "")
    for word, code in _WORDS.items():
        words = words.replace(word, code)
    plain = re.fullmatch(r"(?:cc-)?(by(?:-(?:nc|sa|nd))*)(?:-?v?(\d)(?:[.-](\d))?)?", words)
    if plain:
        family = _order(plain.group(1))
        if family in _FAMILIES:
            return License(family, _version(plain.group(2), plain.group(3)))
    return None


def _order(code: str) -> str:
    """by-nd-nc and by-nc-nd are the same licence; CC writes by-nc-nd."""
    parts = code.split("-")
    return "-".join(sorted(parts, key=lambda part: ("by", "nc", "sa", "nd").index(part)))


def canonical(text: str | None) -> str:
    """The licence's canonical URL, the text as written when it is not one FLOW-DC knows, or
    NO_LICENSE for an empty cell."""
    if text is None or not text.strip():
        return NO_LICENSE
    known = parse_license(text)
    return known.url if known else " ".join(text.split())


def display_name(text: str) -> str:
    """A short name for a canonical licence (CC-BY-4.0), or the text itself."""
    known = parse_license(text)
    return known.name if known else text


class LicenseFilter:
    """--license_filter: the licences a row may have to be downloaded.

    An entry without a version (CC-BY) allows every version of that licence; CC-BY never
    allows CC-BY-NC. An entry that is no Creative Commons licence is matched as written,
    case-insensitively. A row without a licence is never allowed.
    """

    def __init__(self, entries: Iterable[str]) -> None:
        self.licenses: list[License] = []
        self.texts: set[str] = set()
        for entry in entries:
            known = parse_license(entry)
            if known is not None:
                self.licenses.append(known)
            elif entry.strip().lower().startswith("cc"):
                raise FlowDCError(
                    f"--license_filter: '{entry}' is not a Creative Commons licence FLOW-DC "
                    f"knows; write it as CC0, CC-BY, CC-BY-SA, CC-BY-NC, CC-BY-NC-SA, CC-BY-ND, "
                    f"CC-BY-NC-ND (a version such as CC-BY-4.0 is optional) or as a licence URL"
                )
            else:
                self.texts.add(" ".join(entry.split()).lower())
        if not self.licenses and not self.texts:
            raise FlowDCError("--license_filter is empty; give licences such as CC0,CC-BY")

    def allows(self, text: str | None) -> bool:
        if text is None or not text.strip():
            return False
        known = parse_license(text)
        if known is None:
            return " ".join(text.split()).lower() in self.texts
        return any(
            wanted.family == known.family and wanted.version in (None, known.version)
            for wanted in self.licenses
        )


def split_filter(value: str) -> list[str]:
    """`CC0,CC-BY` or `cc0 cc-by`: commas or spaces separate entries, except inside a licence
    written in words (`CC BY-NC 4.0` is one entry when commas are used)."""
    parts = re.split(r"[,;]", value) if "," in value or ";" in value else value.split()
    return [part.strip() for part in parts if part.strip()]
