"""A Darwin Core Archive's descriptor, meta.xml: which file is the core (occurrences), which is
the multimedia extension (GBIF's or Audubon Core's), how each file is written (delimiter, line
end, quoting, header lines, encoding) and which column holds which term."""

from __future__ import annotations

from dataclasses import dataclass, field

from flowdc.core.errors import FlowDCError

META = "meta.xml"
MULTIMEDIA_ROW_TYPES = (
    "http://rs.gbif.org/terms/1.0/Multimedia",
    "http://rs.tdwg.org/ac/terms/Multimedia",
)
URL_TERMS = ("accessURI", "identifier")


def local_term(term: str) -> str:
    return term.rstrip("/").rsplit("/", 1)[-1].rsplit("#", 1)[-1].rsplit("}", 1)[-1]


def _unescape(value: str) -> str:
    return value.replace("\\t", "\t").replace("\\r", "\r").replace("\\n", "\n")


@dataclass
class FileSpec:
    """One data file of the archive as meta.xml describes it."""

    location: str
    delimiter: str
    line_end: str
    quote: str
    header_lines: int
    encoding: str
    id_index: int | None
    fields: dict[str, int] = field(default_factory=dict)  # local term name -> column index
    defaults: dict[str, str] = field(default_factory=dict)  # local term name -> default value

    def terms(self) -> list[str]:
        return list(dict.fromkeys([*self.fields, *self.defaults]))


def _file_spec(element: object, kind: str, where: str) -> FileSpec:
    attrib = element.attrib  # type: ignore[attr-defined]
    children = {local_term(child.tag): child for child in element}  # type: ignore[attr-defined]
    files = children.get("files")
    location = None
    if files is not None:
        location = next(
            (c.text.strip() for c in files if local_term(c.tag) == "location" and c.text), None
        )
    if not location:
        raise FlowDCError(f"{where}: the {kind} names no file (<files><location>); fix meta.xml")
    id_element = children.get("id" if kind == "core" else "coreid")
    id_index = id_element.attrib.get("index") if id_element is not None else None
    spec = FileSpec(
        location=location,
        delimiter=_unescape(attrib.get("fieldsTerminatedBy", ",")) or ",",
        line_end=_unescape(attrib.get("linesTerminatedBy", "\n")) or "\n",
        quote=_unescape(attrib.get("fieldsEnclosedBy", "")),
        header_lines=int(attrib.get("ignoreHeaderLines", "0") or 0),
        encoding=attrib.get("encoding", "UTF-8") or "UTF-8",
        id_index=int(id_index) if id_index not in (None, "") else None,
    )
    for child in element:  # type: ignore[attr-defined]
        if local_term(child.tag) != "field" or not child.attrib.get("term"):
            continue
        name = local_term(child.attrib["term"])
        index = child.attrib.get("index")
        if index not in (None, ""):
            spec.fields.setdefault(name, int(index))
        if child.attrib.get("default") is not None:
            spec.defaults.setdefault(name, child.attrib["default"])
    return spec


def parse_meta(data: bytes, where: str) -> tuple[FileSpec, FileSpec]:
    """The core's and the multimedia extension's specs, or a one-line error naming the fix."""
    from defusedxml.ElementTree import fromstring

    try:
        root = fromstring(data)
    except Exception as exc:  # ParseError and defusedxml's refusals
        raise FlowDCError(f"{where} is not usable XML: {exc}; fix or replace it") from None
    core = next((e for e in root if local_term(e.tag) == "core"), None)
    if core is None:
        raise FlowDCError(f"{where} has no <core>; it is not a Darwin Core Archive descriptor")
    extensions = [e for e in root if local_term(e.tag) == "extension"]
    media = next((e for e in extensions if e.attrib.get("rowType") in MULTIMEDIA_ROW_TYPES), None)
    if media is None:
        found = ", ".join(e.attrib.get("rowType", "?") for e in extensions) or "none"
        raise FlowDCError(
            f"{where} has no multimedia extension (extensions: {found}); ask GBIF for a "
            f"download in DWCA format of occurrences with media"
        )
    core_spec = _file_spec(core, "core", where)
    media_spec = _file_spec(media, "extension", where)
    if core_spec.id_index is None or media_spec.id_index is None:
        raise FlowDCError(
            f"{where}: the core needs <id index> and the multimedia extension <coreid index> "
            f"to join images to their occurrences; fix meta.xml"
        )
    if not any(term in media_spec.terms() for term in URL_TERMS):
        raise FlowDCError(
            f"{where}: the multimedia extension has no identifier (or ac:accessURI) column "
            f"holding the image URLs"
        )
    return core_spec, media_spec
