"""QA round 2: what researchers hit when they use FLOW-DC as they would (inputs exported from
spreadsheets, resuming with other options, ...), each against the real test server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import flowdc
from flowdc.core.errors import FlowDCError
from flowdc.core.layout import PLAN_META
from flowdc.planning.inputs import InputTable
from flowdc.testserver import ImageServer

FAST: dict[str, Any] = {
    "processes": 1,
    "retry_backoff_sec": 0.01,
    "timeout": 5,
    "enable_rate_limiting": False,
    "shard_size": 2,
}


def read_rows(path: Path) -> tuple[list[str], list[dict[str, Any]]]:
    table = InputTable(path)
    return table.column_names(), [row for batch in table.batches() for row in batch.to_pylist()]


def url_table(server: ImageServer, path: Path, rows: int = 4) -> Path:
    urls = [server.url(f"img/{i}.jpg") for i in range(rows)]
    pq.write_table(pa.table({"url": urls, "label": ["a", "b"] * (rows // 2)}), path)
    return path


# -- resuming with other image options ---------------------------------------------------------
def test_resume_with_other_processing_options_is_refused(
    fresh_server: ImageServer, tmp_path: Path
) -> None:
    """A rerun with --resize_mode (or any option that changes what is stored) used to report
    every shard done, and overview.json then claimed the resize the images never had; a
    resume of a partial run mixed resized and original images in one dataset."""
    source, output = url_table(fresh_server, tmp_path / "urls.parquet"), tmp_path / "ds"
    first = flowdc.download(input=str(source), output=str(output), **FAST)
    assert first.successful == 4
    hits = sum(fresh_server.hits.values())

    with pytest.raises(FlowDCError) as refused:
        flowdc.download(
            input=str(source), output=str(output), resize_mode="center_crop", image_size=32, **FAST
        )
    message = str(refused.value)
    assert "\n" not in message
    assert "resize_mode 'no' -> 'center_crop'" in message and "image_size" in message
    assert "--overwrite" in message
    with pytest.raises(FlowDCError, match="dedupe False -> True"):
        flowdc.download(input=str(source), output=str(output), dedupe=True, **FAST)
    with pytest.raises(FlowDCError, match="min_image_size 0 -> 80"):
        flowdc.download(
            input=str(source), output=str(output), min_image_size=80, retry_failed=True, **FAST
        )
    assert sum(fresh_server.hits.values()) == hits, "a refused run fetched something"
    overview = json.loads((output / "overview.json").read_text())
    assert overview["script_inputs"]["resize_mode"] == "no"

    # options that change nothing stored (network ones; image_size without a resize, a quality
    # with nothing encoded) resume
    again = flowdc.download(
        input=str(source),
        output=str(output),
        image_size=32,
        encode_quality=50,
        **{**FAST, "timeout": 7},
    )
    assert again.successful == 4
    assert sum(fresh_server.hits.values()) == hits


def test_resume_of_an_output_planned_before_settings_were_recorded(
    fresh_server: ImageServer, tmp_path: Path
) -> None:
    """Outputs made by earlier versions have no recorded settings: they resume as before."""
    source, output = url_table(fresh_server, tmp_path / "urls.parquet"), tmp_path / "ds"
    flowdc.download(input=str(source), output=str(output), **FAST)
    meta = json.loads((output / PLAN_META).read_text())
    del meta["settings"]
    (output / PLAN_META).write_text(json.dumps(meta))

    again = flowdc.download(input=str(source), output=str(output), dedupe=True, **FAST)
    assert again.successful == 4


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

    result = flowdc.download(input=str(path), output=str(tmp_path / "ds"), url="photo_url", **FAST)

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


# -- paths ---------------------------------------------------------------------------------------
def test_home_in_config_paths_is_expanded(
    fresh_server: ImageServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A shell expands ~ on the command line, but not in a JSON config file or a Python call:
    '~/datasets/birds' used to make a folder named '~' in the working directory (which a user
    then removes with `rm -rf ~`...)."""
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir(), work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    url_table(fresh_server, home / "urls.parquet")
    config = work / "config.json"
    config.write_text(json.dumps({"input": "~/urls.parquet", "output": "~/datasets/birds"}))

    result = flowdc.download(config, **FAST)

    assert result.successful == 4
    assert result.output == home / "datasets" / "birds"
    assert (home / "datasets" / "birds" / "overview.json").exists()
    assert list(work.iterdir()) == [config]


