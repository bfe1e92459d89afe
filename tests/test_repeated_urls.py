"""The same URL is requested once per run: rows that repeat an earlier row's URL get its outcome
and their own sample (or, with --dedupe, a reference), across shards, processes, resumes and
object storage. The real CLI against the real test server, which counts requests per path."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import tarfile
import threading
from pathlib import Path
from typing import Any

import pytest

from flowdc.config.options import DownloadConfig
from flowdc.planning.inputs import InputTable
from flowdc.planning.plan import make_plan
from flowdc.shard import repeats
from flowdc.shard.run import run_shard
from flowdc.testserver import ImageServer
from tests.conftest import run_cli
from tests.test_e2e import (
    RUN_TIMEOUT,
    assert_ok,
    background,
    check_imagefolder_rules,
    check_results,
    check_tar_layout,
    download,
    download_args,
    expected_key,
    group_pids,
    shard_files,
    temp_leftovers,
    wait_for,
    write_csv,
)

SHARD = 3
# 12 images, first seen in shards 0-4; repeats in the same shard (row 2), the next one and
# every later one; a 404 and an invalid URL, each repeated in another shard
ORDER = [0, 1, 0, 2, 3, 1, 4, 5, 6, 7, 2, 8, 9, 10, 11] + [(i * 5) % 12 for i in range(21)]


def repeated_rows(server: ImageServer) -> list[dict[str, str]]:
    rows = [
        {"url": server.url(f"img/{n}.jpg", host=n % 2), "label": f"c{i % 3}", "photo": f"p{i}"}
        for i, n in enumerate(ORDER)
    ]
    rows[20:20] = [{"url": server.url("status/404/x.jpg"), "label": "c0", "photo": "missing"}]
    rows += [
        {"url": server.url("status/404/x.jpg"), "label": "c1", "photo": "missing again"},
        {"url": "not a url", "label": "c2", "photo": "bad"},
        {"url": "not a url", "label": "c0", "photo": "bad again"},
    ]
    return rows


def first_rows(rows: list[dict[str, str]]) -> dict[str, int]:
    first: dict[str, int] = {}
    for index, row in enumerate(rows):
        first.setdefault(row["url"], index)
    return first


def check_repeats(
    output: Path, rows: list[dict[str, str]], images: dict[str, bytes], shard: int = SHARD
) -> dict[str, dict[str, Any]]:
    """Every row once; a repeat names its first row and has its outcome; every success has its
    own sample (its key, label and columns) holding the image's bytes."""
    by_key = check_results(output, rows, shard)
    first = first_rows(rows)
    for index, row in enumerate(rows):
        result = by_key[expected_key(index, shard)]
        owner = by_key[expected_key(first[row["url"]], shard)]
        if first[row["url"]] == index:
            assert result["same_url_as"] is None, result
            assert result["attempts"] or result["status"] == "invalid_url", result
        else:
            assert result["same_url_as"] == owner["key"], result
            assert result["attempts"] == 0
            assert (result["status"], result["error"], result["http_status"]) == (
                owner["status"],
                owner["error"],
                owner["http_status"],
            )
            assert result["sha256"] == owner["sha256"]
        assert result["label"] == row["label"] and result.get("photo") == row.get("photo")
        if result["status"] == "success":
            name = row["url"].rsplit("/", 1)[-1]
            assert hashlib.sha256(images[name]).hexdigest() == result["sha256"]
    return by_key


def check_webdataset_samples(
    output: Path, by_key: dict[str, dict[str, Any]], images: dict[str, bytes]
) -> None:
    samples = check_tar_layout(output)
    ok = {key for key, row in by_key.items() if row["status"] == "success"}
    assert set(samples) == ok
    labels = {
        entry["label"]: entry["index"] for entry in json.loads((output / "labels.json").read_text())
    }
    for key in ok:
        row, sample = by_key[key], samples[key]
        assert sample["jpg"] == images[row["url"].rsplit("/", 1)[-1]], key
        assert sample["txt"].decode() == row["label"]
        assert int(sample["cls"]) == labels[row["label"]]
        meta = json.loads(sample["json"])
        assert (meta["key"], meta.get("photo"), meta["label"]) == (
            key,
            row.get("photo"),
            row["label"],
        )


def check_imagefolder_samples(
    output: Path, by_key: dict[str, dict[str, Any]], images: dict[str, bytes]
) -> None:
    folders = {e["label"]: e["folder"] for e in json.loads((output / "labels.json").read_text())}
    ok = {key for key, row in by_key.items() if row["status"] == "success"}
    files = {
        p.relative_to(output).as_posix()
        for d in output.iterdir()
        if d.is_dir()
        for p in d.iterdir()
    }
    assert files == {by_key[key]["path"] for key in ok}
    for key in ok:
        row = by_key[key]
        assert row["path"] == f"{folders[row['label']]}/{key}.jpg"
        assert (output / row["path"]).read_bytes() == images[row["url"].rsplit("/", 1)[-1]]
    check_imagefolder_rules(output)


