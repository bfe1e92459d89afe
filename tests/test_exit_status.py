"""`flowdc download`'s exit status, which a pipeline acts on: run through the real command
against the test server."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from flowdc.testserver import ImageServer
from tests.conftest import run_cli

FAST = ["--processes", "1", "--retry_backoff_sec", "0.01", "--max_retry_attempts", "0",
        "--timeout", "5", "--no-enable_rate_limiting", "--no-progress"]  # fmt: skip


def _urls(server: ImageServer, path: Path, good: int, bad: int) -> Path:
    urls = [server.url(f"img/{i}.jpg") for i in range(good)]
    urls += [server.url(f"status/404/{i}.jpg") for i in range(bad)]
    pq.write_table(pa.table({"url": urls}), path)
    return path


def _download(table: Path, output: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return run_cli("download", "--input", str(table), "--output", str(output), *FAST, *extra)


def _last_line(done: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in done.stderr, done.stderr
    return done.stderr.strip().splitlines()[-1]


def test_help_lists_every_exit_status() -> None:
    done = run_cli("download", "--help")
    assert done.returncode == 0
    text = " ".join(done.stdout.split())
    assert "exit status: 0 the run finished; 1 it did not finish" in text
    for part in ("2 a bad option", "3 it finished but no image", "4 it finished below "
                 "--min_success_rate", "130 interrupted"):  # fmt: skip
        assert part in text, text


def test_a_finished_run_with_some_failures_exits_0(server: ImageServer, tmp_path: Path) -> None:
    table = _urls(server, tmp_path / "urls.parquet", good=8, bad=2)
    done = _download(table, tmp_path / "out", "--min_success_rate", "0.8")
    assert done.returncode == 0, done.stderr
    assert "8 of 10 images downloaded" in done.stdout


def test_a_run_that_downloaded_nothing_exits_3(server: ImageServer, tmp_path: Path) -> None:
    table = _urls(server, tmp_path / "urls.parquet", good=0, bad=4)
    done = _download(table, tmp_path / "out")
    assert done.returncode == 3, done.stderr
    assert _last_line(done) == "flowdc: no image was downloaded (exit status 3)"
    assert (tmp_path / "out" / "00000_stats.json").exists()  # it did finish


def test_a_run_below_min_success_rate_exits_4(server: ImageServer, tmp_path: Path) -> None:
    table = _urls(server, tmp_path / "urls.parquet", good=7, bad=3)
    done = _download(table, tmp_path / "out", "--min_success_rate", "0.75")
    assert done.returncode == 4, done.stderr
    assert _last_line(done) == (
        "flowdc: 70.0% of the requested rows gave an image, below --min_success_rate 0.75 "
        "(exit status 4)"
    )
    again = _download(table, tmp_path / "out", "--min-success-rate", "0.7")  # resumed: finished
    assert again.returncode == 0, again.stderr


def test_min_success_rate_outside_0_to_1_is_a_usage_error(tmp_path: Path) -> None:
    pq.write_table(pa.table({"url": ["http://127.0.0.1:9/a.jpg"]}), tmp_path / "urls.parquet")
    done = _download(tmp_path / "urls.parquet", tmp_path / "out", "--min_success_rate", "90")
    assert done.returncode == 2
    assert _last_line(done) == (
        "flowdc: error: bad value for 'min_success_rate' (command line): Input should be less "
        "than or equal to 1 (got 90.0)"
    )
    assert not (tmp_path / "out").exists()


def test_a_failed_shard_exits_1(server: ImageServer, tmp_path: Path) -> None:
    table = _urls(server, tmp_path / "urls.parquet", good=4, bad=0)
    output = tmp_path / "out"
    assert _download(table, output, "--shard_size", "2").returncode == 0
    (output / "00001_stats.json").unlink()
    (output / "00001.tar").unlink()
    (output / "00001.tar" / "in the way").mkdir(parents=True)  # the tar cannot be renamed here
    done = _download(table, output, "--shard_size", "2")
    assert done.returncode == 1, done.stderr
    assert "shard 1 failed" in done.stderr and _last_line(done).startswith("run the same command")


def test_rows_left_out_by_class_sampling_do_not_count_against_min_success_rate(
    server: ImageServer, tmp_path: Path
) -> None:
    """--max_per_class leaves rows out on purpose (never requested): the rate is over the
    rows the run requested."""
    urls = [server.url(f"img/{i}.jpg") for i in range(8)]
    pq.write_table(pa.table({"url": urls, "label": ["a", "b"] * 4}), tmp_path / "urls.parquet")
    done = _download(tmp_path / "urls.parquet", tmp_path / "out", "--label", "label",
                     "--max_per_class", "2", "--min_success_rate", "0.9")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "4 of 8 images downloaded" in done.stdout and "class_capped 4" in done.stdout
