"""Reading URL tables: every format streams record batches with a schema fixed up front.

Parquet keeps its own column types. Every other format yields string columns (a cell that is
missing is null), so a column never changes type half way through a ten-million-row file.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import gzip
import io
import json
import math
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from flowdc.core.errors import FlowDCError
from flowdc.planning.dwca import DwcArchive, is_archive
from flowdc.planning.formats import binary_kind, detect_format

BATCH_ROWS = 65_536
_CSV_DELIMITERS = (",", ";", "\t", "|")
_QUOTED = re.compile(r'"[^"]*"')
_HEADER_NAME = re.compile(r"[A-Za-z_][\w .-]{0,99}")  # a .txt list's column name, not a URL


def cell_to_text(value: Any) -> str | None:
    """Render a cell from a row-oriented format as text, keeping integers free of '.0'."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isfinite(value) and value.is_integer():
            return str(int(value))
        return repr(value)
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


class InputTable:
    """One input file: its column names and a stream of record batches."""

    def __init__(
        self, path: str | Path, input_format: str | None = None, wanted: Iterable[str | None] = ()
    ) -> None:
        """`wanted`: columns a reader that picks its columns (a Darwin Core Archive) must keep,
        such as the --label term."""
        self.path = Path(path)
        self.notes: list[str] = []  # one-line notices about what was read, for the run's log
        self._columns: list[str] | None = None
        self.archive: DwcArchive | None = None
        if not self.path.exists():
            raise FlowDCError(f"input file not found: {self.path}; check the --input path")
        if input_format == "dwca" or (input_format is None and is_archive(self.path)):
            self.format, self.gzipped = "dwca", False
            self.archive = DwcArchive(self.path, [name for name in wanted if name])
            self.notes = self.archive.notes
            return
        if self.path.is_dir():
            raise FlowDCError(
                f"input {self.path} is a folder; give a file, or a Darwin Core Archive folder "
                f"(one with a meta.xml)"
            )
        self.format, self.gzipped = detect_format(self.path, input_format)

    # -- public -------------------------------------------------------------------------------
    def column_names(self) -> list[str]:
        if self.archive is not None:
            return self.archive.column_names()
        if self._columns is None:
            self._columns = self._read_columns()
            dupes = sorted({c for c in self._columns if self._columns.count(c) > 1})
            if dupes:
                raise FlowDCError(
                    f"{self.path} has duplicate column names {dupes}; rename them so each is unique"
                )
        return self._columns

    def batches(self) -> Iterator[pa.RecordBatch]:
        """Yield record batches of at most BATCH_ROWS rows with every column of the file."""
        with self._read_errors():
            if self.archive is not None:
                yield from self.archive.batches()
                return
            if self.format == "parquet":
                yield from self._parquet_batches()
            elif self.format in ("csv", "tsv") or (self.format == "txt" and self._txt_delimiter()):
                yield from self._csv_batches()
            else:
                schema = pa.schema([(name, pa.string()) for name in self.column_names()])
                yield from _rows_to_batches(self._dict_rows(), schema)

    @contextlib.contextmanager
    def _read_errors(self) -> Iterator[None]:
        """Turn the many ways a broken file fails into one line naming the file."""
        try:
            yield
        except FlowDCError:
            raise
        except (pa.ArrowException, UnicodeDecodeError) as exc:
            if isinstance(exc, UnicodeDecodeError) or "UTF8" in str(exc):
                kind = binary_kind(self.path)
                if kind is not None:
                    raise FlowDCError(
                        f"{self.path} is {kind[0]} file, not {self.format}; name it {kind[1]} or "
                        f"set --input_format"
                    ) from None
                raise FlowDCError(
                    f"{self.path} is not UTF-8 text ({_one_line(exc)}); save it as UTF-8 (Excel: "
                    f"'CSV UTF-8'), or convert it: iconv -f cp1252 -t utf-8 FILE > NEW_FILE"
                ) from None
            raise self._unreadable(exc) from None
        except (OSError, ValueError, EOFError, gzip.BadGzipFile) as exc:
            raise self._unreadable(exc) from None

    def _unreadable(self, exc: BaseException) -> FlowDCError:
        return FlowDCError(
            f"cannot read {self.path} as {self.format}: {_one_line(exc)}; check the file "
            f"or set --input_format"
        )

    # -- columns ------------------------------------------------------------------------------
    def _read_columns(self) -> list[str]:
        with self._read_errors():
            if self.format == "parquet":
                return list(pq.ParquetFile(self.path).schema_arrow.names)
            if self.format in ("csv", "tsv"):
                return self._csv_header(self._delimiter())
            if self.format == "txt":
                delimiter = self._txt_delimiter()
                if delimiter:
                    return self._csv_header(delimiter)
                return [self._txt_header() or "url"]
            if self.format in ("xlsx", "xls"):
                header = next(iter(self._sheet_rows()), None)
                return _header_names(header or [])
            # json, jsonl, xml: the union of keys in order of appearance
            seen: dict[str, None] = {}
            for row in self._raw_dict_rows():
                for key in row:
                    seen.setdefault(key, None)
            return list(seen)

    # -- text helpers -------------------------------------------------------------------------
    def _open_text(self) -> IO[str]:
        raw: IO[bytes] = gzip.open(self.path, "rb") if self.gzipped else open(self.path, "rb")
        return io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")

    def _arrow_stream(self) -> pa.NativeFile:
        return pa.input_stream(str(self.path), compression="gzip" if self.gzipped else None)

    def _delimiter(self) -> str:
        """Tab for TSV; for CSV a comma, unless its header has none (outside quotes) but has
        semicolons, tabs or bars: Excel saves "CSV" with semicolons in many locales, and
        tab-separated files are often named .csv."""
        if self.format == "tsv":
            return "\t"
        header = _QUOTED.sub("", self._first_line())
        if "," in header:
            return ","
        counts = {delimiter: header.count(delimiter) for delimiter in _CSV_DELIMITERS}
        best = max(_CSV_DELIMITERS, key=counts.__getitem__)
        return best if counts[best] else ","

    def _first_line(self) -> str:
        with self._open_text() as text:
            for line in text:
                if line.strip():
                    return line
        return ""

    def _txt_delimiter(self) -> str | None:
        """A .txt file is a plain URL list unless its first line is a delimited header."""
        first = self._first_line().strip()
        if not first or first.lower().startswith(("http://", "https://")):
            return None
        for delimiter in ("\t", ",", ";", "|"):
            if delimiter in first:
                return delimiter
        return None

    def _txt_header(self) -> str | None:
        """The column name a one-column .txt list starts with (`url`, `photo_url`), if any."""
        first = self._first_line().strip()
        return first if _HEADER_NAME.fullmatch(first) else None

    def _csv_header(self, delimiter: str) -> list[str]:
        with self._open_text() as text:
            quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
            header = next(csv.reader(text, delimiter=delimiter, quoting=quoting), None)
        if not header:
            raise FlowDCError(f"{self.path} is empty: it needs a header row naming its columns")
        return _header_names(header)  # Excel's trailing empty columns get column_N names

    def _csv_batches(self) -> Iterator[pa.RecordBatch]:
        delimiter = self._delimiter() if self.format != "txt" else self._txt_delimiter()
        names = self.column_names()
        read_options = pacsv.ReadOptions(
            column_names=names, skip_rows=1, block_size=1 << 22, encoding="utf8"
        )
        # TSV has no quoting (GBIF's files hold bare quotes in text); CSV does.
        quoting = self.format != "tsv" and delimiter != "\t"
        parse_options = pacsv.ParseOptions(
            delimiter=delimiter,
            quote_char='"' if quoting else False,
            newlines_in_values=quoting,
        )
        convert_options = pacsv.ConvertOptions(
            column_types={name: pa.string() for name in names},
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
        )
        stream = self._arrow_stream()
        if self._starts_with_bom():
            stream.read(3)
        with pacsv.open_csv(stream, read_options, parse_options, convert_options) as reader:
            for batch in reader:
                yield from _split_batch(batch)

    def _starts_with_bom(self) -> bool:
        with self._arrow_stream() as stream:
            return stream.read(3) == b"\xef\xbb\xbf"

    # -- row-oriented formats -----------------------------------------------------------------
    def _dict_rows(self) -> Iterator[dict[str, str | None]]:
        if self.format in ("xlsx", "xls"):
            rows = iter(self._sheet_rows())
            header = _header_names(next(rows, None) or [])
            for values in rows:
                if values is None or all(v is None or v == "" for v in values):
                    continue
                yield {
                    name: cell_to_text(values[i]) if i < len(values) else None
                    for i, name in enumerate(header)
                }
            return
        if self.format == "txt":
            header, name = self._txt_header(), self.column_names()[0]
            with self._open_text() as text:
                for line in text:
                    url = line.strip()
                    if url and header is not None:
                        header = None  # the first line names the column
                        continue
                    if url:
                        yield {name: url}
            return
        for row in self._raw_dict_rows():
            yield {key: cell_to_text(value) for key, value in row.items()}

    def _raw_dict_rows(self) -> Iterator[dict[str, Any]]:
        if self.format == "jsonl":
            yield from self._jsonl_rows()
        elif self.format == "json":
            yield from self._json_rows()
        elif self.format == "xml":
            yield from self._xml_rows()
        else:  # pragma: no cover - guarded by detect_format
            raise FlowDCError(f"unsupported input format {self.format}")

    def _jsonl_rows(self) -> Iterator[dict[str, Any]]:
        with self._open_text() as text:
            for number, line in enumerate(text, start=1):
                if not line.strip():
                    continue
                try:
                    value = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise FlowDCError(
                        f"{self.path} line {number} is not valid JSON ({exc.msg}); fix or remove it"
                    ) from None
                yield _record(value, f"{self.path} line {number}")

    def _json_rows(self) -> Iterator[dict[str, Any]]:
        with self._open_text() as text:
            try:
                document = json.load(text)
            except json.JSONDecodeError as exc:
                raise FlowDCError(
                    f"{self.path} is not valid JSON: {exc.msg} at line {exc.lineno}; if it holds "
                    f"one object per line, name it .jsonl or set --input_format jsonl"
                ) from None
        if isinstance(document, dict):
            lists = [value for value in document.values() if isinstance(value, list)]
            if len(lists) != 1:
                raise FlowDCError(
                    f"{self.path} holds a JSON object; expected a list of records (or an object "
                    f"with exactly one list of records)"
                )
            document = lists[0]
        if not isinstance(document, list):
            raise FlowDCError(f"{self.path} must hold a JSON list of records")
        for number, value in enumerate(document):
            yield _record(value, f"{self.path} record {number}")

    def _xml_rows(self) -> Iterator[dict[str, Any]]:
        """Records are the root's children; a record's fields are its attributes and children."""
        from defusedxml.ElementTree import iterparse

        source = gzip.open(self.path, "rb") if self.gzipped else open(self.path, "rb")
        depth = 0
        try:
            with source:
                for event, element in iterparse(source, events=("start", "end")):
                    if event == "start":
                        depth += 1
                        continue
                    depth -= 1
                    if depth != 1:
                        continue
                    row: dict[str, Any] = {_local(k): v for k, v in element.attrib.items()}
                    children = list(element)
                    for child in children:
                        row[_local(child.tag)] = (child.text or "").strip() or None
                    if not children and not element.attrib and (element.text or "").strip():
                        row["url"] = element.text.strip()
                    element.clear()
                    yield row
        except Exception as exc:
            if exc.__class__.__name__ in (
                "ParseError",
                "EntitiesForbidden",
                "DTDForbidden",
                "ExternalReferenceForbidden",
            ):
                raise FlowDCError(f"{self.path} is not usable XML: {_one_line(exc)}") from None
            raise

    def _sheet_rows(self) -> Iterable[tuple[Any, ...] | list[Any]]:
        if self.format == "xlsx":
            import openpyxl

            try:
                book = openpyxl.load_workbook(self.path, read_only=True, data_only=True)
            except Exception as exc:
                raise FlowDCError(f"cannot open {self.path} as Excel: {_one_line(exc)}") from None
            try:
                yield from book.worksheets[0].iter_rows(values_only=True)
            finally:
                book.close()
            return
        import xlrd

        try:
            book = xlrd.open_workbook(str(self.path), on_demand=True)
        except Exception as exc:
            raise FlowDCError(
                f"cannot open {self.path} as Excel (.xls): {_one_line(exc)}"
            ) from None
        sheet = book.sheet_by_index(0)
        for index in range(sheet.nrows):
            yield [_xls_value(cell, book.datemode) for cell in sheet.row(index)]

    # -- parquet ------------------------------------------------------------------------------
    def _parquet_batches(self) -> Iterator[pa.RecordBatch]:
        yield from pq.ParquetFile(self.path).iter_batches(batch_size=BATCH_ROWS)


