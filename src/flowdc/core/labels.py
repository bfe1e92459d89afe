"""Labels as folder names: safe on every filesystem, distinct, and recorded.

A label that is already a safe name keeps it. Any other label becomes a cleaned name plus a short
hash of the original, so two labels never share a folder, also on case-insensitive filesystems.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

MAX_NAME_BYTES = 200  # below the 255-byte limit of common filesystems, room left for suffixes
EMPTY_LABEL_FOLDER = "_empty_label"

_UNSAFE_CHARS = re.compile(r'[\x00-\x1f\x7f-\x9f<>:"/\\|?*]')
_WINDOWS_RESERVED = {
    "con",
    "prn",
    "aux",
    "nul",
    "conin$",
    "conout$",
    *(f"{port}{digit}" for port in ("com", "lpt") for digit in "123456789\u00b9\u00b2\u00b3"),
}


# Hugging Face `datasets` reads a folder as a split when a word of its name (split on these
# characters) is a split keyword, case-sensitively; such words get a capital first letter.
_SPLIT_WORD_SEPARATORS = re.compile(r"([-._ 0-9]+)")
_SPLIT_KEYWORDS = {
    "train",
    "training",
    "validation",
    "valid",
    "dev",
    "val",
    "test",
    "testing",
    "eval",
    "evaluation",
}


# Names FLOW-DC itself writes at the output's root, and names Hugging Face reads as metadata.
_OWN_FILES = re.compile(
    r"^(\d{5,}(\.tar|\.parquet|_stats\.json)|labels\.json|overview\.json|croissant\.json|report\.html|"
    r"metadata\..*)$",
    re.IGNORECASE,
)


def _split_keywords_capitalized(name: str) -> str:
    pieces = _SPLIT_WORD_SEPARATORS.split(name)
    return "".join(p.capitalize() if p in _SPLIT_KEYWORDS else p for p in pieces)


def _short_hash(label: str) -> str:
    return hashlib.sha256(label.encode("utf-8", "surrogatepass")).hexdigest()[:8]


def _truncate_utf8(text: str, max_bytes: int) -> str:
    encoded = text.encode("utf-8", "surrogatepass")
    if len(encoded) <= max_bytes:
        return text
    return encoded[:max_bytes].decode("utf-8", "ignore")


def clean_name(label: str) -> str:
    """The label with everything unsafe for a folder name replaced (may still need a hash)."""
    name = unicodedata.normalize("NFC", label)
    name = _UNSAFE_CHARS.sub("_", name)
    name = name.strip().rstrip(".")
    # Hidden folders (.x) and __x are skipped by Hugging Face datasets; neither is a class there.
    name = name.lstrip(".")
    if name.startswith("__"):
        name = "_" + name.lstrip("_")
    name = _split_keywords_capitalized(name)
    if _OWN_FILES.match(name):
        name = "_" + name
    if name.split(".")[0].rstrip(" ").lower() in _WINDOWS_RESERVED:
        name = "_" + name
    return _truncate_utf8(name, MAX_NAME_BYTES)


def is_safe_as_is(label: str) -> bool:
    return bool(label) and clean_name(label) == label


def folder_names(labels: list[str]) -> dict[str, str]:
    """Map each label to a distinct safe folder name (distinct even when compared case-folded)."""
    mapping: dict[str, str] = {}
    taken: set[str] = set()
    # Labels that are safe as they are claim their own names first, so they never change.
    ordered = sorted(set(labels), key=lambda label: (not is_safe_as_is(label), label))
    for label in ordered:
        if not label:
            candidate = EMPTY_LABEL_FOLDER
        elif is_safe_as_is(label):
            candidate = label
        else:
            base = clean_name(label) or "_label"
            candidate = f"{base}_{_short_hash(label)}"
        name = candidate
        counter = 1
        while name.casefold() in taken:
            counter += 1
            name = f"{candidate}_{counter}"
        taken.add(name.casefold())
        mapping[label] = name
    return mapping
