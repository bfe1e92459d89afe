"""The Dask engine against a real scheduler and real `dask worker` processes on 127.0.0.1, and
object storage through a real S3 server (moto's server mode) on 127.0.0.1."""

from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import os
import re
import signal
import socket
import subprocess
import sys
import tarfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import flowdc
from flowdc.config.listen import parse_listen
from flowdc.config.loading import build_config
from flowdc.config.options import DownloadConfig
from flowdc.core.errors import FlowDCError
from flowdc.core.layout import PLAN_META, PLAN_TABLE
from flowdc.engines.dask import slurm_cluster
from flowdc.planning.inputs import InputTable
from flowdc.storage import remote
from flowdc.testserver import ImageServer
from tests.conftest import QUICK_RUN, run_cli

distributed = pytest.importorskip("distributed", reason="the dask extra is not installed")
WAIT = 90.0  # the longest any test waits for one thing


def _until(check: Callable[[], object], what: str, limit: float = WAIT) -> object:
    """Poll `check` until it returns something true, at most `limit` seconds."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {limit} s waiting for {what}")


def _flowdc(*args: str) -> list[str]:
    """`python -m flowdc ARGS`, as a user runs it."""
    return [sys.executable, "-m", "flowdc", *args]


def _start(
    command: list[str], log: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """A process in its own process group (so teardown kills it and its children by PID)."""
    with open(log, "ab") as handle:
        return subprocess.Popen(
            command,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )


def _kill(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=10)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Cluster:
    """A scheduler and workers, each a process the test owns."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.processes: list[subprocess.Popen[bytes]] = []
        scheduler_file = folder / "scheduler.json"
        self.scheduler = _start(
            [
                sys.executable,
                "-m",
                "distributed.cli.dask_scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--no-dashboard",
                "--scheduler-file",
                str(scheduler_file),
            ],
            folder / "scheduler.log",
        )
        self.processes.append(self.scheduler)
        _until(scheduler_file.exists, "the scheduler file")
        self.address = _until(
            lambda: json.loads(scheduler_file.read_text() or "{}").get("address"),
            "the scheduler address",
        )
        self.client = distributed.Client(self.address, timeout=30)

    def add_worker(self, name: str) -> subprocess.Popen[bytes]:
        """One worker process (no nanny: kill -9 of its PID is the end of that worker)."""
        worker = _start(
            [
                sys.executable,
                "-m",
                "distributed.cli.dask_worker",
                str(self.address),
                "--name",
                name,
                "--nthreads",
                "2",
                "--no-nanny",
                "--no-dashboard",
                "--host",
                "127.0.0.1",
                "--death-timeout",
                "60",
            ],
            self.folder / f"{name}.log",
        )
        self.processes.append(worker)
        _until(lambda: self.worker_address(name), f"worker {name} to join")
        return worker

    def worker_address(self, name: str) -> str | None:
        for address, info in self.client.scheduler_info(n_workers=-1)["workers"].items():
            if info.get("name") == name:
                return address
        return None

    def busy(self, name: str) -> bool:
        address = self.worker_address(name)
        return bool(address and self.client.processing(workers=[address]).get(address))

    def close(self) -> None:
        self.client.close()
        for process in reversed(self.processes):
            _kill(process)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    running = Cluster(tmp_path_factory.mktemp("dask"))
    try:
        running.add_worker("w1")
        running.add_worker("w2")
        yield running
    finally:
        running.close()


def _write_list(path: Path, urls: list[str]) -> Path:
    pq.write_table(pa.table({"url": urls, "label": [f"c{i % 3}" for i in range(len(urls))]}), path)
    return path


def _mixed_urls(server: ImageServer, count: int) -> list[str]:
    urls = []
    for i in range(count):
        if i % 10 == 3:
            urls.append(server.url(f"status/404/{i}.jpg"))
        else:
            urls.append(server.url(f"img/{i % 60}.jpg"))
    return urls


def _slow_urls(server: ImageServer, count: int) -> list[str]:
    return [
        server.url(f"slow/0.3/{i % 60}.jpg") if i % 9 else server.url(f"status/404/{i}.jpg")
        for i in range(count)
    ]


