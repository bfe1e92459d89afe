"""Darwin Core Archives (a GBIF download with media) read as a URL table.

`meta.xml` says which file is the core (occurrences), which is the multimedia extension
(GBIF's `http://rs.gbif.org/terms/1.0/Multimedia` or Audubon Core's
`http://rs.tdwg.org/ac/terms/Multimedia`), and which column holds which term. Each multimedia row
that is an image becomes one URL row, joined to its core row on the core id.

Bounded memory: the core is read once, and only the columns worth keeping (KEPT_CORE_TERMS, the
`--label` term, `--verify_hash`) go into an on-disk SQLite index; the multimedia file is then
streamed in batches, each joined to the index in one query. Nothing holds the whole archive.

Columns of the table: `url` (identifier, or ac:accessURI), `coreid` (the join key), the kept core
terms under their local names (`species`, `taxonKey`, ...), then the multimedia row's
`media_type`, `media_format`, `title`, `license`, `rightsHolder`, `creator`, `publisher`,
`references`. An empty `license`, `rightsHolder`, `publisher` or `references` in the multimedia row
is taken from the occurrence, which GBIF documents as applying to its media.
"""

from __future__ import annotations

import contextlib
import csv
import io
import shutil
import sqlite3
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from operator import itemgetter
from pathlib import Path
from typing import IO

import pyarrow as pa

from flowdc.core.errors import FlowDCError
from flowdc.planning.dwca_meta import META, URL_TERMS, FileSpec, parse_meta

BATCH_ROWS = 16_384  # media rows joined per query: small batches keep memory low
# Core terms every URL row keeps (those the archive has), besides the --label term: enough to
# name classes at any rank, cite the record and place it, without copying 200+ columns per image.
KEPT_CORE_TERMS = (
    "gbifID",
    "occurrenceID",
    "catalogNumber",
    "institutionCode",
    "basisOfRecord",
    "scientificName",
    "acceptedScientificName",
    "kingdom",
    "phylum",
    "class",
    "order",
    "family",
    "genus",
    "species",
    "taxonRank",
    "taxonKey",
    "speciesKey",
    "countryCode",
    "decimalLatitude",
    "decimalLongitude",
    "eventDate",
    "datasetKey",
)
# Multimedia columns (output name -> terms' local names, first non-empty wins) that travel with
# each image; Audubon Core names its licence UsageTerms, its rights holder Owner.
MEDIA_COLUMNS = {
    "media_type": ("type",),
    "media_format": ("format",),
    "title": ("title",),
    "license": ("license", "UsageTerms", "rights"),
    "rightsHolder": ("rightsHolder", "Owner"),
    "creator": ("creator",),
    "publisher": ("publisher",),
    "references": ("references", "furtherInformationURL"),
}
# Filled from the occurrence when the multimedia row leaves them empty.
FROM_OCCURRENCE = ("license", "rightsHolder", "publisher", "references")
_STILL_IMAGE = ("stillimage", "http://purl.org/dc/dcmitype/stillimage", "image")


def is_archive(path: Path) -> bool:
    """A folder with a meta.xml, or a .zip file: read as a Darwin Core Archive."""
    if path.is_dir():
        return (path / META).is_file()
    return path.suffix.lower() == ".zip"