def test_paths_may_be_pathlib_paths(fresh_server: ImageServer, tmp_path: Path) -> None:
    """In a notebook, flowdc.download(input=Path(...)) was 'Input should be a valid string'
    (while DownloadResult.output is a Path)."""
    source = url_table(fresh_server, tmp_path / "urls.parquet")

    result = flowdc.download(input=source, output=tmp_path / "ds", **FAST)

    assert (result.successful, result.output) == (4, tmp_path / "ds")


# -- web-scale lists ---------------------------------------------------------------------------
def test_overview_lists_the_biggest_hosts_and_sums_the_others(
    fresh_server: ImageServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A LAION-style list has millions of hosts: overview.json listed every one (about 440
    bytes each: 8.8 MB for 20,000 hosts, gigabytes at web scale). Nothing listens on port 9 of
    these loopback addresses, so each of those rows fails at once."""
    import flowdc.metadata.overview as overview_module

    monkeypatch.setattr(overview_module, "MAX_LISTED_HOSTS", 5)
    urls = [fresh_server.url(f"img/{i}.jpg") for i in range(3)]
    urls += [f"http://127.9.0.{i}:9/x.jpg" for i in range(1, 9)]
    source = tmp_path / "urls.parquet"
    pq.write_table(pa.table({"url": urls}), source)

    result = flowdc.download(
        input=str(source), output=str(tmp_path / "ds"), **{**FAST, "max_retry_attempts": 0}
    )

    overview = json.loads((tmp_path / "ds" / "overview.json").read_text())
    listed = overview["per_host"]
    assert len(listed) == 5
    assert listed["127.0.0.1"]["rows"] == 3  # the biggest host first
    others = overview["per_host_others"]
    assert others["hosts"] == 4 and others["rows"] == 4 and others["failures"] == 4
    assert sum(f["rows"] for f in listed.values()) + others["rows"] == result.total == 11
    report = (tmp_path / "ds" / "report.html").read_text()
    assert "and 4 more hosts" in report


def test_remote_input_url_with_a_query_string(tmp_path: Path, images: dict[str, bytes]) -> None:
    """Zenodo and presigned object-store links end in ?download=1 or ?X-Amz-...: the query
    string was kept in the local copy's name, so the format could not be told from it."""
    with ImageServer(dict(images), hosts=("127.0.0.1",)) as lists:
        csv_text = "url\n" + "".join(lists.url(f"img/{i}.jpg") + "\n" for i in range(3))
        lists.images["urls.csv"] = csv_text.encode()

        result = flowdc.download(
            input=lists.url("img/urls.csv?download=1#top"), output=str(tmp_path / "ds"), **FAST
        )

    assert (result.total, result.successful) == (3, 3)


# -- networks ------------------------------------------------------------------------------------
def test_http_proxy_from_the_environment_is_used(
    fresh_server: ImageServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cluster compute nodes often reach the web only through the proxy that http_proxy /
    https_proxy name (curl, wget, pip and requests use it); FLOW-DC ignored it, so every URL
    failed to connect. Nothing listens on port 9: only the proxy (the test server, which
    answers absolute-form requests) can serve these URLs."""
    monkeypatch.setenv("HTTP_PROXY", fresh_server.url("").rstrip("/"))
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    urls = [f"http://127.0.0.1:9/img/{i}.jpg" for i in range(3)]
    source = tmp_path / "urls.parquet"
    pq.write_table(pa.table({"url": urls}), source)

    result = flowdc.download(input=str(source), output=str(tmp_path / "ds"), **FAST)

    assert (result.total, result.successful) == (3, 3)
    assert flowdc.fetch(urls[0], timeout=5).status == "success"


def test_the_proxy_is_chosen_once_per_host_and_no_proxy_is_honoured(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Read once (aiohttp's trust_env read the environment and ~/.netrc on every request, in
    threads: 300 us an image); no_proxy hosts go direct; credentials go apart from the URL."""
    from yarl import URL

    from flowdc.shard.fetch.proxy import Proxies

    monkeypatch.setenv("HTTP_PROXY", "http://user:secret@127.0.0.9:3128")
    monkeypatch.setenv("NO_PROXY", "127.0.0.2,.example.org")
    proxies = Proxies()
    monkeypatch.delenv("HTTP_PROXY")  # read once: a later change is not seen
    chosen = proxies.for_url(URL("http://127.0.0.1/a.jpg"))
    assert chosen is not None
    assert (str(chosen[0]), chosen[1] and chosen[1].password) == ("http://127.0.0.9:3128", "secret")
    assert proxies.for_url(URL("http://127.0.0.2/a.jpg")) is None
    assert proxies.for_url(URL("http://img.example.org/a.jpg")) is None
    assert proxies.for_url(URL("https://127.0.0.1/a.jpg")) is None  # no https_proxy given


def test_output_inside_an_unzipped_gbif_download_resumes(
    fresh_server: ImageServer, tmp_path: Path
) -> None:
    """`--input gbif --output gbif/images`: the folder's fingerprint took in the output's own
    files, so every rerun (a resume after a crash, --retry_failed) was refused as another input."""
    from tests.test_dwca import IMAGE_ROWS, build_archive

    folder = build_archive(tmp_path / "gbif", fresh_server, zipped=False)
    output = folder / "images"
    first = flowdc.download(input=str(folder), output=str(output), label="species", **FAST)
    assert first.total == IMAGE_ROWS
    hits = sum(fresh_server.hits.values())

    again = flowdc.download(input=str(folder), output=str(output), label="species", **FAST)
    retried = flowdc.download(
        input=str(folder), output=str(output), label="species", retry_failed=True, **FAST
    )

    assert (again.successful, retried.successful) == (first.successful, first.successful)
    assert sum(fresh_server.hits.values()) == hits
    (folder / "occurrence.txt").write_text("changed\n")  # the archive itself still counts
    with pytest.raises(FlowDCError, match="input fingerprint"):
        flowdc.download(input=str(folder), output=str(output), label="species", **FAST)


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


# -- the CLI ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("address", ["notaurl", "tcp://manager", "http://manager:8786/x"])
def test_worker_with_a_bad_address_is_a_one_line_error(address: str) -> None:
    """`flowdc worker notaurl` printed dask's 40-line traceback (missing port number)."""
    from tests.conftest import run_cli

    done = run_cli("worker", address, timeout=60)

    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith("flowdc: error:") and len(done.stderr.strip().splitlines()) == 1
    assert address in done.stderr and "tcp://HOST:PORT" in done.stderr


# -- labels ----------------------------------------------------------------------------------------
def test_labels_differing_only_in_surrounding_spaces_are_one_class(
    fresh_server: ImageServer, tmp_path: Path
) -> None:
    """A hand-edited spreadsheet has 'Rosa canina ' beside 'Rosa canina': they were two classes
    (two folders, 'Rosa canina' and 'Rosa canina_<hash>'), splitting one species."""
    source = tmp_path / "urls.csv"
    labels = ["Rosa canina", "Rosa canina ", " Rosa canina", "Bellis\t", "Bellis", "  "]
    lines = [f"{fresh_server.url(f'img/{i}.jpg')},{label}" for i, label in enumerate(labels)]
    source.write_text("url,label\n" + "\n".join(lines) + "\n")

    result = flowdc.download(
        input=str(source),
        output=str(tmp_path / "ds"),
        label="label",
        output_format="imagefolder",
        **FAST,
    )

    assert result.successful == 5 and result.failures == {"missing_label": 1}
    classes = json.loads((tmp_path / "ds" / "labels.json").read_text())
    assert [(c["label"], c["folder"], c["images"]) for c in classes] == [
        ("Bellis", "Bellis", 2),
        ("Rosa canina", "Rosa canina", 3),
    ]
    assert set(flowdc.results(tmp_path / "ds").column("label").to_pylist()) == {
        "Bellis",
        "Rosa canina",
        None,
    }