def _check_dataset(output: Path, rows: int) -> dict[str, int]:
    """Every input row in the results exactly once; every success in the tars exactly once."""
    tables = [pq.read_table(p) for p in sorted(output.glob("[0-9]*.parquet"))]
    results = pa.concat_tables(tables)
    keys = results.column("key").to_pylist()
    assert len(keys) == rows and len(set(keys)) == rows
    plan_keys = pq.read_table(output / PLAN_TABLE, columns=["key"]).column("key").to_pylist()
    assert sorted(keys) == sorted(plan_keys)
    ok = {
        key
        for key, status in zip(keys, results.column("status").to_pylist(), strict=True)
        if status == "success"
    }
    in_tars: Counter[str] = Counter()
    for tar in sorted(output.glob("*.tar")):
        with tarfile.open(tar) as archive:
            in_tars.update(m.name.split(".")[0] for m in archive if m.name.endswith(".jpg"))
    assert set(in_tars) == ok and all(count == 1 for count in in_tars.values())
    leftovers = [p.name for p in output.iterdir() if ".tmp-" in p.name]
    assert not leftovers
    return dict(Counter(results.column("status").to_pylist()))


def _summary(output: Path) -> dict[str, object]:
    overview = json.loads((output / "overview.json").read_text())
    summary = dict(overview["download_summary"])
    for timing in ("total_time_seconds", "average_speed_mb_per_s", "images_per_second"):
        summary.pop(timing)
    return {
        "summary": summary,
        "classes": overview["class_counts"],
        "errors": overview["error_breakdown"],
    }


def test_full_run_matches_the_local_engine(
    cluster: Cluster, fresh_server: ImageServer, tmp_path: Path
) -> None:
    listing = _write_list(tmp_path / "list.parquet", _mixed_urls(fresh_server, 200))
    common = ["--input", str(listing), "--label", "label", "--shard_size", "30"]
    common += ["--no-enable_rate_limiting"]
    dask_run = run_cli(
        "download",
        *common,
        "--output",
        str(tmp_path / "dask"),
        "--engine",
        "dask",
        "--scheduler",
        str(cluster.address),
    )
    assert dask_run.returncode == 0, dask_run.stderr
    local_run = run_cli("download", *common, "--output", str(tmp_path / "local"))
    assert local_run.returncode == 0, local_run.stderr
    assert _check_dataset(tmp_path / "dask", 200) == {"success": 180, "failed_to_download": 20}
    assert _summary(tmp_path / "dask") == _summary(tmp_path / "local")
    timing = ["elapsed_seconds", "fetched_at"]  # when and how long: differ between any two runs
    dask_results = pq.read_table(tmp_path / "dask" / "00003.parquet").drop(timing)
    local_results = pq.read_table(tmp_path / "local" / "00003.parquet").drop(timing)
    assert dask_results.equals(local_results)

    def printed(run: subprocess.CompletedProcess[str], name: str) -> str:
        return re.sub(r"in [0-9.]+ s", "", run.stdout).replace(str(tmp_path / name), "OUT")

    assert printed(dask_run, "dask") == printed(local_run, "local")
    again = run_cli(
        "download",
        *common,
        "--output",
        str(tmp_path / "dask"),
        "--engine",
        "dask",
        "--scheduler",
        str(cluster.address),
    )
    assert again.returncode == 0 and "7 of 7 shard(s) already committed" in again.stderr


def _repeated_urls(server: ImageServer, count: int) -> list[str]:
    """Each of count/4 images in 4 rows spread over the list."""
    return [server.url(f"img/{(i * 7) % (count // 4)}.jpg") for i in range(count)]


