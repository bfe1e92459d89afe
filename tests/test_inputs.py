"""InputTable (every input format, round-trips, errors) and make_plan (shards, keys, columns)."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import flowdc
from flowdc.config.loading import build_config
from flowdc.config.options import DownloadConfig
from flowdc.core.errors import FlowDCError
from flowdc.core.layout import LABELS_FILE, PLAN_META, PLAN_TABLE
from flowdc.planning.inputs import InputTable
from flowdc.planning.plan import Plan, make_plan, write_labels_file
from flowdc.testserver import ImageServer
from tests.conftest import QUICK_RUN

HOST = "http://127.0.0.1:9"  # nothing listens on port 9; no test here downloads anything
DEAD = f"{HOST}/img"

# The rows every format below encodes: a url, a label and two extra columns. "00123" must stay
# a string with its leading zeros, and a label holding a comma must survive quoting.
ROWS: list[dict[str, str]] = [
    {"url": f"{DEAD}/1.jpg", "label": "cat", "obs_id": "00123", "note": "first"},
    {"url": f"{DEAD}/2.jpg", "label": "dog, large", "obs_id": "7", "note": "second"},
    {"url": f"{DEAD}/3.jpg", "label": "Ærø ü", "obs_id": "0", "note": "third"},
]
COLUMNS = ["url", "label", "obs_id", "note"]


# -- helpers -------------------------------------------------------------------------------------
def read_rows(path: Path, input_format: str | None = None) -> tuple[list[str], list[dict]]:
    table = InputTable(path, input_format)
    rows = [row for batch in table.batches() for row in batch.to_pylist()]
    return table.column_names(), rows


def config_for(tmp_path: Path, source: Path, **overrides: Any) -> DownloadConfig:
    output = tmp_path / "out"
    output.mkdir(parents=True, exist_ok=True)  # run_download makes it before planning
    return build_config(overrides={"input": str(source), "output": str(output), **overrides})


def plan_for(tmp_path: Path, source: Path, **overrides: Any) -> tuple[Plan, pa.Table]:
    config = config_for(tmp_path, source, **overrides)
    plan = make_plan(config, InputTable(config.input, config.input_format))
    return plan, pq.read_table(plan.table_path)


def one_line_error(excinfo: pytest.ExceptionInfo[FlowDCError], *fragments: str) -> str:
    message = str(excinfo.value)
    assert message.strip(), "empty error message"
    assert "\n" not in message, f"error message is not one line: {message!r}"
    assert "Traceback" not in message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


def delimited(rows: list[dict[str, str]], delimiter: str) -> str:
    """Rows as delimited text, quoting (CSV style) the cells that need it."""

    def cell(value: str) -> str:
        if any(ch in value for ch in (delimiter, '"', "\n", "\r")):
            return '"' + value.replace('"', '""') + '"'
        return value

    lines = [delimiter.join(COLUMNS)]
    lines += [delimiter.join(cell(row[c]) for c in COLUMNS) for row in rows]
    return "\n".join(lines) + "\n"


def xml_elements(rows: list[dict[str, str]]) -> str:
    records = "".join(
        "<record>" + "".join(f"<{c}>{_xml_escape(row[c])}</{c}>" for c in COLUMNS) + "</record>"
        for row in rows
    )
    return f'<?xml version="1.0" encoding="UTF-8"?>\n<records>{records}</records>\n'


def xml_attributes(rows: list[dict[str, str]]) -> str:
    records = "".join(
        "<record " + " ".join(f'{c}="{_xml_escape(row[c])}"' for c in COLUMNS) + "/>"
        for row in rows
    )
    return f'<?xml version="1.0" encoding="UTF-8"?>\n<records>\n  {records}\n</records>\n'


def _xml_escape(value: str) -> str:
    return value.replace("&", "&amp;").replace("<", "&lt;").replace('"', "&quot;")


def write_xlsx(path: Path, rows: list[list[Any]]) -> None:
    import openpyxl

    book = openpyxl.Workbook()
    sheet = book.active
    for row in rows:
        sheet.append(row)
    book.save(path)


def write_xls(path: Path, rows: list[list[Any]]) -> None:
    import xlwt

    book = xlwt.Workbook()
    sheet = book.add_sheet("urls")
    for r, row in enumerate(rows):
        for c, value in enumerate(row):
            if value is not None:
                sheet.write(r, c, value)
    book.save(str(path))


def _sheet(rows: list[dict[str, str]]) -> list[list[Any]]:
    return [COLUMNS] + [[row[c] for c in COLUMNS] for row in rows]


# -- every format --------------------------------------------------------------------------------
Writer = Callable[[Path], None]

FORMATS: dict[str, tuple[str, Writer]] = {
    "csv": ("urls.csv", lambda p: p.write_text(delimited(ROWS, ","), encoding="utf-8")),
    "tsv": ("urls.tsv", lambda p: p.write_text(delimited(ROWS, "\t"), encoding="utf-8")),
    "txt-tab": ("urls.txt", lambda p: p.write_text(delimited(ROWS, "\t"), encoding="utf-8")),
    "txt-comma": ("urls.txt", lambda p: p.write_text(delimited(ROWS, ","), encoding="utf-8")),
    "txt-semicolon": ("urls.txt", lambda p: p.write_text(delimited(ROWS, ";"), encoding="utf-8")),
    "txt-pipe": ("urls.txt", lambda p: p.write_text(delimited(ROWS, "|"), encoding="utf-8")),
    "json-list": ("urls.json", lambda p: p.write_text(json.dumps(ROWS), encoding="utf-8")),
    "json-data": (
        "urls.json",
        lambda p: p.write_text(json.dumps({"count": 3, "data": ROWS}), encoding="utf-8"),
    ),
    "jsonl": (
        "urls.jsonl",
        lambda p: p.write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8"),
    ),
    "ndjson": (
        "urls.ndjson",
        lambda p: p.write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8"),
    ),
    "xml-elements": ("urls.xml", lambda p: p.write_text(xml_elements(ROWS), encoding="utf-8")),
    "xml-attributes": ("urls.xml", lambda p: p.write_text(xml_attributes(ROWS), encoding="utf-8")),
    "xlsx": ("urls.xlsx", lambda p: write_xlsx(p, _sheet(ROWS))),
    "xls": ("urls.xls", lambda p: write_xls(p, _sheet(ROWS))),
    "parquet": ("urls.parquet", lambda p: pq.write_table(pa.Table.from_pylist(ROWS), p)),
    "csv.gz": (
        "urls.csv.gz",
        lambda p: p.write_bytes(gzip.compress(delimited(ROWS, ",").encode())),
    ),
    "tsv.gz": (
        "urls.tsv.gz",
        lambda p: p.write_bytes(gzip.compress(delimited(ROWS, "\t").encode())),
    ),
    "jsonl.gz": (
        "urls.jsonl.gz",
        lambda p: p.write_bytes(
            gzip.compress("".join(json.dumps(r) + "\n" for r in ROWS).encode())
        ),
    ),
    "txt.gz": (
        "urls.txt.gz",
        lambda p: p.write_bytes(gzip.compress(delimited(ROWS, "\t").encode())),
    ),
    "json.gz": ("urls.json.gz", lambda p: p.write_bytes(gzip.compress(json.dumps(ROWS).encode()))),
    "xml.gz": ("urls.xml.gz", lambda p: p.write_bytes(gzip.compress(xml_elements(ROWS).encode()))),
}


@pytest.mark.parametrize("kind", list(FORMATS))
def test_every_format_parses_url_label_and_extra_columns(tmp_path: Path, kind: str) -> None:
    name, write = FORMATS[kind]
    path = tmp_path / name
    write(path)

    columns, rows = read_rows(path)

    assert columns == COLUMNS
    assert rows == ROWS


@pytest.mark.parametrize("kind", list(FORMATS))
def test_every_format_plans_with_label_and_extra_columns(tmp_path: Path, kind: str) -> None:
    name, write = FORMATS[kind]
    path = tmp_path / name
    write(path)

    plan, table = plan_for(tmp_path, path, label="label")

    assert plan.total_rows == len(ROWS)
    assert plan.extra_columns == {"obs_id": "obs_id", "note": "note"}
    assert table.column_names == ["key", "shard", "row", "url", "label", "obs_id", "note"]
    assert table.select(["url", "label", "obs_id", "note"]).to_pylist() == ROWS
    assert plan.labels == sorted(row["label"] for row in ROWS)


def test_formats_are_detected_from_extensions(tmp_path: Path) -> None:
    expected = {
        "urls.csv": ("csv", False),
        "urls.tsv": ("tsv", False),
        "urls.txt": ("txt", False),
        "urls.json": ("json", False),
        "urls.jsonl": ("jsonl", False),
        "urls.xml": ("xml", False),
        "urls.xlsx": ("xlsx", False),
        "urls.xls": ("xls", False),
        "urls.parquet": ("parquet", False),
        "urls.csv.gz": ("csv", True),
        "urls.tsv.gz": ("tsv", True),
        "urls.jsonl.gz": ("jsonl", True),
        "urls.txt.gz": ("txt", True),
        "my.data.v2.CSV": ("csv", False),
    }
    for name, (fmt, gzipped) in expected.items():
        (tmp_path / name).write_bytes(b"")
        table = InputTable(tmp_path / name)
        assert (table.format, table.gzipped) == (fmt, gzipped), name


def test_txt_plain_url_list_one_per_line_blank_lines_skipped(tmp_path: Path) -> None:
    path = tmp_path / "urls.txt"
    path.write_text(
        f"{DEAD}/1.jpg\n\n   \n  {DEAD}/2.jpg  \r\n{DEAD}/3.jpg?a=1,b=2\n\n", encoding="utf-8"
    )

    columns, rows = read_rows(path)

    assert columns == ["url"]
    assert rows == [
        {"url": f"{DEAD}/1.jpg"},
        {"url": f"{DEAD}/2.jpg"},
        {"url": f"{DEAD}/3.jpg?a=1,b=2"},
    ]
    plan, table = plan_for(tmp_path, path)
    assert plan.total_rows == 3
    assert plan.extra_columns == {}
    assert table.column("url").to_pylist() == [row["url"] for row in rows]


def test_txt_plain_url_list_gzipped(tmp_path: Path) -> None:
    path = tmp_path / "urls.txt.gz"
    path.write_bytes(gzip.compress(f"{DEAD}/1.jpg\n\n{DEAD}/2.jpg\n".encode()))

    assert read_rows(path) == (["url"], [{"url": f"{DEAD}/1.jpg"}, {"url": f"{DEAD}/2.jpg"}])


# -- input_format overrides the extension --------------------------------------------------------
def test_input_format_overrides_unknown_extension(tmp_path: Path) -> None:
    path = tmp_path / "urls.dat"
    path.write_text(delimited(ROWS, ","), encoding="utf-8")

    assert read_rows(path, "csv") == (COLUMNS, ROWS)


def test_input_format_overrides_a_misleading_extension(tmp_path: Path) -> None:
    jsonl_named_txt = tmp_path / "urls.txt"
    jsonl_named_txt.write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    tsv_named_csv = tmp_path / "urls.csv"
    tsv_named_csv.write_text(delimited(ROWS, "\t"), encoding="utf-8")

    assert read_rows(jsonl_named_txt, "jsonl") == (COLUMNS, ROWS)
    assert read_rows(tsv_named_csv, "tsv") == (COLUMNS, ROWS)
    # without the override the .csv's delimiter is read from its header (test_qa2.py)
    assert read_rows(tsv_named_csv) == (COLUMNS, ROWS)


def test_input_format_override_keeps_gzip(tmp_path: Path) -> None:
    named_gz = tmp_path / "urls.gz"
    named_gz.write_bytes(gzip.compress(delimited(ROWS, "\t").encode()))
    gzip_without_suffix = tmp_path / "urls.data"
    gzip_without_suffix.write_bytes(gzip.compress(delimited(ROWS, ",").encode()))

    assert read_rows(named_gz, "tsv") == (COLUMNS, ROWS)
    assert read_rows(gzip_without_suffix, "csv") == (COLUMNS, ROWS)


def test_input_format_override_through_make_plan(tmp_path: Path) -> None:
    path = tmp_path / "export.dat"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")

    plan, table = plan_for(tmp_path, path, input_format="jsonl", label="label")

    assert plan.input_format == "jsonl"
    assert table.select(COLUMNS).to_pylist() == ROWS


# -- values round-trip ---------------------------------------------------------------------------
def test_csv_keeps_every_cell_a_string(tmp_path: Path) -> None:
    path = tmp_path / "urls.csv"
    path.write_text(
        "url,label,id,count,flag,missing,nan\n"
        f"{DEAD}/1.jpg,cat,00123,5,true,,NaN\n"
        f"{DEAD}/2.jpg,007,0042,5.0,null,,nan\n",
        encoding="utf-8",
    )

    _, rows = read_rows(path)

    assert rows == [
        {
            "url": f"{DEAD}/1.jpg",
            "label": "cat",
            "id": "00123",
            "count": "5",
            "flag": "true",
            "missing": "",
            "nan": "NaN",
        },
        {
            "url": f"{DEAD}/2.jpg",
            "label": "007",
            "id": "0042",
            "count": "5.0",
            "flag": "null",
            "missing": "",
            "nan": "nan",
        },
    ]
    plan, table = plan_for(tmp_path, path, label="label")
    assert table.schema.field("id").type == pa.string()
    assert table.column("id").to_pylist() == ["00123", "0042"]
    assert plan.labels == ["007", "cat"]


def test_csv_with_utf8_bom_names_first_column_correctly(tmp_path: Path) -> None:
    path = tmp_path / "urls.csv"
    path.write_bytes(b"\xef\xbb\xbf" + delimited(ROWS, ",").encode())

    assert read_rows(path) == (COLUMNS, ROWS)
    _, table = plan_for(tmp_path, path)  # url="url" is the first, BOM-prefixed, column
    assert table.column("url").to_pylist() == [row["url"] for row in ROWS]


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz", ".tsv", ".txt"])
def test_bom_is_dropped_from_first_column_name(tmp_path: Path, suffix: str) -> None:
    delimiter = "\t" if suffix in (".tsv", ".txt") else ","
    data = b"\xef\xbb\xbf" + delimited(ROWS, delimiter).encode()
    path = tmp_path / f"urls{suffix}"
    path.write_bytes(gzip.compress(data) if suffix.endswith(".gz") else data)

    assert read_rows(path) == (COLUMNS, ROWS)


@pytest.mark.parametrize("suffix", [".json", ".jsonl", ".xml"])
def test_bom_in_json_and_xml(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"urls{suffix}"
    if suffix == ".json":
        text = json.dumps(ROWS)
    elif suffix == ".jsonl":
        text = "".join(json.dumps(r) + "\n" for r in ROWS)
    else:
        text = xml_elements(ROWS)
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())

    assert read_rows(path) == (COLUMNS, ROWS)


def test_quoted_csv_cells_with_commas_newlines_and_quotes(tmp_path: Path) -> None:
    path = tmp_path / "urls.csv"
    path.write_bytes(
        b"url,label,caption\r\n"
        b'"http://127.0.0.1:9/a.jpg?x=1,2",cat,"two\nlines, and a comma"\r\n'
        b'http://127.0.0.1:9/b.jpg,"dog, ""big""","crlf\r\ninside"\r\n'
    )

    columns, rows = read_rows(path)

    assert columns == ["url", "label", "caption"]
    assert rows == [
        {"url": f"{HOST}/a.jpg?x=1,2", "label": "cat", "caption": "two\nlines, and a comma"},
        {"url": f"{HOST}/b.jpg", "label": 'dog, "big"', "caption": "crlf\r\ninside"},
    ]
    plan, table = plan_for(tmp_path, path, label="label")
    assert plan.total_rows == 2
    assert table.column("caption").to_pylist() == ["two\nlines, and a comma", "crlf\r\ninside"]


