"""The Python API (flowdc.download, fetch, fetch_many, results) against the real test server,
from plain code and from inside a running event loop (as in Jupyter)."""

from __future__ import annotations

import _thread
import asyncio
import hashlib
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import flowdc
from flowdc.testserver import ImageServer
from tests.conftest import parquet_url_table

FAST: dict[str, Any] = {
    "processes": 1,
    "retry_backoff_sec": 0.01,
    "timeout": 5,
    "enable_rate_limiting": False,
}
FAST_FETCH = {k: v for k, v in FAST.items() if k != "processes"}


def url_table(server: ImageServer, path: Path, good: int = 12) -> tuple[Path, list[str]]:
    """`good` images in two classes, plus a 404, an HTML page and an invalid URL."""
    urls = [server.url(f"img/{i}.jpg", host=i % 2) for i in range(good)]
    urls += [server.url("status/404/gone.jpg"), server.url("html/page.jpg"), "ftp://x/y.jpg"]
    labels = ["cat" if i % 2 else "dog" for i in range(len(urls))]
    pq.write_table(pa.table({"url": urls, "label": labels}), path)
    return path, urls


# -- download ----------------------------------------------------------------------------------
def test_download_with_keywords_returns_counts_and_results(
    server: ImageServer, images: dict[str, bytes], tmp_path: Path
) -> None:
    table, urls = url_table(server, tmp_path / "urls.parquet")
    result = flowdc.download(
        input=str(table), output=str(tmp_path / "ds"), label="label", shard_size=5, **FAST
    )
    assert isinstance(result, flowdc.DownloadResult)
    assert result.output == tmp_path / "ds"
    assert (result.total, result.successful, result.failed, result.not_processed) == (15, 12, 3, 0)
    assert result.failures == {"failed_to_download": 1, "not_an_image": 1, "invalid_url": 1}
    assert result.ok and result.shard_errors == {}
    assert result.overview == json.loads((tmp_path / "ds" / "overview.json").read_text())
    assert result.results_files == [tmp_path / "ds" / f"0000{i}.parquet" for i in range(3)]

    table_back = flowdc.results(tmp_path / "ds")
    assert table_back.num_rows == 15
    assert sorted(table_back.column("url").to_pylist()) == sorted(urls)
    rows = {row["url"]: row for row in table_back.to_pylist()}
    for i in range(12):
        row = rows[server.url(f"img/{i}.jpg", host=i % 2)]
        assert row["status"] == "success"
        assert row["sha256"] == hashlib.sha256(images[f"{i}.jpg"]).hexdigest()
    assert result.results().equals(table_back)
    frame = flowdc.results_dataframe(tmp_path / "ds")
    assert len(frame) == 15 and frame["status"].value_counts()["success"] == 12


def test_download_from_config_file_object_and_dict_resumes(
    fresh_server: ImageServer, tmp_path: Path
) -> None:
    table, _ = url_table(fresh_server, tmp_path / "urls.parquet", good=6)
    config_file = tmp_path / "config.json"
    config_file.write_text(
        json.dumps({"input": str(table), "output": str(tmp_path / "ds"), "label": "label", **FAST})
    )
    first = flowdc.download(config_file, shard_size=3)  # keyword arguments override the file
    assert (first.total, first.successful, len(first.results_files)) == (9, 6, 3)
    hits = sum(fresh_server.hits.values())

    # the same run again, as a DownloadConfig and as a dict: every shard is committed already
    config = flowdc.DownloadConfig(
        input=str(table), output=str(tmp_path / "ds"), label="label", shard_size=3, **FAST
    )
    again = flowdc.download(config)
    as_dict = flowdc.download(config.model_dump())
    assert sum(fresh_server.hits.values()) == hits, "a finished output was fetched again"
    for rerun in (again, as_dict):
        assert (rerun.total, rerun.successful, rerun.failures) == (9, 6, first.failures)


def test_download_inside_a_running_event_loop(server: ImageServer, tmp_path: Path) -> None:
    table, _ = url_table(server, tmp_path / "urls.parquet", good=4)

    async def notebook_cell() -> tuple[flowdc.DownloadResult, list[flowdc.Fetched]]:
        asyncio.get_running_loop()  # a loop runs here, as in a Jupyter kernel
        result = flowdc.download(input=str(table), output=str(tmp_path / "ds"), **FAST)
        fetched = flowdc.fetch_many([server.url("img/1.jpg"), server.url("img/2.jpg")])
        return result, fetched

    result, fetched = asyncio.run(notebook_cell())
    assert (result.total, result.successful) == (7, 4)
    assert [f.status for f in fetched] == ["success", "success"]
    assert flowdc.results(tmp_path / "ds").num_rows == 7


# A user's script as written: no `if __name__ == "__main__":`. Each import of it leaves a file
# named after its process, so the test sees whether a worker ran the caller's code again.
PLAIN_SCRIPT = """\
import os, pathlib; pathlib.Path(f"imported-by-{{os.getpid()}}").touch()
import flowdc
r = flowdc.download(input={table!r}, output="ds", label="label", processes=2, shard_size=4,
                    enable_rate_limiting=False, progress=False)
print(r.ok)
"""