def test_dask_workers_request_a_repeated_url_once(
    cluster: Cluster, fresh_server: ImageServer, tmp_path: Path
) -> None:
    """Shards on two workers (two threads each) share only the output folder: a row whose URL
    an earlier shard requests waits for that shard's commit and copies its sample."""
    listing = _write_list(tmp_path / "list.parquet", _repeated_urls(fresh_server, 80))
    done = run_cli(
        "download", "--input", str(listing), "--output", str(tmp_path / "out"),
        "--label", "label", "--shard_size", "8", "--no-enable_rate_limiting",
        "--engine", "dask", "--scheduler", str(cluster.address),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert len(fresh_server.hits) == 20 and set(fresh_server.hits.values()) == {1}
    assert _check_dataset(tmp_path / "out", 80) == {"success": 80}
    overview = json.loads((tmp_path / "out" / "overview.json").read_text())
    assert overview["download_summary"]["requests_saved_by_repeated_urls"] == 60


def _start_download(listing: Path, output: Path, address: str, log: Path) -> subprocess.Popen:
    return _start(
        _flowdc(
            "download",
            "--input",
            str(listing),
            "--output",
            str(output),
            "--shard_size",
            "8",
            "--concurrent_downloads",
            "6",
            "--no-enable_rate_limiting",
            "--engine",
            "dask",
            "--scheduler",
            address,
        ),
        log,
    )


def test_a_worker_killed_mid_shard_loses_nothing(
    cluster: Cluster, fresh_server: ImageServer, tmp_path: Path
) -> None:
    listing = _write_list(tmp_path / "list.parquet", _slow_urls(fresh_server, 96))
    victim = cluster.add_worker("victim")
    run = _start_download(listing, tmp_path / "out", str(cluster.address), tmp_path / "run.log")
    try:
        _until(lambda: cluster.busy("victim"), "the victim worker to take a shard")
        time.sleep(0.7)  # a shard takes about 2.4 s: 8 URLs of 0.3 s, one at a time
        os.kill(victim.pid, signal.SIGKILL)
        assert run.wait(timeout=120) == 0, (tmp_path / "run.log").read_text()
    finally:
        _kill(run)
    assert victim.wait(timeout=10) == -signal.SIGKILL
    statuses = _check_dataset(tmp_path / "out", 96)
    assert statuses == {"success": 85, "failed_to_download": 11}


def test_a_worker_that_joins_mid_run_takes_work(
    cluster: Cluster, fresh_server: ImageServer, tmp_path: Path
) -> None:
    listing = _write_list(tmp_path / "list.parquet", _slow_urls(fresh_server, 96))
    run = _start_download(listing, tmp_path / "out", str(cluster.address), tmp_path / "run.log")
    try:
        _until(lambda: cluster.busy("w1") or cluster.busy("w2"), "the run to start")
        newcomer = cluster.add_worker("newcomer")
        _until(lambda: cluster.busy("newcomer"), "the new worker to take a shard")
        assert run.wait(timeout=120) == 0, (tmp_path / "run.log").read_text()
    finally:
        _kill(run)
    _kill(newcomer)
    _check_dataset(tmp_path / "out", 96)


def test_a_killed_manager_resumes_when_the_command_runs_again(
    cluster: Cluster, fresh_server: ImageServer, tmp_path: Path
) -> None:
    listing = _write_list(tmp_path / "list.parquet", _slow_urls(fresh_server, 96))
    output = tmp_path / "out"
    run = _start_download(listing, output, str(cluster.address), tmp_path / "run.log")
    try:
        _until(lambda: list(output.glob("*_stats.json")), "a first committed shard")
        os.killpg(run.pid, signal.SIGKILL)
    finally:
        _kill(run)
    committed = len(list(output.glob("*_stats.json")))
    assert committed < 12, "the run ended before the manager was killed"
    again = _start_download(listing, output, str(cluster.address), tmp_path / "again.log")
    try:
        assert again.wait(timeout=120) == 0, (tmp_path / "again.log").read_text()
    finally:
        _kill(again)
    assert "already committed" in (tmp_path / "again.log").read_text()
    assert _check_dataset(output, 96) == {"success": 85, "failed_to_download": 11}


def test_listen_hosts_the_scheduler_and_flowdc_worker_joins(
    fresh_server: ImageServer, tmp_path: Path
) -> None:
    listing = _write_list(tmp_path / "list.parquet", _mixed_urls(fresh_server, 40))
    address = f"127.0.0.1:{_free_port()}"
    run = _start(
        _flowdc(
            "download",
            "--input",
            str(listing),
            "--output",
            str(tmp_path / "out"),
            "--shard_size",
            "10",
            "--engine",
            "dask",
            "--listen",
            address,
        ),
        tmp_path / "run.log",
    )
    worker = _start(
        _flowdc(
            "worker",
            f"tcp://{address}",
            "--nworkers",
            "1",
            "--no-dashboard",
            "--death-timeout",
            "60",
        ),
        tmp_path / "worker.log",
    )
    try:
        assert run.wait(timeout=120) == 0, (tmp_path / "run.log").read_text()
    finally:
        _kill(run)
        _kill(worker)
    log = (tmp_path / "run.log").read_text()
    assert f"on each worker machine run: flowdc worker tcp://{address}" in log
    assert _check_dataset(tmp_path / "out", 40) == {"success": 36, "failed_to_download": 4}


def _tls_environment(folder: Path) -> dict[str, str]:
    """A CA and one certificate for every role, as Dask configuration (docs/distributed.md)."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.timezone.utc)

    def build(name: str, issuer: x509.Name, key, signer, ca: bool) -> x509.Certificate:  # type: ignore[no-untyped-def]
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False,
            )
        return builder.sign(signer, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "flowdc-test-ca")])
    ca = build("flowdc-test-ca", ca_name, ca_key, ca_key, ca=True)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = build("flowdc", ca_name, key, ca_key, ca=False)
    (folder / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (folder / "node.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "node.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    env = {
        "DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION": "True",
        "DASK_DISTRIBUTED__COMM__TLS__CA_FILE": str(folder / "ca.pem"),
    }
    for role in ("SCHEDULER", "WORKER", "CLIENT"):
        env[f"DASK_DISTRIBUTED__COMM__TLS__{role}__CERT"] = str(folder / "node.pem")
        env[f"DASK_DISTRIBUTED__COMM__TLS__{role}__KEY"] = str(folder / "node.key")
    return env


def test_tls_cluster(fresh_server: ImageServer, tmp_path: Path) -> None:
    """--listen tls:// with a manager and a worker given the Dask TLS settings of the docs."""
    pytest.importorskip("cryptography", reason="cryptography makes the test certificates")
    env = _tls_environment(tmp_path)
    listing = _write_list(tmp_path / "list.parquet", _mixed_urls(fresh_server, 20))
    address = f"127.0.0.1:{_free_port()}"
    run = _start(
        _flowdc(
            "download",
            "--input",
            str(listing),
            "--output",
            str(tmp_path / "out"),
            "--shard_size",
            "10",
            "--engine",
            "dask",
            "--listen",
            f"tls://{address}",
        ),
        tmp_path / "run.log",
        env,
    )
    worker = _start(
        _flowdc(
            "worker",
            f"tls://{address}",
            "--nworkers",
            "1",
            "--no-dashboard",
            "--death-timeout",
            "60",
        ),
        tmp_path / "worker.log",
        env,
    )
    try:
        assert run.wait(timeout=120) == 0, (tmp_path / "run.log").read_text()
    finally:
        _kill(run)
        _kill(worker)
    assert f"flowdc worker tls://{address}" in (tmp_path / "run.log").read_text()
    assert _check_dataset(tmp_path / "out", 20) == {"success": 18, "failed_to_download": 2}


def test_a_tls_address_without_tls_settings_is_one_line(tmp_path: Path) -> None:
    listing = _write_list(tmp_path / "list.parquet", ["http://127.0.0.1:9/a.jpg"])
    result = run_cli(
        "download",
        "--input",
        str(listing),
        "--output",
        str(tmp_path / "out"),
        "--engine",
        "dask",
        "--listen",
        f"tls://127.0.0.1:{_free_port()}",
    )
    assert result.returncode == 2
    assert "a tls:// address needs Dask's TLS settings" in result.stderr.splitlines()[-1]


def test_an_unreachable_scheduler_is_one_line(tmp_path: Path) -> None:
    listing = _write_list(tmp_path / "list.parquet", ["http://127.0.0.1:9/a.jpg"])
    result = run_cli(
        "download",
        "--input",
        str(listing),
        "--output",
        str(tmp_path / "out"),
        "--engine",
        "dask",
        "--scheduler",
        f"tcp://127.0.0.1:{_free_port()}",
        env={"DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "2s"},
    )
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("flowdc: error: cannot reach or start the Dask scheduler")
    assert "Traceback" not in result.stderr


def _run_shard_in_process(output: str, config_data: dict[str, object], done: mp.Queue) -> None:
    from flowdc.shard.run import run_shard

    result = run_shard(output, 0, DownloadConfig(**config_data))
    done.put(result.successes)


def test_two_overlapping_runs_of_one_shard_commit_once(
    fresh_server: ImageServer, tmp_path: Path
) -> None:
    """What Dask may do (a lost result, a worker thought dead): both runs end well, and the
    shard holds each sample once."""
    from flowdc.planning.plan import make_plan

    listing = _write_list(tmp_path / "list.parquet", _slow_urls(fresh_server, 18))
    config = DownloadConfig(
        input=str(listing),
        output=str(tmp_path / "out"),
        enable_rate_limiting=False,
        concurrent_downloads=2,
        shard_size=10_000,  # one shard, whatever the machine's cores
    )
    (tmp_path / "out").mkdir()
    make_plan(config, InputTable(listing))
    context = mp.get_context("spawn")
    done: mp.Queue = context.Queue()
    runs = [
        context.Process(
            target=_run_shard_in_process, args=(config.output, config.model_dump(), done)
        )
        for _ in range(2)
    ]
    for run in runs:
        run.start()
        time.sleep(0.5)  # the second starts while the first is writing its tar
    for run in runs:
        run.join(timeout=60)
    assert [run.exitcode for run in runs] == [0, 0]
    assert sorted([done.get(timeout=5), done.get(timeout=5)]) == [16, 16]
    assert _check_dataset(tmp_path / "out", 18) == {"success": 16, "failed_to_download": 2}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--listen", "127.0.0.1:8786"], "--listen need --engine dask"),
        (["--workers", "3"], "--workers need --engine dask"),
        (["--engine", "dask", "--listen", ":1", "--scheduler", "tcp://h:1"], "not both"),
        (["--engine", "dask", "--workers", "2"], "are for --engine slurm"),
        (["--engine", "slurm", "--scheduler", "tcp://h:1"], "use --listen, not --scheduler"),
        (["--engine", "slurm", "--workers", "2"], "--engine slurm needs --listen"),
        (["--engine", "dask", "--slurm_options", "[1]"], "must be a JSON object"),
    ],
)
def test_engine_options_that_do_not_fit(
    options: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from flowdc.cli import main

    listing = _write_list(tmp_path / "list.parquet", ["http://127.0.0.1:9/a.jpg"])
    output = tmp_path / "out"
    assert main(["download", "--input", str(listing), "--output", str(output), *options]) == 2
    error = capsys.readouterr().err
    assert error.startswith("flowdc: error: ") and message in error
    assert len(error.strip().splitlines()) == 1
    assert not output.exists()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:8786", ("tcp", "127.0.0.1", 8786)),
        ("0.0.0.0:9000", ("tcp", "0.0.0.0", 9000)),
        ("tls://10.0.0.5:8786", ("tls", "10.0.0.5", 8786)),
        (":8786", ("tcp", "127.0.0.1", 8786)),
        ("8786", ("tcp", "127.0.0.1", 8786)),
    ],
)
def test_listen_addresses(text: str, expected: tuple[str, str, int]) -> None:
    address = parse_listen(text)
    assert (address.protocol, address.host, address.port) == expected