def test_json_values_become_text(tmp_path: Path) -> None:
    path = tmp_path / "urls.json"
    records = [
        {"url": f"{DEAD}/1.jpg", "label": 5, "count": 5.0, "ratio": 2.5, "ok": True, "tags": ["a"]},
        {"url": f"{DEAD}/2.jpg", "label": "x", "id": "00123", "meta": {"k": 1}, "count": None},
        f"{DEAD}/3.jpg",  # a bare string is a record with only a url
    ]
    path.write_text(json.dumps(records), encoding="utf-8")

    columns, rows = read_rows(path)

    assert columns == ["url", "label", "count", "ratio", "ok", "tags", "id", "meta"]
    assert rows[0] == {
        "url": f"{DEAD}/1.jpg",
        "label": "5",
        "count": "5",
        "ratio": "2.5",
        "ok": "true",
        "tags": '["a"]',
        "id": None,
        "meta": None,
    }
    assert rows[1]["id"] == "00123"
    assert json.loads(rows[1]["meta"]) == {"k": 1}
    assert rows[1]["count"] is None
    assert rows[2] == {c: (f"{DEAD}/3.jpg" if c == "url" else None) for c in columns}


def test_jsonl_skips_blank_lines_and_unions_keys(tmp_path: Path) -> None:
    path = tmp_path / "urls.jsonl"
    path.write_text(
        '{"url": "u1", "label": "a"}\n\n   \n{"url": "u2", "label": "b", "extra": 3}\n',
        encoding="utf-8",
    )

    assert read_rows(path) == (
        ["url", "label", "extra"],
        [{"url": "u1", "label": "a", "extra": None}, {"url": "u2", "label": "b", "extra": "3"}],
    )