@pytest.mark.parametrize("how", ["script", "python -m", "python -c"])
def test_download_from_a_plain_script_needs_no_main_guard(
    server: ImageServer, tmp_path: Path, how: str
) -> None:
    """The local engine's workers start with no knowledge of the caller's main module: they
    used to run a guard-free script again, and its second download failed on the lock."""
    table, _ = url_table(server, tmp_path / "urls.parquet", good=8)
    code = PLAIN_SCRIPT.format(table=str(table))
    (tmp_path / "my_download.py").write_text(code, encoding="utf-8")
    command = {
        "script": [sys.executable, "my_download.py"],
        "python -m": [sys.executable, "-m", "my_download"],
        "python -c": [sys.executable, "-c", code],
    }[how]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert done.stdout.splitlines() == ["True"], done.stdout + done.stderr
    assert len(list(tmp_path.glob("imported-by-*"))) == 1  # the user's process only
    assert len(list((tmp_path / "ds").glob("*_stats.json"))) == 3


@pytest.fixture
def ctrl_c_handled() -> Any:
    """Python's own Ctrl-C handler, whatever this process inherited: a shell script's `cmd &`
    starts it with SIGINT ignored, and then `interrupt_main` (the simulated Ctrl-C) does nothing."""
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, inherited)


def test_download_interrupted_raises_keyboard_interrupt_and_resumes(
    fresh_server: ImageServer, tmp_path: Path, ctrl_c_handled: None
) -> None:
    urls = [fresh_server.url(f"slow/3/{i}.jpg") for i in range(4)]
    table = tmp_path / "slow.parquet"
    pq.write_table(pa.table({"url": urls}), table)
    options = {"input": str(table), "output": str(tmp_path / "ds"), "shard_size": 2, **FAST}

    def interrupt_when_fetching() -> None:
        deadline = time.monotonic() + 60
        while fresh_server.in_flight == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        _thread.interrupt_main()  # what Ctrl-C or Jupyter's stop button does

    threading.Thread(target=interrupt_when_fetching, daemon=True).start()
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt) as stopped:
        flowdc.download(**options)
    assert time.monotonic() - started < 30
    assert "run the same command again to resume" in str(stopped.value)
    assert not list((tmp_path / "ds").glob("*_stats.json")), "a shard committed mid-fetch"

    result = flowdc.download(**options)
    assert (result.total, result.successful, result.ok) == (4, 4, True)


def test_download_bad_input_is_one_flowdc_error(server: ImageServer, tmp_path: Path) -> None:
    table, _ = url_table(server, tmp_path / "urls.parquet", good=1)
    (tmp_path / "broken.json").write_text("{not json")
    cases: list[tuple[Any, dict[str, Any], str]] = [
        (None, {"output": str(tmp_path / "o")}, "missing required option 'input'"),
        (None, {"input": str(tmp_path / "nope.csv"), "output": str(tmp_path / "o")}, "nope.csv"),
        (None, {"input": str(table), "output": "o", "concurrent_download": 5}, "did you mean"),
        (None, {"input": str(table), "output": "o", "timeout": -1}, "bad value for 'timeout'"),
        (None, {"input": str(table), "output": "o", "url": "link"}, "link"),
        (tmp_path / "broken.json", {}, "is not valid JSON"),
        (tmp_path / "missing.json", {}, "config file not found"),
        (42, {}, "config must be a DownloadConfig"),
    ]
    for config, options, expected in cases:
        with pytest.raises(flowdc.FlowDCError) as error:
            flowdc.download(config, **options)
        message = str(error.value)
        assert expected in message and "\n" not in message, (options, message)


