"""Which format an input file is: from `--input_format`, else its extensions; gzip from the
extension or the first bytes; and what a binary table misnamed as text really is."""

from __future__ import annotations

from pathlib import Path

from flowdc.core.errors import FlowDCError

EXTENSIONS = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".txt": "txt",
    ".json": "json",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".xml": "xml",
    ".xlsx": "xlsx",
    ".xlsm": "xlsx",
    ".xls": "xls",
    ".zip": "dwca",
}


TEXT_FORMATS = {"csv", "tsv", "txt", "json", "jsonl", "xml"}


# the first bytes of binary tables, to say what a misnamed one is: (what, extension)
_MAGIC = {
    b"PAR1": ("a parquet", ".parquet"),
    b"PK\x03\x04": ("an Excel (.xlsx) or zip", ".xlsx (or .zip for a Darwin Core Archive)"),
    b"\xd0\xcf\x11\xe0": ("an old Excel (.xls)", ".xls"),
}


def detect_format(path: Path, declared: str | None) -> tuple[str, bool]:
    """Return (format, gzipped) from the declared format or the file's extensions."""
    suffixes = [s.lower() for s in path.suffixes]
    gzipped = bool(suffixes) and suffixes[-1] in (".gz", ".gzip")
    if gzipped:
        suffixes = suffixes[:-1]
    if declared:
        fmt = declared
    elif suffixes and suffixes[-1] in EXTENSIONS:
        fmt = EXTENSIONS[suffixes[-1]]
    else:
        known = ", ".join(sorted(EXTENSIONS))
        raise FlowDCError(
            f"cannot tell the format of {path} from its extension (known: {known}); "
            f"set --input_format"
        )
    if gzipped and fmt not in TEXT_FORMATS:
        raise FlowDCError(f"{path}: gzip is supported for text formats only, not {fmt}")
    if not gzipped and _looks_gzipped(path) and fmt in TEXT_FORMATS:
        gzipped = True
    return fmt, gzipped


def binary_kind(path: Path) -> tuple[str, str] | None:
    """(what, extension) of a binary file misnamed as text, from its first bytes."""
    try:
        with open(path, "rb") as handle:
            start = handle.read(4)
    except OSError:
        return None
    return next((kind for magic, kind in _MAGIC.items() if start.startswith(magic)), None)


def _looks_gzipped(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(2) == b"\x1f\x8b"
    except OSError:
        return False