def test_xml_fields_from_attributes_and_children_mixed_with_namespaces(tmp_path: Path) -> None:
    path = tmp_path / "urls.xml"
    path.write_text(
        '<?xml version="1.0"?>\n'
        '<dataset xmlns="http://example.org/ns" xmlns:d="http://example.org/d">\n'
        "  <!-- a comment -->\n"
        '  <item id="00123" d:source="inat">\n'
        f"    <url>  {DEAD}/1.jpg  </url>\n"
        "    <label>Aranea &amp; co</label>\n"
        "    <empty/>\n"
        "  </item>\n"
        f'  <item id="2" url="{DEAD}/2.jpg" label="dog"/>\n'
        f"  <item>{DEAD}/3.jpg</item>\n"
        "</dataset>\n",
        encoding="utf-8",
    )

    columns, rows = read_rows(path)

    assert columns == ["id", "source", "url", "label", "empty"]
    assert rows == [
        {
            "id": "00123",
            "source": "inat",
            "url": f"{DEAD}/1.jpg",
            "label": "Aranea & co",
            "empty": None,
        },
        {"id": "2", "source": None, "url": f"{DEAD}/2.jpg", "label": "dog", "empty": None},
        {"id": None, "source": None, "url": f"{DEAD}/3.jpg", "label": None, "empty": None},
    ]


def test_xml_entity_expansion_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bomb.xml"
    path.write_text(
        '<?xml version="1.0"?>\n<!DOCTYPE r [<!ENTITY a "aaaaaaaaaa">'
        '<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]>\n<r><x url="&b;"/></r>\n',
        encoding="utf-8",
    )

    with pytest.raises(FlowDCError) as excinfo:
        read_rows(path)
    one_line_error(excinfo, "bomb.xml")


def test_xlsx_values_round_trip_as_text(tmp_path: Path) -> None:
    path = tmp_path / "urls.xlsx"
    write_xlsx(
        path,
        [
            ["url", "label", "count", "ratio", "id", "when", "flag", None],
            [f"{DEAD}/1.jpg", "cat", 5, 2.5, "00123", dt.datetime(2024, 1, 2, 3, 4, 5), True, "x"],
            [None, None, None, None, None, None, None, None],  # an empty row is skipped
            [f"{DEAD}/2.jpg", 7, 5.0, 1e20, 123, dt.date(2024, 5, 6), False, None],
        ],
    )

    columns, rows = read_rows(path)

    assert columns == ["url", "label", "count", "ratio", "id", "when", "flag", "column_7"]
    assert rows == [
        {
            "url": f"{DEAD}/1.jpg",
            "label": "cat",
            "count": "5",
            "ratio": "2.5",
            "id": "00123",
            "when": "2024-01-02T03:04:05",
            "flag": "true",
            "column_7": "x",
        },
        {
            "url": f"{DEAD}/2.jpg",
            "label": "7",
            "count": "5",
            "ratio": "100000000000000000000",
            "id": "123",
            "when": "2024-05-06T00:00:00",
            "flag": "false",
            "column_7": None,
        },
    ]