@pytest.mark.parametrize("text", ["udp://1.2.3.4:5", "host:port", "1.2.3.4:99999"])
def test_bad_listen_addresses(text: str) -> None:
    with pytest.raises(FlowDCError, match="bad --listen"):
        parse_listen(text)


def test_slurm_job_script(tmp_path: Path) -> None:
    pytest.importorskip("dask_jobqueue", reason="dask-jobqueue is not installed")
    config = DownloadConfig(
        input="x.csv",
        output=str(tmp_path),
        engine="slurm",
        workers=3,
        listen=f"127.0.0.1:{_free_port()}",
        slurm_options={"queue": "short", "account": "bio", "walltime": "02:00:00"},
    )
    cluster = slurm_cluster(config)
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    port = config.listen.rsplit(":", 1)[1]
    assert "#SBATCH -J flowdc-worker" in script
    assert "#SBATCH -p short" in script and "#SBATCH -A bio" in script
    assert "#SBATCH -t 02:00:00" in script
    assert f"tcp://127.0.0.1:{port}" in script
    assert "#SBATCH --cpus-per-task=2" in script
    assert "distributed.cli.dask_worker" in script and "--nthreads 2" in script


def test_slurm_needs_listen(tmp_path: Path) -> None:
    options = {"input": "x.csv", "output": str(tmp_path), "engine": "slurm", "workers": 2}
    with pytest.raises(FlowDCError, match=r"^--engine slurm needs --listen"):
        build_config(options)


