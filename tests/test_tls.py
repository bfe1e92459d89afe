"""HTTPS certificates are checked unless --no-verify_tls, which warns and is recorded."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import json
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import flowdc
from flowdc.config.options import UNVERIFIED_TLS_WARNING
from flowdc.core.status import FAILED_TO_DOWNLOAD, SUCCESS
from flowdc.testserver import make_image
from tests.conftest import run_cli
from tests.test_fetch import raw_ok


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 that signs itself (no authority vouches for it)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "flowdc self-signed test")])
    now = dt.datetime.now(dt.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


class HttpsServer:
    """Answers every request with one JPEG over TLS on 127.0.0.1, in a thread."""

    def __init__(self, folder: Path, body: bytes) -> None:
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(*self_signed(folder))
        self.answer = raw_ok(body, b"Content-Type: image/jpeg\r\n")
        self.requests = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.port = 0

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            self.requests += 1
            writer.write(self.answer)
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError, ssl.SSLError):
            pass  # a client that refused the certificate hangs up during the handshake
        finally:
            writer.close()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(
            asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self.context)
        )
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()
        server.close()
        self._loop.run_until_complete(server.wait_closed())
        self._loop.close()

    def url(self, path: str) -> str:
        return f"https://127.0.0.1:{self.port}/{path}"

    def __enter__(self) -> HttpsServer:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


@pytest.fixture(scope="module")
def https(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpsServer]:
    with HttpsServer(tmp_path_factory.mktemp("tls"), make_image(7)) as server:
        yield server


def test_a_certificate_nobody_vouches_for_fails_and_is_not_retried(https: HttpsServer) -> None:
    result = flowdc.fetch(https.url("a.jpg"), timeout=5, max_retry_attempts=3)
    assert result.status == FAILED_TO_DOWNLOAD
    assert result.error is not None and result.error.startswith("TLS error"), result.error
    assert result.attempts == 1


def test_no_verify_tls_accepts_it_with_a_warning(
    https: HttpsServer, capsys: pytest.CaptureFixture[str]
) -> None:
    result = flowdc.fetch(https.url("b.jpg"), timeout=5, verify_tls=False)
    assert result.status == SUCCESS, result.error
    assert capsys.readouterr().err.count(UNVERIFIED_TLS_WARNING) == 1


def test_a_download_with_no_verify_tls_warns_and_records_it(
    https: HttpsServer, tmp_path: Path
) -> None:
    source = tmp_path / "urls.parquet"
    pq.write_table(pa.table({"url": [https.url(f"{i}.jpg") for i in range(3)]}), source)
    common = ["--input", str(source), "--processes", "1", "--timeout", "5"]

    refused = run_cli("download", *common, "--output", str(tmp_path / "checked"))
    accepted = run_cli("download", *common, "--output", str(tmp_path / "ds"), "--no-verify_tls")

    assert refused.returncode == 3, refused.stderr  # finished, no image: every TLS check failed
    assert UNVERIFIED_TLS_WARNING not in refused.stderr
    checked = json.loads((tmp_path / "checked" / "overview.json").read_text())
    assert checked["script_inputs"]["verify_tls"] is True
    assert checked["download_summary"]["successful"] == 0

    assert accepted.returncode == 0, accepted.stderr
    assert accepted.stderr.count(UNVERIFIED_TLS_WARNING) == 1
    overview = json.loads((tmp_path / "ds" / "overview.json").read_text())
    assert overview["script_inputs"]["verify_tls"] is False
    assert overview["download_summary"]["successful"] == 3