class DwcArchive:
    """A Darwin Core Archive (zip or folder) as a stream of URL-table record batches."""

    def __init__(self, path: Path, wanted: Sequence[str] = ()) -> None:
        self.path = path
        self.notes: list[str] = []
        self._zip: zipfile.ZipFile | None = None
        self._prefix = ""
        if path.is_dir():
            if not (path / META).is_file():
                raise FlowDCError(
                    f"{path} has no {META}: it is not a Darwin Core Archive; give the folder "
                    f"that holds meta.xml, or a URL table file"
                )
            meta = (path / META).read_bytes()
        else:
            meta = self._open_zip()
        self.core, self.media = self._parse_meta(meta)
        core_terms = self.core.terms()
        media_terms = self.media.terms()
        self.media_extra = [
            name
            for name in wanted
            if name not in core_terms and name in media_terms and name not in self._fixed()
        ]
        missing = [
            name
            for name in wanted
            if name not in core_terms and name not in media_terms and name not in self._fixed()
        ]
        if missing:
            raise FlowDCError(
                f"'{missing[0]}' is not a term of {path}'s core ({self.core.location}) or "
                f"multimedia extension ({self.media.location}); the core has: "
                f"{', '.join(core_terms)}; set --label to one of them"
            )
        kept = [name for name in KEPT_CORE_TERMS if name in core_terms]
        kept += [name for name in wanted if name in core_terms and name not in kept]
        self.core_kept = [name for name in kept if name not in self._fixed()]
        self.core_fallback = [name for name in FROM_OCCURRENCE if name in core_terms]

    # -- meta.xml -----------------------------------------------------------------------------
    def _open_zip(self) -> bytes:
        try:
            self._zip = zipfile.ZipFile(self.path)
        except (zipfile.BadZipFile, OSError) as exc:
            raise FlowDCError(
                f"{self.path} is not a readable zip file ({exc}); give a Darwin Core Archive "
                f"(a GBIF download) or set --input_format"
            ) from None
        metas = sorted(
            (n for n in self._zip.namelist() if n.rsplit("/", 1)[-1] == META),
            key=lambda n: n.count("/"),
        )
        if not metas:
            raise FlowDCError(
                f"{self.path} holds no {META}: it is not a Darwin Core Archive; a GBIF download "
                f"in DWCA format has one (SIMPLE_CSV downloads are .csv: unzip them first)"
            )
        self._prefix = metas[0][: -len(META)]
        return self._zip.read(metas[0])

    def _parse_meta(self, data: bytes) -> tuple[FileSpec, FileSpec]:
        core_spec, media_spec = parse_meta(data, f"{self.path} ({META})")
        for spec in (core_spec, media_spec):
            self._check_file(spec)
        return core_spec, media_spec

    def _check_file(self, spec: FileSpec) -> None:
        if self._zip is not None:
            present = self._prefix + spec.location in self._zip.namelist()
        else:
            present = (self.path / spec.location).is_file()
        if not present:
            raise FlowDCError(
                f"{self.path}: meta.xml names {spec.location}, which the archive does not hold; "
                f"download the archive again (it may be cut short)"
            )

    @staticmethod
    def _fixed() -> tuple[str, ...]:
        return ("url", "coreid", *MEDIA_COLUMNS)

    # -- columns ------------------------------------------------------------------------------
    def column_names(self) -> list[str]:
        return ["url", "coreid", *self.core_kept, *self.media_extra, *MEDIA_COLUMNS]

    # -- reading ------------------------------------------------------------------------------
    def _open(self, spec: FileSpec) -> IO[bytes]:
        if self._zip is None:
            return open(self.path / spec.location, "rb")
        try:
            return self._zip.open(self._prefix + spec.location)
        except NotImplementedError as exc:  # GBIF zips its largest downloads with Deflate64
            raise FlowDCError(
                f"{self.path}: {spec.location} is compressed in a way Python cannot read ({exc}); "
                f"unzip the archive (unzip or 7-Zip) and give its folder as --input"
            ) from None

    def rows(self, spec: FileSpec) -> Iterator[list[str]]:
        """The file's data rows as lists of cells; blank lines are skipped.

        With no fieldsEnclosedBy (GBIF's tab files) a row is one line split on the delimiter,
        so a stray `"` in a field is just a character. Lines end at `\\n` only (a `\\r\\n`
        ending loses its `\\r`): a bare `\\r` inside a field does not cut the row.
        """
        encoding = spec.encoding.lower().replace("_", "-")
        if encoding in ("utf-8", "utf8"):
            encoding = "utf-8-sig"
        newline = "\r" if spec.line_end == "\r" else "\n"
        try:
            raw = self._open(spec)
            text = io.TextIOWrapper(raw, encoding=encoding, errors="replace", newline=newline)
        except LookupError:
            raise FlowDCError(
                f"{self.path}: meta.xml gives encoding {spec.encoding!r} for {spec.location}, "
                f"which Python does not know; fix meta.xml"
            ) from None
        with text:
            lines: Iterator[str] = (line.rstrip("\r\n") for line in text)
            for _ in range(spec.header_lines):
                next(lines, None)
            lines = (line for line in lines if line.strip())
            if spec.quote:
                yield from csv.reader(lines, delimiter=spec.delimiter, quotechar=spec.quote)
            else:
                for line in lines:
                    yield line.split(spec.delimiter)

    def batches(self) -> Iterator[pa.RecordBatch]:
        """The image rows of the multimedia file, joined to their core rows, in file order."""
        try:
            with self._core_index() as index:
                yield from self._media_batches(index)
        except (sqlite3.Error, zipfile.BadZipFile) as exc:
            raise FlowDCError(
                f"cannot read {self.path} as a Darwin Core Archive: {exc}; check the archive "
                f"(download it again) and the free space in the temporary folder"
            ) from None

    @contextlib.contextmanager
    def _core_index(self) -> Iterator[tuple[sqlite3.Connection, _Picker]]:
        """The kept core columns, raw, in a SQLite table keyed by the core id."""
        folder = tempfile.mkdtemp(prefix="flowdc-dwca-")
        db = sqlite3.connect(Path(folder) / "core.sqlite")
        try:
            for pragma in ("journal_mode=OFF", "synchronous=OFF", "cache_size=-16000"):
                db.execute(f"PRAGMA {pragma}")
            picker = _Picker(self.core, [*self.core_kept, *self.core_fallback])
            columns = "".join(f", c{i} TEXT" for i in range(1, picker.width))
            db.execute(f"CREATE TABLE core (id TEXT PRIMARY KEY{columns}) WITHOUT ROWID")
            insert = f"INSERT OR IGNORE INTO core VALUES ({','.join('?' * picker.width)})"
            take = picker.take
            chunk: list[tuple[str, ...]] = []
            for row in self.rows(self.core):
                chunk.append(take(row))
                if len(chunk) == 10_000:
                    db.executemany(insert, chunk)
                    chunk = []
            db.executemany(insert, chunk)
            db.execute("CREATE TEMP TABLE batch (pos INTEGER PRIMARY KEY, id TEXT)")
            yield db, picker
        finally:
            db.close()
            shutil.rmtree(folder, ignore_errors=True)

    def _media_batches(self, index: tuple[sqlite3.Connection, _Picker]) -> Iterator[pa.RecordBatch]:
        db, core = index
        spec = self.media
        present = spec.terms()
        url_term = next(t for t in URL_TERMS if t in present)
        alternates = {
            name: [t for t in terms if t in present] for name, terms in MEDIA_COLUMNS.items()
        }
        wanted = [url_term, *(t for ts in alternates.values() for t in ts), *self.media_extra]
        media = _Picker(spec, list(dict.fromkeys(wanted)))
        names = self.column_names()
        schema = pa.schema([(name, pa.string()) for name in names])
        select = ", ".join(f"c.c{i}" for i in range(1, core.width))
        query = f"SELECT c.id{', ' + select if select else ''} FROM batch b "
        query += "LEFT JOIN core c ON c.id = b.id ORDER BY b.pos"

        def flush(pending: list[tuple[str, ...]]) -> pa.RecordBatch:
            db.execute("DELETE FROM batch")
            db.executemany(
                "INSERT INTO batch VALUES (?, ?)", ((i, r[0]) for i, r in enumerate(pending))
            )
            joined = db.execute(query).fetchall()
            columns: dict[str, list[str | None]] = {
                "url": media.column(pending, url_term),
                "coreid": [row[0].strip() or None for row in pending],
            }
            for name in self.core_kept:
                columns[name] = core.column(joined, name)
            for name in self.media_extra:
                columns[name] = media.column(pending, name)
            for name, terms in alternates.items():
                values: list[str | None] = [None] * len(pending)
                for term in terms:
                    other = media.column(pending, term)
                    values = [v if v is not None else o for v, o in zip(values, other, strict=True)]
                if name in self.core_fallback:
                    other = core.column(joined, name)
                    values = [v if v is not None else o for v, o in zip(values, other, strict=True)]
                columns[name] = values
            return pa.record_batch([columns[name] for name in names], schema=schema)

        type_slot = media.slot(alternates["media_type"][0]) if alternates["media_type"] else None
        format_slot = (
            media.slot(alternates["media_format"][0]) if alternates["media_format"] else None
        )
        pending: list[tuple[str, ...]] = []
        skipped = total = 0
        for row in self.rows(spec):
            total += 1
            picked = media.take(row)
            kind = picked[type_slot] if type_slot is not None else ""
            fmt = picked[format_slot] if format_slot is not None else ""
            if (kind or fmt) and not _is_image(kind, fmt):
                skipped += 1
                continue
            pending.append(picked)
            if len(pending) == BATCH_ROWS:
                yield flush(pending)
                pending = []
        if pending:
            yield flush(pending)
        if skipped:
            self.notes.append(
                f"{skipped:,} of {total:,} multimedia rows of {self.path.name} are not images "
                f"(sound, video, or a format that is not image/*) and were left out"
            )