def test_xls_values_round_trip_as_text(tmp_path: Path) -> None:
    path = tmp_path / "urls.xls"
    write_xls(
        path,
        [
            ["url", "label", "count", "ratio", "id"],
            [f"{DEAD}/1.jpg", "cat", 5, 2.5, "00123"],
            [f"{DEAD}/2.jpg", 7, 5.0, None, 123],
        ],
    )

    columns, rows = read_rows(path)

    assert columns == ["url", "label", "count", "ratio", "id"]
    assert rows == [
        {"url": f"{DEAD}/1.jpg", "label": "cat", "count": "5", "ratio": "2.5", "id": "00123"},
        {"url": f"{DEAD}/2.jpg", "label": "7", "count": "5", "ratio": None, "id": "123"},
    ]


def test_xls_booleans_match_xlsx(tmp_path: Path) -> None:
    sheet = [
        ["url", "label", "flag"],
        [f"{DEAD}/1.jpg", "cat", True],
        [f"{DEAD}/2.jpg", "x", False],
    ]
    write_xlsx(tmp_path / "urls.xlsx", sheet)
    write_xls(tmp_path / "urls.xls", sheet)

    _, from_xlsx = read_rows(tmp_path / "urls.xlsx")
    _, from_xls = read_rows(tmp_path / "urls.xls")

    assert [row["flag"] for row in from_xlsx] == ["true", "false"]
    assert from_xls == from_xlsx


def test_parquet_keeps_its_column_types(tmp_path: Path) -> None:
    path = tmp_path / "urls.parquet"
    pq.write_table(
        pa.table(
            {
                "url": pa.array([f"{DEAD}/1.jpg", None], pa.large_string()),
                "label": pa.array([3, 4], pa.int64()),
                "obs_id": pa.array(["00123", "7"]),
                "score": pa.array([0.5, 1.5], pa.float32()),
                "tag": pa.array(["a", "b"]).dictionary_encode(),
            }
        ),
        path,
    )

    plan, table = plan_for(tmp_path, path, label="label")

    assert table.schema.field("url").type == pa.string()
    assert table.schema.field("label").type == pa.string()
    assert table.schema.field("score").type == pa.float32()
    assert table.column("label").to_pylist() == ["3", "4"]
    assert table.column("url").to_pylist() == [f"{DEAD}/1.jpg", None]
    assert table.column("obs_id").to_pylist() == ["00123", "7"]
    assert table.column("tag").to_pylist() == ["a", "b"]
    assert plan.labels == ["3", "4"]


# -- errors --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("overrides", "missing"),
    [
        ({"url": "photo_url"}, ["'photo_url'"]),
        ({"label": "species"}, ["'species'"]),
        ({"url": "photo_url", "label": "species"}, ["'photo_url'", "'species'"]),
    ],
)
def test_missing_url_or_label_column_lists_the_columns_the_file_has(
    tmp_path: Path, overrides: dict[str, str], missing: list[str]
) -> None:
    path = tmp_path / "urls.csv"
    path.write_text(delimited(ROWS, ","), encoding="utf-8")

    with pytest.raises(FlowDCError) as excinfo:
        plan_for(tmp_path, path, **overrides)

    one_line_error(excinfo, *missing, "url, label, obs_id, note", "urls.csv")
    assert not (tmp_path / "out" / PLAN_TABLE).exists()
    assert not (tmp_path / "out" / PLAN_META).exists()


@pytest.mark.parametrize("name", ["urls.dat", "urls", "urls.csv.bz2", "urls.xlsx.gz"])
def test_unknown_or_unsupported_extension(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text(delimited(ROWS, ","), encoding="utf-8")

    with pytest.raises(FlowDCError) as excinfo:
        InputTable(path)

    message = one_line_error(excinfo, name)
    assert "--input_format" in message or "gzip" in message


def test_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FlowDCError) as excinfo:
        InputTable(tmp_path / "nope.csv")
    one_line_error(excinfo, "not found", "nope.csv")


def test_input_that_is_a_folder(tmp_path: Path) -> None:
    with pytest.raises(FlowDCError) as excinfo:
        InputTable(tmp_path)
    one_line_error(excinfo, "folder")


def test_malformed_json_lines_names_the_line_number(tmp_path: Path) -> None:
    path = tmp_path / "urls.jsonl"
    path.write_text('{"url": "u1"}\n\n{"url": "u2"}\n{"url": "u3",\n{"url": "u4"}\n')

    with pytest.raises(FlowDCError) as excinfo:
        read_rows(path)

    one_line_error(excinfo, "urls.jsonl", "line 4")


def test_json_lines_record_that_is_not_an_object_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "urls.jsonl"
    path.write_text('{"url": "u1"}\n[1, 2]\n')

    with pytest.raises(FlowDCError) as excinfo:
        read_rows(path)

    one_line_error(excinfo, "line 2")


def test_malformed_json_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "urls.json"
    path.write_text('[\n {"url": "u1"},\n {"url": }\n]\n')

    with pytest.raises(FlowDCError) as excinfo:
        read_rows(path)

    one_line_error(excinfo, "urls.json", "line 3")


def test_malformed_xml(tmp_path: Path) -> None:
    path = tmp_path / "urls.xml"
    path.write_text("<records><record><url>u</url></record>")

    with pytest.raises(FlowDCError) as excinfo:
        read_rows(path)

    one_line_error(excinfo, "urls.xml")


@pytest.mark.parametrize(
    ("name", "delimiter", "header"),
    [
        ("urls.csv", ",", ["url", "label", "url"]),
        ("urls.tsv", "\t", ["url", "label", "label"]),
        ("urls.txt", ";", ["url", "label", " label "]),  # names are stripped, then compared
    ],
)
def test_duplicate_column_names(
    tmp_path: Path, name: str, delimiter: str, header: list[str]
) -> None:
    path = tmp_path / name
    lines = [delimiter.join(header), delimiter.join([f"{DEAD}/1.jpg", "a", "b"])]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    with pytest.raises(FlowDCError) as excinfo:
        InputTable(path).column_names()
    one_line_error(excinfo, "duplicate", name)
    with pytest.raises(FlowDCError):
        plan_for(tmp_path, path)


def test_duplicate_column_names_in_excel(tmp_path: Path) -> None:
    path = tmp_path / "urls.xlsx"
    write_xlsx(path, [["url", "label", "url"], [f"{DEAD}/1.jpg", "a", "b"]])

    with pytest.raises(FlowDCError) as excinfo:
        plan_for(tmp_path, path)
    one_line_error(excinfo, "duplicate", "'url'")


