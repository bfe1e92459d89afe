"""The local engine shares shards out among its worker processes."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

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
