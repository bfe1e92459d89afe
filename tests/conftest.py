"""Shared fixtures: a real image server on 127.0.0.1 and 127.0.0.2, and generated images."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flowdc.testserver import ImageServer, make_image

IMAGE_COUNT = 60


@pytest.fixture(scope="session")
def images() -> dict[str, bytes]:
    """JPEGs 0.jpg .. 59.jpg, plus a PNG, a GIF, a CMYK JPEG and a bigger JPEG."""
    made = {f"{i}.jpg": make_image(i, 64 + i % 7 * 8, 48 + i % 5 * 8) for i in range(IMAGE_COUNT)}
    made["pic.png"] = make_image(1000, 50, 40, fmt="PNG")
    made["anim.gif"] = make_image(1001, 40, 30, fmt="GIF")
    made["cmyk.jpg"] = make_image(1002, 40, 30, fmt="JPEG", mode="CMYK")
    made["large.jpg"] = make_image(1003, 800, 600)
    return made


@pytest.fixture(scope="session", autouse=True)
def _no_proxy_from_the_environment() -> Iterator[None]:
    """FLOW-DC uses http(s)_proxy as curl does; the test servers are on loopback, which a CI
    machine's proxy cannot reach (test_qa2.py sets one where it tests that)."""
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.lower().endswith("_proxy")}
    yield
    os.environ.update(saved)


@pytest.fixture(scope="session")
def server(images: dict[str, bytes]) -> Iterator[ImageServer]:
    with ImageServer(images, hosts=("127.0.0.1", "127.0.0.2")) as running:
        yield running


@pytest.fixture
def fresh_server(server: ImageServer) -> ImageServer:
    """The shared server with its hit counters reset (per-path counts, max in flight)."""
    server.reset_counters()
    return server


def run_cli(
    *args: str, cwd: Path | None = None, timeout: float = 180, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `python -m flowdc ARGS` as a user would; returns the finished process."""
    return subprocess.run(
        [sys.executable, "-m", "flowdc", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


# Options that make a small test run quick: one process, short backoff, no rate limit.
QUICK_RUN: dict[str, Any] = {
    "processes": 1,
    "retry_backoff_sec": 0.01,
    "timeout": 5,
    "enable_rate_limiting": False,
    "shard_size": 2,
}


def parquet_url_table(server: ImageServer, path: Path, rows: int = 4) -> Path:
    urls = [server.url(f"img/{i}.jpg") for i in range(rows)]
    pq.write_table(pa.table({"url": urls, "label": ["a", "b"] * (rows // 2)}), path)
    return path


@pytest.fixture(scope="module")
def s3() -> Iterator[dict[str, str]]:
    """A real S3 server (moto) on 127.0.0.1 and a bucket; the environment a client needs."""
    moto_server = pytest.importorskip("moto.server", reason="moto[server] is not installed")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
    }
    import s3fs

    fs = s3fs.S3FileSystem(
        key="testing",
        secret="testing",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        skip_instance_cache=True,
    )
    if not fs.exists("flowdc-test"):  # moto's state is the process's: another module's server
        fs.mkdir("flowdc-test")  # may have made the bucket already
    try:
        yield env
    finally:
        server.stop()
