"""URLs go out exactly as the list gives them (fetch/urls.py): presigned object-storage URLs and
IIIF identifiers with `%2F` depend on it."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import flowdc
from flowdc.core.status import SUCCESS
from flowdc.shard.fetch.urls import as_sent
from flowdc.testserver import make_image
from tests.conftest import QUICK_RUN
from tests.test_fetch import fetch_many, raw_ok


class EchoServer:
    """Answers every request with one JPEG and keeps each raw request target, in a thread."""

    def __init__(self, body: bytes) -> None:
        self.answer = raw_ok(body, b"Content-Type: image/jpeg\r\n")
        self.targets: list[bytes] = []
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self._sock.settimeout(0.2)
        self.base = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(2)
                request = b""
                while b"\r\n\r\n" not in request and len(request) < 65536:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    request += chunk
                self.targets.append(request.split(b" ", 2)[1])
                conn.sendall(self.answer)

    def __enter__(self) -> EchoServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()


AS_WRITTEN = [
    "/iiif/a%2Fb%2fc.jpg/full/max/0/default.jpg?x=a%2Fb&y=%2B1&z=%3D%26",
    "/dir/x%20y.jpg?q=a%20b+c",
    "/a+b.jpg?q=a+b",
    "/caf%C3%A9.jpg?q=%C3%A9",
    "/%7Euser/A%7eb%41.jpg",
    "/semi;colon/(x)!$'*,@:.jpg?a=[1]",
]
ENCODED = {
    "/dir/x y.jpg?q=a b": "/dir/x%20y.jpg?q=a%20b",
    "/café.jpg?q=é": "/caf%C3%A9.jpg?q=%C3%A9",
    '/q"<>^`{|}\\.jpg': "/q%22%3C%3E%5E%60%7B%7C%7D%5C.jpg",
    "/100%.jpg?p=%zz": "/100%25.jpg?p=%25zz",
}


def test_paths_and_queries_arrive_as_written() -> None:
    with EchoServer(make_image(1)) as echo:
        sent = AS_WRITTEN + list(ENCODED)
        results = fetch_many([echo.base + target for target in sent])
        assert [result.status for result in results] == [SUCCESS] * len(sent)
        arrived = sorted(target.decode("ascii") for target in echo.targets)
    assert arrived == sorted(AS_WRITTEN + list(ENCODED.values()))


def test_a_download_keeps_the_url_as_given(tmp_path: Path) -> None:
    with EchoServer(make_image(2)) as echo:
        urls = [echo.base + AS_WRITTEN[0], echo.base + "/dir/x y.jpg"]
        source = tmp_path / "urls.parquet"
        pq.write_table(pa.table({"url": urls}), source)
        result = flowdc.download(input=str(source), output=str(tmp_path / "ds"), **QUICK_RUN)
        arrived = sorted(target.decode("ascii") for target in echo.targets)
    rows = result.results().sort_by("key").to_pylist()
    assert [(row["url"], row["status"]) for row in rows] == [(url, SUCCESS) for url in urls]
    assert arrived == sorted([AS_WRITTEN[0], "/dir/x%20y.jpg"])


def test_hosts_are_idna_encoded_and_the_rest_kept() -> None:
    url = as_sent("HTTP://Bücher.example:8080/A%7e%2F b?q=%2F")
    assert (url.scheme, url.raw_host, url.port) == ("http", "xn--bcher-kva.example", 8080)
    assert url.raw_path_qs == "/A%7e%2F%20b?q=%2F"
    assert url.host == "bücher.example"


# -- a presigned GET URL of a real S3 server (moto) ----------------------------------------------
@dataclass
class S3:
    client: Any
    endpoint: str
    targets: list[str]
    """The raw request target (path and query) of every request moto received."""


@pytest.fixture(scope="module")
def s3() -> Iterator[S3]:
    moto_server = pytest.importorskip("moto.server", reason="moto[server] is not installed")
    boto3 = pytest.importorskip("boto3")
    from botocore.config import Config

    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    # moto does not check presigned signatures, and its log shows decoded paths: what it
    # received is taken from werkzeug's RAW_URI, in front of moto's application
    targets: list[str] = []
    moto_app = server._server.app

    def recording(environ: dict[str, Any], start_response: Any) -> Any:
        targets.append(environ["RAW_URI"])
        return moto_app(environ, start_response)

    server._server.app = recording
    client = boto3.client(
        "s3",
        endpoint_url=f"http://{host}:{port}",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
        config=Config(signature_version="s3v4"),
    )
    client.create_bucket(Bucket="flowdc-presigned")
    try:
        yield S3(client, f"http://{host}:{port}", targets)
    finally:
        server.stop()


@pytest.mark.parametrize("key", ["a%2Fb.jpg", "dir/x y+z.jpg", "été/ü.jpg"])
def test_a_presigned_url_downloads_with_its_signature_intact(
    s3: S3, key: str, tmp_path: Path
) -> None:
    """The signature covers the encoded key and query (X-Amz-Credential holds %2F): the request
    moto receives must be the presigned URL's bytes, through flowdc.fetch and flowdc download."""
    body = make_image(3)
    s3.client.put_object(Bucket="flowdc-presigned", Key=key, Body=body)
    url = s3.client.generate_presigned_url(
        "get_object", Params={"Bucket": "flowdc-presigned", "Key": key}, ExpiresIn=600
    )
    s3.targets.clear()
    fetched = flowdc.fetch(url, timeout=10)
    source = tmp_path / "urls.parquet"
    pq.write_table(pa.table({"url": [url]}), source)
    result = flowdc.download(input=str(source), output=str(tmp_path / "ds"), **QUICK_RUN)
    assert (fetched.status, fetched.data) == (SUCCESS, body)
    row = result.results().to_pylist()[0]
    assert (row["url"], row["status"], row["final_url"]) == (url, SUCCESS, None)
    assert s3.targets == [url[len(s3.endpoint) :]] * 2