def _record(value: Any, where: str) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    if isinstance(value, str):
        return {"url": value}
    raise FlowDCError(f"{where} is {type(value).__name__}; expected an object (or a URL string)")


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _header_names(header: Iterable[Any]) -> list[str]:
    names = []
    for index, value in enumerate(header):
        text = cell_to_text(value)
        names.append(text.strip() if text and text.strip() else f"column_{index}")
    return names


def _xls_value(cell: Any, datemode: int) -> Any:
    import xlrd

    if cell.ctype == xlrd.XL_CELL_DATE:
        return xlrd.xldate_as_datetime(cell.value, datemode)
    if cell.ctype in (xlrd.XL_CELL_EMPTY, xlrd.XL_CELL_BLANK):
        return None
    if cell.ctype == xlrd.XL_CELL_BOOLEAN:
        return bool(cell.value)
    if cell.ctype == xlrd.XL_CELL_ERROR:
        return xlrd.error_text_from_code.get(cell.value, "#ERROR")
    return cell.value


def _rows_to_batches(
    rows: Iterable[dict[str, str | None]], schema: pa.Schema
) -> Iterator[pa.RecordBatch]:
    names = schema.names
    columns: list[list[str | None]] = [[] for _ in names]
    count = 0
    for row in rows:
        for index, name in enumerate(names):
            columns[index].append(row.get(name))
        count += 1
        if count == BATCH_ROWS:
            yield pa.record_batch(columns, schema=schema)
            columns = [[] for _ in names]
            count = 0
    if count:
        yield pa.record_batch(columns, schema=schema)


def _split_batch(batch: pa.RecordBatch) -> Iterator[pa.RecordBatch]:
    for start in range(0, batch.num_rows, BATCH_ROWS):
        yield batch.slice(start, BATCH_ROWS)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else exc.__class__.__name__