@pytest.mark.parametrize(
    ("output_format", "processes"),
    [("webdataset", "1"), ("webdataset", "2"), ("imagefolder", "2")],
)
def test_each_url_is_requested_once_and_every_row_gets_its_sample(
    fresh_server: ImageServer,
    images: dict[str, bytes],
    tmp_path: Path,
    output_format: str,
    processes: str,
) -> None:
    rows = repeated_rows(fresh_server)
    source = write_csv(tmp_path / "in.csv", rows)
    output = tmp_path / "out"
    done = download(
        source, output, "--label", "label", "--shard_size", str(SHARD),
        "--output_format", output_format, "--processes", processes,
    )  # fmt: skip
    assert_ok(done)
    assert fresh_server.hits and set(fresh_server.hits.values()) == {1}, fresh_server.hits
    assert len(fresh_server.hits) == 13  # 12 images and the 404
    by_key = check_repeats(output, rows, images)
    if output_format == "webdataset":
        check_webdataset_samples(output, by_key, images)
    else:
        check_imagefolder_samples(output, by_key, images)
    assert not temp_leftovers(output)
    overview = json.loads((output / "overview.json").read_text())
    repeated = len(rows) - len(first_rows(rows))
    assert overview["download_summary"]["requests_saved_by_repeated_urls"] == repeated
    assert overview["input"]["repeated_url_rows"] == repeated
    assert overview["download_summary"]["successful"] == len(ORDER)
    assert "requests saved (repeated URLs)" in (output / "report.html").read_text()
    checked = run_cli("validate", str(output))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_with_dedupe_a_repeat_is_a_reference_to_the_stored_sample(
    fresh_server: ImageServer, images: dict[str, bytes], tmp_path: Path
) -> None:
    rows = repeated_rows(fresh_server)
    source = write_csv(tmp_path / "in.csv", rows)
    output = tmp_path / "out"
    done = download(source, output, "--label", "label", "--shard_size", str(SHARD), "--dedupe")
    assert_ok(done)
    assert set(fresh_server.hits.values()) == {1}
    by_key = check_results(output, rows, SHARD)
    first = first_rows(rows)
    stored = {key for key, row in by_key.items() if row["status"] == "success"}
    assert stored == {expected_key(i, SHARD) for i in first.values() if "img/" in rows[i]["url"]}
    for index, row in enumerate(rows):
        result = by_key[expected_key(index, SHARD)]
        owner = expected_key(first[row["url"]], SHARD)
        if "img/" in row["url"] and result["key"] != owner:
            assert (result["status"], result["duplicate_of"], result["same_url_as"]) == (
                "duplicate",
                owner,
                owner,
            )
            assert result["path"] is None
    assert set(check_tar_layout(output)) == stored


def test_a_failure_worth_retrying_is_retried_once_for_every_row_of_its_url(
    fresh_server: ImageServer, images: dict[str, bytes], tmp_path: Path
) -> None:
    """The first row's shard retries the URL; a repeat in a later shard waits for that retry
    pass to commit, then takes what it got."""
    flaky = fresh_server.url("flaky/1/3.jpg")  # 503 once, then the image
    rows = [
        {"url": flaky if i in (0, 4, 7) else fresh_server.url(f"img/{10 + i}.jpg"), "label": "a"}
        for i in range(9)
    ]
    source = write_csv(tmp_path / "in.csv", rows)
    output = tmp_path / "out"
    args = ("--label", "label", "--shard_size", str(SHARD), "--max_retry_attempts", "0")
    assert_ok(download(source, output, *args))
    by_key = check_results(output, rows, SHARD)
    assert [by_key[expected_key(i, SHARD)]["status"] for i in (0, 4, 7)] == [
        "failed_to_download"
    ] * 3
    assert fresh_server.hits["/flaky/1/3.jpg"] == 1

    assert_ok(download(source, output, *args, "--retry_failed"))
    assert fresh_server.hits["/flaky/1/3.jpg"] == 2
    by_key = check_repeats(output, rows, images)
    assert {row["status"] for row in by_key.values()} == {"success"}
    check_webdataset_samples(output, by_key, images)


KILL_ROWS = 60


@pytest.mark.parametrize("output_format", ["webdataset", "imagefolder"])
def test_kill_and_resume_request_no_url_twice_that_a_committed_shard_holds(
    fresh_server: ImageServer, images: dict[str, bytes], tmp_path: Path, output_format: str
) -> None:
    # 20 slow URLs, each in 3 rows spread over the list; 12 shards of 5 rows, 2 processes
    rows = [
        {
            "url": fresh_server.url(f"slow/0.3/{k}.jpg", host=k % 2),
            "label": f"c{i % 2}",
            "photo": f"p{i}",
        }
        for i, k in ((i, (i * 7) % 20) for i in range(KILL_ROWS))
    ]
    source = write_csv(tmp_path / "in.csv", rows)
    output = tmp_path / "out"
    args = download_args(
        source, output, "--label", "label", "--shard_size", "5", "--concurrent_downloads", "4",
        "--output_format", output_format,
    )  # fmt: skip
    with background(args, tmp_path / "killed") as run:
        run.wait_for_stats(output, 2)
        os.killpg(run.pgid, signal.SIGKILL)
        run.proc.wait(15)
        assert wait_for(lambda: not group_pids(run.pgid), 10)
    committed = {int(p.name[:5]) for p in shard_files(output, "_stats.json")}
    assert 2 <= len(committed) < 12
    hits_at_kill = dict(fresh_server.hits)
    first = first_rows(rows)
    owned_by_committed = {
        "/" + rows[i]["url"].split("/", 3)[3] for i in first.values() if i // 5 in committed
    }

    done = run_cli(*args, timeout=RUN_TIMEOUT)
    assert_ok(done)
    for path, count in fresh_server.hits.items():
        assert count - hits_at_kill.get(path, 0) <= 1, path  # the resume asks each URL once
        if path in owned_by_committed:
            assert count == 1, path  # its first row's shard was committed: never asked again
    by_key = check_repeats(output, rows, images, shard=5)
    assert {row["status"] for row in by_key.values()} == {"success"}
    if output_format == "webdataset":
        check_webdataset_samples(output, by_key, images)
    else:
        check_imagefolder_samples(output, by_key, images)
    assert not temp_leftovers(output)


