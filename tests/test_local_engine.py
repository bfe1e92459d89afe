"""The local engine shares shards out among its worker processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flowdc.testserver import ImageServer
from tests.conftest import run_cli


def test_two_shards_on_two_processes_run_one_in_each(tmp_path: Path, server: ImageServer) -> None:
    """A worker takes a second shard only once its first one's tail leaves its slots idle: the
    first worker to start used to take both shards of a two-shard run, leaving the other idle."""
    # 12 rows a shard, 2 request slots a process, half a second an answer: a shard's tail starts
    # after about 2.5 s, long after both workers have started
    urls = [server.url(f"/slow/0.5/{i}.jpg", host=i % 2) for i in range(24)]
    pq.write_table(pa.table({"url": urls}), tmp_path / "urls.parquet")
    out = tmp_path / "out"
    done = run_cli(
        "download", "--input", str(tmp_path / "urls.parquet"), "--output", str(out),
        "--processes", "2", "--concurrent_downloads", "4", "--shard_size", "12",
        "--no-enable_rate_limiting", "--no-progress",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    workers = [json.loads((out / f"0000{s}_stats.json").read_text())["worker"] for s in (0, 1)]
    assert all(
        json.loads((out / f"0000{s}_stats.json").read_text())["successes"] == 12 for s in (0, 1)
    )
    assert workers[0] != workers[1], workers


def _session_processes(session: int) -> list[int]:
    """The processes (not zombies) of a session, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == session and fields[0] != "Z":
            found.append(int(entry.name))
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc")
def test_a_killed_main_process_leaves_no_worker_behind(tmp_path: Path, server: ImageServer) -> None:
    """Workers are forked from a fork server, not from the main process: when the main process
    is killed (kill -9, no cleanup), the workers and the fork server still stop by themselves."""
    # 2,000 answers of a second each, 8 at a time: minutes of work left when the main one dies
    urls = [server.url(f"/slow/1/{i}.jpg", host=i % 2) for i in range(2000)]
    pq.write_table(pa.table({"url": urls}), tmp_path / "urls.parquet")
    before = server.hits_on("127.0.0.1")  # the server is shared with other tests
    main = subprocess.Popen(
        [sys.executable, "-m", "flowdc", "download", "--input", str(tmp_path / "urls.parquet"),
         "--output", str(tmp_path / "out"), "--processes", "2", "--shard_size", "1000",
         "--concurrent_downloads", "8",
         "--no-enable_rate_limiting", "--no-progress"],
        start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and server.hits_on("127.0.0.1") < before + 4:
            time.sleep(0.1)  # until the workers download
        assert server.hits_on("127.0.0.1") >= before + 4
        assert len(_session_processes(main.pid)) >= 3  # main, fork server (or not), workers
        main.kill()
        main.wait(10)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and _session_processes(main.pid):
            time.sleep(0.1)
        assert _session_processes(main.pid) == []
    finally:
        for pid in _session_processes(main.pid):
            os.kill(pid, signal.SIGKILL)