EMPTY_FILES: dict[str, Callable[[Path], None]] = {
    "empty.csv": lambda p: p.write_bytes(b""),
    "empty.tsv": lambda p: p.write_bytes(b""),
    "empty.txt": lambda p: p.write_bytes(b""),
    "blank.txt": lambda p: p.write_text("\n  \n\n"),
    "empty.json": lambda p: p.write_bytes(b""),
    "empty-list.json": lambda p: p.write_text("[]"),
    "empty.jsonl": lambda p: p.write_bytes(b""),
    "empty.xml": lambda p: p.write_bytes(b""),
    "empty-root.xml": lambda p: p.write_text("<records/>"),
    "empty.parquet": lambda p: p.write_bytes(b""),
    "no-rows.parquet": lambda p: pq.write_table(
        pa.table({"url": pa.array([], pa.string()), "label": pa.array([], pa.string())}), p
    ),
    "header-only.csv": lambda p: p.write_text("url,label\n"),
    "empty.csv.gz": lambda p: p.write_bytes(gzip.compress(b"")),
    "empty.xlsx": lambda p: write_xlsx(p, []),
    "header-only.xlsx": lambda p: write_xlsx(p, [["url", "label"]]),
}


@pytest.mark.parametrize("name", list(EMPTY_FILES))
def test_empty_file_is_a_one_line_error(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    EMPTY_FILES[name](path)

    with pytest.raises(FlowDCError) as excinfo:
        plan_for(tmp_path, path)

    one_line_error(excinfo, name)
    assert not list((tmp_path / "out").iterdir()), "a failed plan left files behind"


def test_empty_csv_says_it_is_empty(tmp_path: Path) -> None:
    path = tmp_path / "urls.csv"
    path.write_bytes(b"")

    with pytest.raises(FlowDCError) as excinfo:
        InputTable(path).column_names()
    one_line_error(excinfo, "empty")


def test_imagefolder_without_label(tmp_path: Path) -> None:
    path = tmp_path / "urls.csv"
    path.write_text(delimited(ROWS, ","), encoding="utf-8")

    with pytest.raises(FlowDCError) as excinfo:
        plan_for(tmp_path, path, output_format="imagefolder")

    one_line_error(excinfo, "imagefolder", "--label")


def test_ragged_csv_is_a_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "urls.csv"
    path.write_text(f'url,label\n{DEAD}/1.jpg,cat\n{DEAD}/2.jpg,dog,"extra\ncell"\n')

    with pytest.raises(FlowDCError) as excinfo:
        plan_for(tmp_path, path)
    one_line_error(excinfo, "urls.csv")


def test_csv_that_is_not_utf8_is_a_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "urls.csv"
    path.write_bytes("url,label\nhttp://127.0.0.1:9/1.jpg,caf\xe9\n".encode("latin-1"))

    with pytest.raises(FlowDCError) as excinfo:
        plan_for(tmp_path, path)
    one_line_error(excinfo, "urls.csv")


@pytest.mark.parametrize("suffix", [".csv.gz", ".jsonl.gz", ".txt.gz"])
def test_truncated_gzip_is_a_one_line_error_and_leaves_no_plan(tmp_path: Path, suffix: str) -> None:
    rows = [{"url": f"{DEAD}/{i}.jpg", "label": f"c{i % 3}"} for i in range(20_000)]
    if suffix == ".jsonl.gz":
        text = "".join(json.dumps(row) + "\n" for row in rows)
    elif suffix == ".csv.gz":
        text = "url,label\n" + "".join(f"{row['url']},{row['label']}\n" for row in rows)
    else:
        text = "".join(row["url"] + "\n" for row in rows)
    data = gzip.compress(text.encode())
    path = tmp_path / f"urls{suffix}"
    path.write_bytes(data[: len(data) // 2])

    with pytest.raises(FlowDCError) as excinfo:
        plan_for(tmp_path, path, shard_size=1000)  # some shards are written before the end

    one_line_error(excinfo, path.name)
    assert list((tmp_path / "out").iterdir()) == [], "a cut-short plan was left behind"


def test_parquet_that_is_not_parquet_is_a_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "urls.parquet"
    path.write_text(delimited(ROWS, ","))

    with pytest.raises(FlowDCError) as excinfo:
        plan_for(tmp_path, path)
    one_line_error(excinfo, "urls.parquet")


# -- make_plan: shards and keys ------------------------------------------------------------------
def _numbered_parquet(path: Path, rows: int, **extra: pa.Array) -> Path:
    pq.write_table(
        pa.table(
            {
                "url": [f"{DEAD}/{i}.jpg" for i in range(rows)],
                "label": [f"class_{i % 3}" for i in range(rows)],
                "n": pa.array(range(rows), pa.int64()),
                **extra,
            }
        ),
        path,
        row_group_size=7,  # input row groups that do not line up with the shards
    )
    return path


@pytest.mark.parametrize(
    ("rows", "shard_size", "width", "sizes"),
    [
        (25, 10, 1, [10, 10, 5]),
        (20, 10, 1, [10, 10]),
        (1, 10, 1, [1]),
        (5, 1, 1, [1, 1, 1, 1, 1]),
        (250, 100, 2, [100, 100, 50]),
        (1001, 1000, 3, [1000, 1]),
        (1002, 1001, 4, [1001, 1]),
    ],
)
def test_shards_are_row_groups_of_shard_size(
    tmp_path: Path, rows: int, shard_size: int, width: int, sizes: list[int]
) -> None:
    source = _numbered_parquet(tmp_path / "urls.parquet", rows)

    plan, table = plan_for(tmp_path, source, label="label", shard_size=shard_size)

    meta = pq.ParquetFile(plan.table_path).metadata
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == sizes
    assert plan.shard_count == len(sizes)
    assert plan.total_rows == rows
    assert plan.key_width == width == len(str(shard_size - 1))
    assert table.column("n").to_pylist() == list(range(rows)), "rows were reordered"
    for shard, size in enumerate(sizes):
        group = plan.read_shard(shard)
        assert group.column("shard").to_pylist() == [shard] * size
        assert group.column("row").to_pylist() == list(range(size))
        assert group.column("key").to_pylist() == [
            f"{shard:05d}{row:0{width}d}" for row in range(size)
        ]
        assert group.column("n").to_pylist() == [shard * shard_size + r for r in range(size)]
    keys = table.column("key").to_pylist()
    assert len(set(keys)) == rows
    assert keys == sorted(keys)
    assert {len(k) for k in keys} == {5 + width}


def test_key_of_shard_42_row_7_with_shard_size_10(tmp_path: Path) -> None:
    source = _numbered_parquet(tmp_path / "urls.parquet", 431)

    plan, table = plan_for(tmp_path, source, shard_size=10)

    row = table.filter(pc.equal(table.column("n"), 427)).to_pylist()[0]
    assert (row["key"], row["shard"], row["row"]) == ("000427", 42, 7)
    assert plan.shard_count == 44


def test_shards_cross_input_batches_from_csv(tmp_path: Path) -> None:
    """More rows than one input batch (65,536), cut into shards that straddle batches."""
    rows = 150_001
    path = tmp_path / "urls.csv"
    path.write_text(
        "url,label,n\n" + "".join(f"{DEAD}/{i}.jpg,c{i % 4},{i}\n" for i in range(rows)),
        encoding="utf-8",
    )

    plan, table = plan_for(tmp_path, path, label="label", shard_size=30_000)

    meta = pq.ParquetFile(plan.table_path).metadata
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [30_000] * 5 + [1]
    assert table.column("n").to_pylist() == [str(i) for i in range(rows)]
    assert table.column("key").to_pylist()[-1] == "0000500000"
    assert plan.labels == ["c0", "c1", "c2", "c3"]
    assert plan.label_counts == [37_501, 37_500, 37_500, 37_500]


def test_reserved_input_column_names_get_input_prefix(tmp_path: Path) -> None:
    path = tmp_path / "urls.csv"
    path.write_text(
        "image_url,label,status,key,url,error,input_status,species\n"
        f"{DEAD}/1.jpg,L,S,K,U,E,IS,sp\n",
        encoding="utf-8",
    )

    plan, table = plan_for(tmp_path, path, url="image_url", label="species", shard_size=10_000)

    assert plan.extra_columns == {
        "input_label": "label",
        "input_status": "status",
        "input_key": "key",
        "input_url": "url",
        "input_error": "error",
        "input_input_status": "input_status",
    }
    row = table.to_pylist()[0]
    assert row == {
        "key": "000000000",
        "shard": 0,
        "row": 0,
        "url": f"{DEAD}/1.jpg",
        "label": "sp",
        "input_label": "L",
        "input_status": "S",
        "input_key": "K",
        "input_url": "U",
        "input_error": "E",
        "input_input_status": "IS",
    }
    assert len(set(table.column_names)) == len(table.column_names)


def test_rows_with_empty_or_invalid_urls_are_kept(tmp_path: Path) -> None:
    path = tmp_path / "urls.csv"
    path.write_text(
        "url,label,n\n"
        f"{DEAD}/1.jpg,a,0\n"
        ",a,1\n"
        "not a url,b,2\n"
        "ftp://127.0.0.1/x.jpg,b,3\n"
        '"  ",c,4\n'
        f"{DEAD}/5.jpg,,5\n",
        encoding="utf-8",
    )

    plan, table = plan_for(tmp_path, path, label="label")

    assert plan.total_rows == 6
    assert table.column("n").to_pylist() == [str(i) for i in range(6)]
    assert table.column("url").to_pylist() == [
        f"{DEAD}/1.jpg",
        "",
        "not a url",
        "ftp://127.0.0.1/x.jpg",
        "  ",
        f"{DEAD}/5.jpg",
    ]
    assert plan.labels == ["a", "b", "c"]  # a blank label is no label, not a class
    assert plan.unlabeled_rows >= 1


def test_null_urls_in_json_and_parquet_are_kept(tmp_path: Path) -> None:
    path = tmp_path / "urls.jsonl"
    path.write_text(
        '{"url": null, "label": "a"}\n{"label": "b"}\n{"url": "u", "label": null}\n',
        encoding="utf-8",
    )

    plan, table = plan_for(tmp_path, path, label="label")

    assert table.select(["url", "label"]).to_pylist() == [
        {"url": None, "label": "a"},
        {"url": None, "label": "b"},
        {"url": "u", "label": None},
    ]
    assert plan.labels == ["a", "b"]  # a missing label is no class
    assert plan.unlabeled_rows == 1
    assert plan.label_counts == [1, 1]


def test_labels_are_sorted_distinct_and_written_to_labels_json(tmp_path: Path) -> None:
    path = tmp_path / "urls.csv"
    labels = ["zebra", "ant", "Bee", "ant", "zebra", "ant", "ému", "10", "9"]
    path.write_text(
        "url,label\n" + "".join(f"{DEAD}/{i}.jpg,{label}\n" for i, label in enumerate(labels)),
        encoding="utf-8",
    )

    plan, _ = plan_for(tmp_path, path, label="label", shard_size=4)

    assert plan.labels == sorted(set(labels)) == ["10", "9", "Bee", "ant", "zebra", "ému"]
    numeric = tmp_path / "numeric.csv"
    numeric.write_text(
        "url,label\n" + "".join(f"{DEAD}/{i}.jpg,{n}\n" for i, n in enumerate([10, 9, 100, 9])),
        encoding="utf-8",
    )
    numeric_plan, _ = plan_for(tmp_path / "n", numeric, label="label")
    assert numeric_plan.labels == ["9", "10", "100"]  # taxon ids in numeric order
    assert plan.class_index() == {label: i for i, label in enumerate(plan.labels)}
    written = json.loads((tmp_path / "out" / LABELS_FILE).read_text(encoding="utf-8"))
    assert written == [
        {"index": i, "label": label, "rows": labels.count(label)}
        for i, label in enumerate(plan.labels)
    ]
    reloaded = Plan.load(tmp_path / "out")
    assert reloaded is not None
    assert reloaded.labels == plan.labels
    assert reloaded.total_rows == len(labels)


def test_imagefolder_labels_json_has_folders(tmp_path: Path) -> None:
    path = tmp_path / "urls.csv"
    path.write_text(
        f"url,label\n{DEAD}/1.jpg,cat\n{DEAD}/2.jpg,a/b\n{DEAD}/3.jpg,cat\n", encoding="utf-8"
    )

    plan, _ = plan_for(tmp_path, path, label="label", output_format="imagefolder")
    # imagefolder's labels.json is written when the run ends, with the loaders' class indices
    assert not (tmp_path / "out" / LABELS_FILE).exists()
    write_labels_file(plan, {"cat": 2})

    written = json.loads((tmp_path / "out" / LABELS_FILE).read_text(encoding="utf-8"))
    assert [entry["label"] for entry in written] == ["a/b", "cat"]
    assert written[1]["folder"] == "cat"
    assert "/" not in written[0]["folder"]
    assert plan.label_folders == {entry["label"]: entry["folder"] for entry in written}
    # the order is the folders' (what torchvision and datasets use); a folder with no image
    # has no class index
    assert [entry["folder"] for entry in written] == sorted(entry["folder"] for entry in written)
    assert [entry["index"] for entry in written] == [None, 0]


def test_no_label_no_labels_json(tmp_path: Path) -> None:
    path = tmp_path / "urls.csv"
    path.write_text(delimited(ROWS, ","), encoding="utf-8")

    plan, table = plan_for(tmp_path, path)

    assert plan.labels is None
    assert not (tmp_path / "out" / LABELS_FILE).exists()
    assert "label" not in table.column_names
    assert plan.extra_columns == {"input_label": "label", "obs_id": "obs_id", "note": "note"}


def test_plan_files_are_complete_and_no_temporary_file_is_left(tmp_path: Path) -> None:
    path = tmp_path / "urls.csv"
    path.write_text(delimited(ROWS, ","), encoding="utf-8")

    plan, _ = plan_for(tmp_path, path, label="label")

    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == sorted([PLAN_TABLE, PLAN_META, LABELS_FILE])
    meta = json.loads((tmp_path / "out" / PLAN_META).read_text(encoding="utf-8"))
    assert meta["total_rows"] == 3
    assert meta["input"] == str(path.resolve())
    assert meta["url_column"] == "url" and meta["label_column"] == "label"
    assert plan.input_format == "csv"


# -- streaming -----------------------------------------------------------------------------------
# tracemalloc slows make_plan about 6x (it hooks every Python allocation; two per row), so the
# 2,000,000-row plan is measured with a fresh arrow pool, and the Python heap with tracemalloc on
# two smaller plans of the same data: its peak must not grow with the number of rows.
BIG_ROWS = 2_000_000
CHUNK = 200_000
MB = 1_000_000
_PROXY_POOLS: list[pa.MemoryPool] = []


def write_url_parquet(path: Path, rows: int) -> int:
    """`rows` rows (url, label among 50, int n) written CHUNK at a time; returns arrow bytes."""
    schema = pa.schema([("url", pa.string()), ("label", pa.string()), ("n", pa.int64())])
    label_cycle = pa.array([f"class_{i:02d}" for i in range(50)] * (CHUNK // 50))
    arrow_bytes = 0
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, rows, CHUNK):
            n = pa.array(range(start, min(rows, start + CHUNK)), pa.int64())
            urls = pc.binary_join_element_wise(f"{DEAD}/", pc.cast(n, pa.string()), ".jpg", "")
            chunk = pa.table([urls, label_cycle.slice(0, len(n)), n], schema=schema)
            arrow_bytes += chunk.nbytes
            writer.write_table(chunk)
    return arrow_bytes


def measured(action: Callable[[], Any], python: bool = False) -> tuple[Any, int, int, float]:
    """Run action with a fresh arrow pool as the default (and tracemalloc if `python`).

    Returns (result, arrow peak bytes, python peak bytes, seconds). The proxy pool forwards to
    the real pool but keeps its own statistics, so its max_memory() is the peak of this action
    alone, not the process-lifetime peak that default_memory_pool().max_memory() reports.
    """
    previous = pa.default_memory_pool()
    pool = pa.proxy_memory_pool(previous)
    # Buffers made through the proxy may outlive this call and are freed through it later, so
    # the proxy must outlive them: keep it for the whole session (freeing it crashes arrow).
    _PROXY_POOLS.append(pool)
    pa.set_memory_pool(pool)
    if python:
        tracemalloc.start()
    started = time.perf_counter()
    python_peak = 0
    try:
        result = action()
        seconds = time.perf_counter() - started
        if python:
            python_peak = tracemalloc.get_traced_memory()[1]
    finally:
        if python:
            tracemalloc.stop()
        pa.set_memory_pool(previous)
    return result, pool.max_memory(), python_peak, seconds


def test_planning_two_million_rows_streams(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "urls.parquet"
    input_bytes = write_url_parquet(source, BIG_ROWS)
    config = config_for(tmp_path, source, label="label")

    plan, arrow_peak, _, seconds = measured(lambda: make_plan(config, InputTable(config.input)))
    # Control: the same measurement sees a whole-table read, so it does measure.
    whole_bytes, control_peak, _, _ = measured(lambda: pq.read_table(source).nbytes)
    plan_bytes = plan.read_shard(0).nbytes * plan.shard_count  # the plan table held whole

    with capsys.disabled():
        print(
            f"\n[streaming] {BIG_ROWS:,} rows; as arrow: input {input_bytes / MB:.1f} MB, plan "
            f"{plan_bytes / MB:.1f} MB; peak of the arrow pool: reading the whole input "
            f"{control_peak / MB:.1f} MB (control), make_plan {arrow_peak / MB:.1f} MB "
            f"in {seconds:.1f} s"
        )

    assert control_peak >= 0.9 * whole_bytes, "the pool measurement misses allocations"
    assert whole_bytes == pytest.approx(input_bytes, rel=0.05)
    assert arrow_peak < 150 * MB
    assert arrow_peak < input_bytes / 3
    assert arrow_peak < plan_bytes / 4
    assert plan.total_rows == BIG_ROWS
    assert plan.shard_count == 200
    assert plan.labels == [f"class_{i:02d}" for i in range(50)]
    assert plan.label_counts == [BIG_ROWS // 50] * 50
    meta = pq.ParquetFile(plan.table_path).metadata
    assert {meta.row_group(i).num_rows for i in range(meta.num_row_groups)} == {10_000}
    row = plan.read_shard(42).slice(17, 1).to_pylist()[0]
    assert row == {
        "key": "000420017",
        "shard": 42,
        "row": 17,
        "url": f"{DEAD}/420017.jpg",
        "label": "class_17",
        "n": 420_017,
    }


def test_planning_python_heap_does_not_grow_with_rows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    peaks: dict[int, int] = {}
    for rows in (150_000, 300_000):
        source = tmp_path / f"urls-{rows}.parquet"
        input_bytes = write_url_parquet(source, rows)
        config = config_for(tmp_path / str(rows), source, label="label")
        plan, _, peaks[rows], seconds = measured(
            lambda config=config: make_plan(config, InputTable(config.input)), python=True
        )
        assert plan.total_rows == rows
        with capsys.disabled():
            print(
                f"\n[streaming] {rows:,} rows ({input_bytes / MB:.1f} MB as arrow): tracemalloc "
                f"peak of make_plan {peaks[rows] / MB:.2f} MB in {seconds:.1f} s"
            )

    # One input batch of labels as Python strings (~4 MB) is the peak, whatever the row count;
    # on the 2,000,000-row input (115 MB as arrow) it measured 4.3 MB, in 35 s under tracemalloc.
    assert peaks[300_000] < 1.1 * peaks[150_000] + 0.5 * MB, "Python memory grows with rows"
    assert peaks[300_000] < 16 * MB


def test_tsv_bare_quotes_do_not_swallow_rows(tmp_path: Path) -> None:
    """GBIF's TSV files are unquoted: a text field may hold a lone double quote."""
    path = tmp_path / "occurrence.tsv"
    path.write_text(
        "url\tlabel\tremarks\n"
        'http://127.0.0.1/a.jpg\tA\t"collected near the river\n'
        "http://127.0.0.1/b.jpg\tB\tplain\n"
        'http://127.0.0.1/c.jpg\tC\tsays "hi"\n',
        encoding="utf-8",
    )
    rows = pa.Table.from_batches(list(InputTable(path).batches())).to_pylist()
    assert [row["label"] for row in rows] == ["A", "B", "C"]
    assert rows[0]["remarks"] == '"collected near the river'


# -- inputs exported from spreadsheets and shell tools ------------------------------------------
@pytest.mark.parametrize("delimiter", [";", "\t", "|"])
def test_csv_with_another_delimiter_is_read(tmp_path: Path, delimiter: str) -> None:
    """Excel in many locales saves "CSV" with semicolons (and a BOM, and CRLF); a .csv that is
    really tab-separated is common too. Each used to be one column named 'url;label'."""
    path = tmp_path / "urls.csv"
    d = delimiter
    text = (
        f"\ufeffurl{d}label{d}note\r\n"
        f"http://127.0.0.1:9/a.jpg{d}cat{d}x\r\n"
        f"http://127.0.0.1:9/b.jpg?x=1,2{d}dog, big{d}\r\n"
    )
    path.write_bytes(text.encode("utf-8"))

    columns, rows = read_rows(path)

    assert columns == ["url", "label", "note"]
    assert rows == [
        {"url": "http://127.0.0.1:9/a.jpg", "label": "cat", "note": "x"},
        {"url": "http://127.0.0.1:9/b.jpg?x=1,2", "label": "dog, big", "note": ""},
    ]


def test_gbif_simple_csv_is_tab_separated_with_bare_quotes(tmp_path: Path) -> None:
    """GBIF's SIMPLE_CSV downloads are tab-separated files named .csv, with bare quotes."""
    path = tmp_path / "0012345-260101.csv"
    path.write_text('gbifID\tidentifier\tlocality\n1\thttp://h/a.jpg\t5" north of "the lake\n')

    assert read_rows(path) == (
        ["gbifID", "identifier", "locality"],
        [{"gbifID": "1", "identifier": "http://h/a.jpg", "locality": '5" north of "the lake'}],
    )


def test_semicolon_csv_keeps_quoted_cells(tmp_path: Path) -> None:
    path = tmp_path / "urls.csv"
    path.write_text('url;label\r\nhttp://h/a.jpg;"a; b"\r\nhttp://h/b.jpg;"two\r\nlines"\r\n')

    assert read_rows(path)[1] == [
        {"url": "http://h/a.jpg", "label": "a; b"},
        {"url": "http://h/b.jpg", "label": "two\r\nlines"},
    ]


@pytest.mark.parametrize("name", ["label;kind", "tags;a;b;c", "a|b"])
def test_comma_csv_whose_header_has_other_delimiters_stays_comma(tmp_path: Path, name: str) -> None:
    """A header with any comma is read as it always was."""
    path = tmp_path / "urls.csv"
    path.write_text(f"url,{name}\nhttp://h/a.jpg,x;y\n")

    assert read_rows(path) == (["url", name], [{"url": "http://h/a.jpg", name: "x;y"}])


def test_csv_with_trailing_empty_columns(tmp_path: Path) -> None:
    """Spreadsheets export empty columns as 'url,label,,'; the two nameless columns used to be
    refused as duplicate column names ['']."""
    path = tmp_path / "urls.csv"
    path.write_text("url,label,,\r\nhttp://h/a.jpg,cat,,\r\n")

    assert read_rows(path) == (
        ["url", "label", "column_2", "column_3"],
        [{"url": "http://h/a.jpg", "label": "cat", "column_2": "", "column_3": ""}],
    )


@pytest.mark.parametrize("header", ["url", "photo_url", "image URL"])
def test_txt_url_list_with_a_one_word_header(tmp_path: Path, header: str) -> None:
    """`cut -d, -f1 list.csv > urls.txt` keeps the header: it names the column instead of
    becoming an invalid_url row (and --url photo_url used to fail with 'it has: url')."""
    path = tmp_path / "urls.txt"
    path.write_text(f"{header}\nhttp://h/a.jpg\n\nhttp://h/b.jpg\n")

    assert read_rows(path) == (
        [header],
        [{header: "http://h/a.jpg"}, {header: "http://h/b.jpg"}],
    )


def test_txt_url_list_without_header_is_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "urls.txt"
    path.write_text("www.example.org/a.jpg\nhttp://h/b.jpg\n")

    assert read_rows(path) == (
        ["url"],
        [{"url": "www.example.org/a.jpg"}, {"url": "http://h/b.jpg"}],
    )


def test_txt_with_header_downloads_every_url(fresh_server: ImageServer, tmp_path: Path) -> None:
    path = tmp_path / "urls.txt"
    path.write_text(
        "photo_url\n" + "".join(fresh_server.url(f"img/{i}.jpg") + "\n" for i in range(3))
    )

    result = flowdc.download(
        input=str(path), output=str(tmp_path / "ds"), url="photo_url", **QUICK_RUN
    )

    assert (result.total, result.successful) == (3, 3)


@pytest.mark.parametrize(
    ("kind", "hint"), [("xlsx", "Excel (.xlsx)"), ("parquet", "parquet"), ("xls", "(.xls)")]
)
def test_binary_table_named_as_text_says_what_it_is(tmp_path: Path, kind: str, hint: str) -> None:
    """A workbook saved as list.csv (or a parquet renamed) was 'not UTF-8 text'."""
    if kind == "xlsx":
        import openpyxl

        book = openpyxl.Workbook()
        book.active.append(["url"])
        book.save(tmp_path / "list.xlsx")
    elif kind == "parquet":
        pq.write_table(pa.table({"url": ["http://h/a.jpg"]}), tmp_path / "list.parquet")
    else:
        (tmp_path / "list.xls").write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00\xff" * 300)
    path = tmp_path / "list.csv"
    path.write_bytes((tmp_path / f"list.{kind}").read_bytes())

    with pytest.raises(FlowDCError) as error:
        list(InputTable(path).batches())

    assert hint in str(error.value) and "--input_format" in str(error.value)


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".txt", ".jsonl"])
@pytest.mark.parametrize("rows_before", [0, 3000])
def test_input_that_is_not_utf8_says_how_to_fix_it(
    tmp_path: Path, suffix: str, rows_before: int
) -> None:
    """Excel on Windows saves "CSV" in cp1252: the error said to set --input_format, which does
    not help; it now names the encoding problem and the fix."""
    path = tmp_path / f"urls{suffix}"
    if suffix == ".jsonl":
        lines = [b'{"url": "http://h/a.jpg", "label": "cat"}'] * rows_before
        lines.append(b'{"url": "http://h/b.jpg", "label": "caf\xe9"}')
    else:
        sep = b"\t" if suffix == ".tsv" else b","
        cell = b"" if suffix == ".txt" else sep + b"x"
        header = [] if suffix == ".txt" else [b"url" + sep + b"label"]
        lines = header + [b"http://h/a.jpg" + cell] * rows_before + [b"http://h/caf\xe9.jpg" + cell]
    path.write_bytes(b"\n".join(lines) + b"\n")

    with pytest.raises(FlowDCError) as error:
        list(InputTable(path).batches())

    message = str(error.value)
    assert "\n" not in message and "is not UTF-8" in message and "save it as UTF-8" in message
    assert "--input_format" not in message