# -- fetch -------------------------------------------------------------------------------------
def test_fetch_returns_bytes_and_facts(fresh_server: ImageServer, images: dict[str, bytes]) -> None:
    fetched = flowdc.fetch(fresh_server.url("img/large.jpg"), **FAST_FETCH)
    data = images["large.jpg"]
    assert fetched.ok and fetched.status == "success"
    assert fetched.data == data
    assert (fetched.http_status, fetched.content_type) == (200, "image/jpeg")
    assert (fetched.size, fetched.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    assert (fetched.width, fetched.height, fetched.format) == (800, 600, "jpg")
    assert fetched.image().size == (800, 600)
    assert not list((Path.cwd()).glob("*.tar")), "fetch wrote a dataset"


def test_fetch_many_keeps_order_and_classifies_failures(
    fresh_server: ImageServer, images: dict[str, bytes]
) -> None:
    urls = [
        fresh_server.url("img/pic.png"),
        fresh_server.url("status/404/x.jpg"),
        fresh_server.url("html/x.jpg"),
        fresh_server.url("flaky/1/3.jpg"),
        fresh_server.url("redirect/2/4.jpg"),
        fresh_server.url("bigcl/2"),
        "not a url",
    ]
    got = flowdc.fetch_many(urls, max_bytes=1_000_000, **FAST_FETCH)
    assert [f.url for f in got] == urls
    assert [f.status for f in got] == [
        "success",
        "failed_to_download",
        "not_an_image",
        "success",
        "success",
        "too_large",
        "invalid_url",
    ]
    png, missing, html, flaky, redirected, big, invalid = got
    assert (png.format, png.width, png.height) == ("png", 50, 40)
    assert missing.http_status == 404 and missing.data is None
    assert html.data is not None and html.data.startswith(b"<html") and html.width is None
    assert flaky.attempts == 2 and flaky.data == images["3.jpg"]
    assert redirected.final_url == fresh_server.url("img/4.jpg")
    assert big.data is None and "max_bytes" in (big.error or "")
    assert invalid.attempts == 0
    with pytest.raises(flowdc.FlowDCError, match="no image from"):
        html.image()


def test_fetch_is_polite_like_download(fresh_server: ImageServer) -> None:
    """The same token bucket: 6 requests at 4/s with a burst of 1 take at least 1.25 s."""
    urls = [fresh_server.url(f"img/{i}.jpg") for i in range(6)]
    started = time.monotonic()
    got = flowdc.fetch_many(urls, rate_limit=4, rate_capacity=1, adaptive_rate_limit=False)
    assert all(f.ok for f in got)
    assert time.monotonic() - started >= 1.2


def test_fetch_inside_a_running_event_loop(server: ImageServer) -> None:
    async def notebook_cell() -> flowdc.Fetched:
        return flowdc.fetch(server.url("img/5.jpg"))

    assert asyncio.run(notebook_cell()).ok


def test_fetch_interrupted_in_a_running_loop_stops_cleanly(
    fresh_server: ImageServer, ctrl_c_handled: None
) -> None:
    def interrupt_when_fetching() -> None:
        deadline = time.monotonic() + 30
        while fresh_server.in_flight == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        _thread.interrupt_main()

    async def notebook_cell() -> None:
        threading.Thread(target=interrupt_when_fetching, daemon=True).start()
        flowdc.fetch(fresh_server.url("slow/20/1.jpg"))

    # a loop without asyncio.run's SIGINT handler, as in a Jupyter kernel: the interrupt is a
    # KeyboardInterrupt in the code that runs
    loop = asyncio.new_event_loop()
    started = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt):
            loop.run_until_complete(notebook_cell())
    finally:
        loop.close()
    assert time.monotonic() - started < 10
    assert not [t for t in threading.enumerate() if t.name == "flowdc-run-sync" and t.is_alive()]
    deadline = time.monotonic() + 5  # the cancelled fetch closed its connection
    while fresh_server.in_flight and time.monotonic() < deadline:
        time.sleep(0.02)
    assert fresh_server.in_flight == 0


def test_fetch_bad_input_is_one_flowdc_error(server: ImageServer) -> None:
    url = server.url("img/1.jpg")
    with pytest.raises(flowdc.FlowDCError, match="fetch does not take 'output'"):
        flowdc.fetch(url, output="somewhere")
    with pytest.raises(flowdc.FlowDCError, match="bad value for 'timeout'"):
        flowdc.fetch(url, timeout=0)
    with pytest.raises(flowdc.FlowDCError, match="list of URLs"):
        flowdc.fetch_many(url)
    assert flowdc.fetch_many([]) == []


# -- results and the package -------------------------------------------------------------------
def test_results_of_something_else_is_one_flowdc_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(flowdc.FlowDCError, match="no dataset folder"):
        flowdc.results(tmp_path / "absent")
    with pytest.raises(flowdc.FlowDCError, match="not a FLOW-DC output"):
        flowdc.results(tmp_path)
    monkeypatch.setitem(sys.modules, "pandas", None)  # as if pandas were not installed
    with pytest.raises(flowdc.FlowDCError, match="pandas is not installed"):
        flowdc.results_dataframe(tmp_path)


def test_public_names() -> None:
    from flowdc.shard.fetch.client import Fetcher  # importing the fetch subpackage

    assert Fetcher.__module__ == "flowdc.shard.fetch.client"
    assert callable(flowdc.fetch) and flowdc.fetch.__module__ == "flowdc.api"
    for name in flowdc.__all__:
        assert getattr(flowdc, name) is not None
    assert issubclass(flowdc.FlowDCError, Exception)
    with pytest.raises(AttributeError):
        _ = flowdc.run_download  # internals are not part of the root


def test_paths_may_be_pathlib_paths(fresh_server: ImageServer, tmp_path: Path) -> None:
    """In a notebook, flowdc.download(input=Path(...)) was 'Input should be a valid string'
    (while DownloadResult.output is a Path)."""
    source = parquet_url_table(fresh_server, tmp_path / "urls.parquet")

    result = flowdc.download(input=source, output=tmp_path / "ds", **FAST)

    assert (result.successful, result.output) == (4, tmp_path / "ds")