class _Picker:
    """Takes the cells of some terms from a file's rows in one call (itemgetter), the row's id
    first; short rows are padded. Cells stay raw until a column is built from them."""

    def __init__(self, spec: FileSpec, names: Sequence[str]) -> None:
        assert spec.id_index is not None  # checked with meta.xml
        picks = [spec.id_index]
        self.slots: dict[str, int | None] = {}
        self.defaults = {name: spec.defaults.get(name) or None for name in names}
        for name in names:
            if name in spec.fields:
                self.slots[name] = len(picks)
                picks.append(spec.fields[name])
            else:
                self.slots[name] = None  # a field with only a default
        self.width = len(picks)  # cells taken: the id, then one per indexed name
        self._need = max(picks) + 1
        self._get = itemgetter(*picks) if len(picks) > 1 else None
        self._picks = picks

    def take(self, row: list[str]) -> tuple[str, ...]:
        if len(row) < self._need:
            row = row + [""] * (self._need - len(row))
        if self._get is None:
            return (row[self._picks[0]],)
        return self._get(row)  # type: ignore[no-any-return]

    def slot(self, name: str) -> int | None:
        return self.slots[name]

    def column(self, rows: list[tuple[str | None, ...]], name: str) -> list[str | None]:
        """`name`'s cells over `rows`, stripped; empty (or no cell) gives its default or None."""
        slot, default = self.slots[name], self.defaults[name]
        if slot is None:
            return [default] * len(rows)
        return [(row[slot].strip() or default) if row[slot] else default for row in rows]  # type: ignore[union-attr]


def _is_image(media_type: str, media_format: str) -> bool:
    """StillImage, or an image/* format; a row that says neither way is tried."""
    kind = media_type.strip().lower()
    fmt = media_format.strip().lower()
    if kind in _STILL_IMAGE or fmt.startswith("image/"):
        return True
    return not kind and not fmt