# -- object storage ----------------------------------------------------------------------------


def _s3fs(env: dict[str, str]):  # type: ignore[no-untyped-def]
    import s3fs

    return s3fs.S3FileSystem(
        key="testing",
        secret="testing",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        skip_instance_cache=True,
    )


def _download_prefix(env: dict[str, str], prefix: str, local: Path) -> Path:
    _s3fs(env).get(f"flowdc-test/{prefix}/", str(local), recursive=True)
    return local


def test_object_storage_input_and_output(
    s3: dict[str, str], fresh_server: ImageServer, tmp_path: Path
) -> None:
    fs = _s3fs(s3)
    listing = _write_list(tmp_path / "list.parquet", _mixed_urls(fresh_server, 50))
    fs.put_file(str(listing), "flowdc-test/in/list.parquet")
    common = ["--input", "s3://flowdc-test/in/list.parquet", "--label", "label"]
    common += ["--shard_size", "20", "--no-enable_rate_limiting", "--processes", "2"]
    first = run_cli("download", *common, "--output", "s3://flowdc-test/out", env=s3)
    assert first.returncode == 0, first.stderr
    names = sorted(p.rsplit("/", 1)[-1] for p in fs.ls("flowdc-test/out"))
    assert names == sorted(
        [PLAN_META, PLAN_TABLE, ".flowdc-runs.jsonl", "labels.json", "overview.json"]
        + ["report.html"]
        + [f"0000{s}{suffix}" for s in range(3) for suffix in (".tar", ".parquet", "_stats.json")]
    )
    local = _download_prefix(s3, "out", tmp_path / "copy")
    assert _check_dataset(local, 50) == {"success": 45, "failed_to_download": 5}
    overview = json.loads((local / "overview.json").read_text())
    assert overview["output"]["path"] == "s3://flowdc-test/out"
    assert overview["input"]["path"] == "s3://flowdc-test/in/list.parquet"
    assert "storage_options" not in overview["script_inputs"]
    again = run_cli("download", *common, "--output", "s3://flowdc-test/out", env=s3)
    assert again.returncode == 0 and "3 of 3 shard(s) already committed" in again.stderr