# -- one shard at a time, in this process ----------------------------------------------------
def _plan(tmp_path: Path, urls: list[str]) -> DownloadConfig:
    """A plan of `urls` in shards of 2 rows, whose shards the test runs one by one."""
    source = write_csv(tmp_path / "in.csv", [{"url": url, "label": "a"} for url in urls])
    config = DownloadConfig(
        input=str(source), output=str(tmp_path / "out"), label="label", shard_size=2,
        processes=1, retry_backoff_sec=0.01, enable_rate_limiting=False, timeout=5,
    )  # fmt: skip
    (tmp_path / "out").mkdir()
    make_plan(config, InputTable(source))
    return config


def _results(output: Path, shard: int) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    return pq.read_table(output / f"{shard:05d}.parquet").to_pylist()


def test_a_repeat_waits_for_its_first_rows_shard_while_it_runs(
    fresh_server: ImageServer, tmp_path: Path
) -> None:
    slow = fresh_server.url("slow/0.5/1.jpg")
    config = _plan(tmp_path, [slow, fresh_server.url("img/2.jpg"), slow])

    def first_shard_later() -> None:
        threading.Event().wait(0.5)  # shard 1 waits for shard 0, which starts half a second later
        run_shard(config.output, 0, config)

    later = threading.Thread(target=first_shard_later)
    later.start()
    result = run_shard(config.output, 1, config)
    later.join(30)
    assert result.successes == 1
    repeat = _results(Path(config.output), 1)[0]
    assert (repeat["status"], repeat["same_url_as"], repeat["attempts"]) == ("success", "000000", 0)
    assert fresh_server.hits["/slow/0.5/1.jpg"] == 1


def test_a_repeat_whose_first_rows_shard_never_runs_is_fetched_itself(
    fresh_server: ImageServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(repeats, "OWNER_DEAD_SECONDS", 0.5)
    url = fresh_server.url("img/5.jpg")
    config = _plan(tmp_path, [url, fresh_server.url("img/6.jpg"), url])
    run_shard(config.output, 1, config)  # shard 0 (the first row of img/5) is never run
    repeat = _results(Path(config.output), 1)[0]
    assert (repeat["status"], repeat["same_url_as"], repeat["attempts"]) == ("success", None, 1)
    assert fresh_server.hits["/img/5.jpg"] == 1


def test_a_repeat_whose_stored_sample_is_damaged_is_fetched_itself(
    fresh_server: ImageServer, images: dict[str, bytes], tmp_path: Path
) -> None:
    url = fresh_server.url("img/7.jpg")
    config = _plan(tmp_path, [url, fresh_server.url("img/8.jpg"), url])
    output = Path(config.output)
    run_shard(config.output, 0, config)
    with tarfile.open(output / "00000.tar") as tar:
        member = tar.getmember("000000.jpg")
    with open(output / "00000.tar", "r+b") as handle:  # a flipped byte in the stored image
        handle.seek(member.offset_data + 100)
        byte = handle.read(1)
        handle.seek(member.offset_data + 100)
        handle.write(bytes([byte[0] ^ 0xFF]))
    run_shard(config.output, 1, config)
    repeat = _results(output, 1)[0]
    assert (repeat["status"], repeat["same_url_as"]) == ("success", None)
    assert fresh_server.hits["/img/7.jpg"] == 2
    with tarfile.open(output / "00001.tar") as tar:
        stored = tar.extractfile("000010.jpg")
        assert stored is not None and stored.read() == images["7.jpg"]


def test_a_shard_that_sees_no_other_shard_fetches_its_repeats_at_once() -> None:
    """TaskVine's gathered mode: a worker's sandbox holds its own shard only, so waiting for an
    earlier shard's commit (30 s before giving up, as LocalCommitted would) only stalls it."""
    import asyncio
    import time

    from flowdc.shard.committed import NoOtherShards
    from flowdc.shard.repeats import committed_owners

    started = time.monotonic()
    owners = asyncio.run(committed_owners(NoOtherShards(), 0, {"000000000"}, retry_pass=False))
    assert owners is None and time.monotonic() - started < 1