def test_object_storage_takes_parquet_output(
    s3: dict[str, str], fresh_server: ImageServer, tmp_path: Path
) -> None:
    fs = _s3fs(s3)
    listing = _write_list(tmp_path / "list.parquet", _mixed_urls(fresh_server, 30))
    common = ["--input", str(listing), "--label", "label", "--output_format", "parquet"]
    common += ["--shard_size", "20", "--no-enable_rate_limiting", "--processes", "1"]
    done = run_cli("download", *common, "--output", "s3://flowdc-test/pq", env=s3)
    assert done.returncode == 0, done.stderr
    names = {p.rsplit("/", 1)[-1] for p in fs.ls("flowdc-test/pq")}
    assert {"00000.images.parquet", "00001.images.parquet", "00001_stats.json"} <= names
    local = _download_prefix(s3, "pq", tmp_path / "copy")
    checked = run_cli("validate", str(local))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "27 samples" in checked.stdout  # 30 rows, 3 of them 404s


def test_a_remote_shard_is_uploaded_samples_first_marker_last(
    s3: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in s3.items():
        monkeypatch.setenv(name, value)
    uploaded: list[str] = []

    class Recording(remote.RemoteStore):
        def upload(self, local: Path, name: str) -> None:
            uploaded.append(name)
            super().upload(local, name)

    for name in ("00003.images.parquet", "00003.parquet", "00003_stats.json"):
        (tmp_path / name).write_bytes(b"x")
    remote._upload_shard(Recording("s3://flowdc-test/order", None), tmp_path, 3)
    assert uploaded == ["00003.images.parquet", "00003.parquet", "00003_stats.json"]


def test_object_storage_requests_a_repeated_url_once(
    s3: dict[str, str], fresh_server: ImageServer, tmp_path: Path
) -> None:
    """A repeat of an earlier shard's URL reads that shard's results and tar from the store."""
    fs = _s3fs(s3)
    listing = _write_list(tmp_path / "list.parquet", _repeated_urls(fresh_server, 80))
    fs.put_file(str(listing), "flowdc-test/in3/list.parquet")
    done = run_cli(
        "download", "--input", "s3://flowdc-test/in3/list.parquet",
        "--output", "s3://flowdc-test/out3", "--label", "label", "--shard_size", "8",
        "--no-enable_rate_limiting", "--processes", "2", env=s3,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert len(fresh_server.hits) == 20 and set(fresh_server.hits.values()) == {1}
    local = _download_prefix(s3, "out3", tmp_path / "copy")
    assert _check_dataset(local, 80) == {"success": 80}


def test_object_storage_with_dask_workers_and_storage_options(
    s3: dict[str, str], cluster: Cluster, fresh_server: ImageServer, tmp_path: Path
) -> None:
    """The workers have no AWS_* variables: the endpoint and keys travel in storage_options."""
    fs = _s3fs(s3)
    listing = _write_list(tmp_path / "list.parquet", _mixed_urls(fresh_server, 50))
    fs.put_file(str(listing), "flowdc-test/in2/list.parquet")
    options = json.dumps(
        {"endpoint_url": s3["AWS_ENDPOINT_URL"], "key": "testing", "secret": "testing"}
    )
    result = run_cli(
        "download",
        "--input",
        "s3://flowdc-test/in2/list.parquet",
        "--output",
        "s3://flowdc-test/out2",
        "--shard_size",
        "20",
        "--no-enable_rate_limiting",
        "--engine",
        "dask",
        "--scheduler",
        str(cluster.address),
        "--storage_options",
        options,
        env={"AWS_DEFAULT_REGION": "us-east-1"},
    )
    assert result.returncode == 0, result.stderr
    local = _download_prefix(s3, "out2", tmp_path / "copy")
    assert _check_dataset(local, 50) == {"success": 45, "failed_to_download": 5}


def test_object_storage_refuses_imagefolder_and_foreign_prefixes(
    s3: dict[str, str], tmp_path: Path
) -> None:
    fs = _s3fs(s3)
    fs.pipe_file("flowdc-test/foreign/notes.txt", b"mine")
    listing = _write_list(tmp_path / "list.parquet", ["http://127.0.0.1:9/a.jpg"])
    foreign = run_cli(
        "download", "--input", str(listing), "--output", "s3://flowdc-test/foreign", env=s3
    )
    assert foreign.returncode == 2
    assert "is not empty and was not made by FLOW-DC" in foreign.stderr
    assert fs.cat_file("flowdc-test/foreign/notes.txt") == b"mine"
    folders = run_cli(
        "download",
        "--input",
        str(listing),
        "--output",
        "s3://flowdc-test/folders",
        "--label",
        "label",
        "--output_format",
        "imagefolder",
        env=s3,
    )
    assert folders.returncode == 2 and "imagefolder output cannot go to object storage" in (
        folders.stderr
    )
    no_credentials = {
        "AWS_ENDPOINT_URL": s3["AWS_ENDPOINT_URL"],
        "AWS_ACCESS_KEY_ID": "",
        "AWS_SECRET_ACCESS_KEY": "",
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    denied = run_cli(
        "download",
        "--input",
        str(listing),
        "--output",
        "s3://flowdc-test/denied",
        env=no_credentials,
    )
    assert denied.returncode == 2, denied.stderr
    assert denied.stderr.startswith("flowdc: error: cannot use s3://flowdc-test/denied: ")
    assert "check the credentials" in denied.stderr and "Traceback" not in denied.stderr


def test_remote_input_url_with_a_query_string(tmp_path: Path, images: dict[str, bytes]) -> None:
    """Zenodo and presigned object-store links end in ?download=1 or ?X-Amz-...: the query
    string was kept in the local copy's name, so the format could not be told from it."""
    with ImageServer(dict(images), hosts=("127.0.0.1",)) as lists:
        csv_text = "url\n" + "".join(lists.url(f"img/{i}.jpg") + "\n" for i in range(3))
        lists.images["urls.csv"] = csv_text.encode()

        result = flowdc.download(
            input=lists.url("img/urls.csv?download=1#top"), output=str(tmp_path / "ds"), **QUICK_RUN
        )

    assert (result.total, result.successful) == (3, 3)


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
