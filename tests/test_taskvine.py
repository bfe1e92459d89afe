"""The TaskVine engine with a real manager (`flowdc download --engine taskvine`) and real
`vine_worker`s (`flowdc worker --engine taskvine`) on 127.0.0.1, each in a folder of its own.

In gathered mode the workers run where the manager's folder (the input and the output) does
not exist for them: each is started in a mount namespace of its own with that folder covered by
an empty tmpfs (`unshare --mount`), so a worker that opened the output would fail or write where
the manager never looks; where unshare is refused, a sampler checks instead that no worker
process ever holds a file or a working directory there. Every process a test starts is killed
by its session at teardown, also when the test fails.

Without vine_worker or ndcctools.taskvine these tests skip with one line, except on CI
(`CI` set) when the vendored cctools tarball beside the clone could have built them: there a
missing TaskVine is a failure.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flowdc.core.layout import PLAN_TABLE, TASKVINE_DIR
from flowdc.core.version import __version__
from flowdc.testserver import ImageServer

ROOT = Path(__file__).resolve().parent.parent
TARBALL = ROOT.parent / "shared" / "vendor" / "cctools-7.17.1-src.tar.gz"
BIN = Path(sys.executable).parent
VINE_WORKER = shutil.which("vine_worker", path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
WAIT = 90.0
TIMING = ["elapsed_seconds", "fetched_at"]  # when and how long: differ between any two runs


def _missing() -> str | None:
    if VINE_WORKER is None:
        return "no vine_worker (`make taskvine` builds TaskVine)"
    try:
        found = importlib.util.find_spec("ndcctools.taskvine") is not None
    except ImportError:
        found = False
    return None if found else "no ndcctools.taskvine (`make taskvine` builds TaskVine)"


if _missing():
    if os.environ.get("CI") and TARBALL.exists():
        pytest.fail(f"CI with {TARBALL.name} present: {_missing()}", pytrace=False)
    pytest.skip(_missing(), allow_module_level=True)


def _until(check: Callable[[], object], what: str, limit: float = WAIT) -> object:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {limit} s waiting for {what}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _stat(pid: int) -> list[bytes] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            raw = handle.read()
    except OSError:
        return None
    return raw[raw.rindex(b")") + 2 :].split()


def _processes() -> Iterator[tuple[int, list[bytes]]]:
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := _stat(int(entry))) is not None and fields[0] != b"Z":
            yield int(entry), fields


def _session(sid: int) -> list[int]:
    return [pid for pid, fields in _processes() if int(fields[3]) == sid]


def _vine_workers_of(pid: int) -> list[int]:
    """The vine_worker processes `pid` started."""
    found = []
    for child, fields in _processes():
        if int(fields[1]) == pid:
            with contextlib.suppress(OSError), open(f"/proc/{child}/comm") as comm:
                if comm.read().strip() == "vine_worker":
                    found.append(child)
    return found


def _kill_sessions(*sessions: int) -> None:
    for _ in range(50):
        members = [pid for sid in sessions for pid in _session(sid)]
        if not members:
            return
        for pid in members:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)


def _can_hide_folders() -> bool:
    """Whether `unshare --mount` may cover a folder with a tmpfs here (root, or a container
    that allows it)."""
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "--mount", "--", "sh", "-c", "mount -t tmpfs flowdc-probe /mnt"],
        capture_output=True,
        timeout=30,
    )
    return probe.returncode == 0


HIDE = _can_hide_folders()


class Worker:
    """One `flowdc worker --engine taskvine` (its own session) and its vine_worker (another)."""

    def __init__(self, process: subprocess.Popen[bytes], folder: Path) -> None:
        self.process = process
        self.folder = folder
        self.workspace = folder / "workspace"
        children = _until(lambda: _vine_workers_of(process.pid), "the vine_worker to start", 30)
        assert isinstance(children, list)
        self.vine_pid = children[0]
        self.name = f"{socket.gethostname()}:{self.vine_pid}"
        """How the stats markers of the shards it ran name it."""

    def running_a_shard(self) -> bool:
        return any(self.workspace.glob("func.*/rows.parquet"))

    def sessions(self) -> list[int]:
        return [self.process.pid, self.vine_pid]

    def kill(self) -> None:
        """kill -9 of the worker, its library and its shards: a machine that is gone."""
        _kill_sessions(*self.sessions())
        self.process.wait(timeout=10)


class Workers:
    def __init__(self, folder: Path, hidden: Path) -> None:
        self.folder = folder
        self.hidden = hidden
        self.started: list[Worker] = []
        self.seen: set[str] = set()
        """Paths under the hidden folder that a worker process held open or stood in."""
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        if not HIDE:  # else the folder is not there for them at all
            self._sampler.start()

    def start(
        self,
        port: int,
        name: str,
        env: dict[str, str] | None = None,
        isolated: bool = True,
        extra: tuple[str, ...] = (),
    ) -> Worker:
        folder = self.folder / name
        folder.mkdir(parents=True)
        command = [sys.executable, "-m", "flowdc", "worker", "--engine", "taskvine"]
        command += [f"127.0.0.1:{port}", "--cores", "2", "--workspace", str(folder / "workspace")]
        command += ["--max-backoff=1", *extra]
        if isolated and HIDE:
            cover = 'mount -t tmpfs flowdc-hidden "$0" && exec "$@"'
            command = ["unshare", "--mount", "--", "sh", "-c", cover, str(self.hidden), *command]
        with open(folder / "worker.log", "ab") as log:
            process = subprocess.Popen(
                command,
                cwd=folder,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, **(env or {})},
            )
        worker = Worker(process, folder)
        self.started.append(worker)
        return worker

    def _sample(self) -> None:
        """Every 0.1 s: the working directory and open files of every worker process."""
        while not self._stop.wait(0.1):
            hidden = str(self.hidden)
            sessions = {sid for worker in list(self.started) for sid in worker.sessions()}
            for pid, fields in _processes():
                if int(fields[3]) not in sessions:
                    continue
                links = [f"/proc/{pid}/cwd"]
                links += [f"/proc/{pid}/fd/{fd}" for fd in _listdir(f"/proc/{pid}/fd")]
                for link in links:
                    with contextlib.suppress(OSError):
                        target = os.readlink(link)
                        if target == hidden or target.startswith(hidden + "/"):
                            self.seen.add(target)

    def close(self) -> None:
        self._stop.set()
        for worker in self.started:
            _kill_sessions(*worker.sessions())
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.process.wait(timeout=10)
        if self._sampler.is_alive():
            self._sampler.join(timeout=5)


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[Path, Workers]]:
    """The manager's folder (input, output: hidden from isolated workers) and the workers."""
    manager = tmp_path / "manager"
    manager.mkdir()
    workers = Workers(tmp_path / "workers", manager)
    try:
        yield manager, workers
    finally:
        workers.close()
    assert not workers.seen, f"workers reached the manager's folder: {sorted(workers.seen)[:5]}"


class Manager:
    """`flowdc download --engine taskvine` as a process of its own session."""

    def __init__(self, folder: Path, args: list[str], env: dict[str, str] | None = None) -> None:
        self.folder = folder
        self.port = _free_port()
        self.args = [*args, "--engine", "taskvine", "--port", str(self.port)]
        self.env = env
        self.runs = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        return self.folder / f"manager-{self.runs}.log"

    def start(self) -> Manager:
        self.runs += 1
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "flowdc", "download", *self.args],
                cwd=self.folder,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, **(self.env or {})},
            )
        _until(lambda: "listening on port" in self.text(), "the manager to listen", 60)
        return self

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait(self, timeout: float = WAIT) -> int:
        assert self.process is not None
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the run did not end:\n{self.text()[-3000:]}") from None

    def kill(self) -> None:
        if self.process is not None:
            _kill_sessions(self.process.pid)
            self.process.wait(timeout=10)


@contextlib.contextmanager
def running(manager: Manager) -> Iterator[Manager]:
    try:
        yield manager.start()
    finally:
        manager.kill()


def _write_list(path: Path, urls: list[str]) -> Path:
    labels = [f"c{i % 3}" for i in range(len(urls))]
    pq.write_table(pa.table({"url": urls, "label": labels}), path)
    return path


def _mixed_urls(server: ImageServer, count: int) -> list[str]:
    """Distinct URLs (a query per row): a repeated URL is fetched once per run by the local
    engine but once per shard by a gathered one (a worker sees its own shard only)."""
    return [
        server.url(f"status/404/{i}.jpg")
        if i % 10 == 3
        else server.url(f"img/{i % 60}.jpg", i % 2) + f"?row={i}"
        for i in range(count)
    ]


def _slow_urls(server: ImageServer, count: int) -> list[str]:
    return [
        server.url(f"slow/0.3/{i % 60}.jpg") if i % 9 else server.url(f"status/404/{i}.jpg")
        for i in range(count)
    ]


def _args(listing: Path, output: Path, *extra: str) -> list[str]:
    base = ["--input", str(listing), "--output", str(output), "--label", "label"]
    return [*base, "--no-enable_rate_limiting", "--retry_backoff_sec", "0.01", *extra]


def _check_dataset(output: Path, rows: int) -> dict[str, int]:
    """Every planned row in the results exactly once; every success stored exactly once."""
    results = pa.concat_tables([pq.read_table(p) for p in sorted(output.glob("[0-9]*.parquet"))])
    keys = results.column("key").to_pylist()
    plan_keys = pq.read_table(output / PLAN_TABLE, columns=["key"]).column("key").to_pylist()
    assert len(keys) == rows and sorted(keys) == sorted(plan_keys)
    ok = {
        key
        for key, status in zip(keys, results.column("status").to_pylist(), strict=True)
        if status == "success"
    }
    stored: Counter[str] = Counter()
    for tar in output.glob("*.tar"):
        with tarfile.open(tar) as archive:
            stored.update(m.name.split(".")[0] for m in archive if m.name.endswith(".jpg"))
    for image in output.glob("*/*.jpg"):
        stored[image.stem] += 1
    assert set(stored) == ok and all(count == 1 for count in stored.values())
    assert not [p for p in output.rglob("*") if ".tmp-" in p.name]
    return dict(Counter(results.column("status").to_pylist()))


def _samples(output: Path) -> dict[str, bytes]:
    """name -> bytes of every image, from the tars or the label folders."""
    found = {}
    for tar in output.glob("*.tar"):
        with tarfile.open(tar) as archive:
            for member in archive:
                if not member.name.endswith((".json",)):
                    found[member.name] = archive.extractfile(member).read()  # type: ignore[union-attr]
    for image in output.glob("*/*.jpg"):
        found[f"{image.parent.name}/{image.name}"] = image.read_bytes()
    return found


def _overview(output: Path) -> dict[str, object]:
    overview = json.loads((output / "overview.json").read_text())
    summary = dict(overview["download_summary"])
    for timing in ("total_time_seconds", "average_speed_mb_per_s", "images_per_second"):
        summary.pop(timing)
    return {"summary": summary, "classes": overview["class_counts"], "shards": overview["shards"]}


def _validate(output: Path) -> None:
    check = subprocess.run(
        [sys.executable, "-m", "flowdc", "validate", str(output)], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr


def _markers(output: Path) -> list[dict[str, object]]:
    return [json.loads(p.read_text()) for p in sorted(output.glob("*_stats.json"))]


# -- gathered mode: workers that share nothing with the manager ---------------------------------


@pytest.mark.parametrize("output_format", ["webdataset", "imagefolder"])
def test_a_gathered_run_equals_the_local_engines(
    site: tuple[Path, Workers], fresh_server: ImageServer, output_format: str
) -> None:
    folder, workers = site
    listing = _write_list(folder / "list.parquet", _mixed_urls(fresh_server, 200))
    common = ["--shard_size", "30", "--output_format", output_format]
    manager = Manager(folder, _args(listing, folder / "vine", *common))
    with running(manager):
        started = [workers.start(manager.port, f"w{i}") for i in range(2)]
        assert manager.wait() == 0, manager.text()
        # a complete run tells its workers to exit (one that connected too late to take a
        # shard may have found no manager: it waits for the next one)
        ran = {str(marker["worker"]) for marker in _markers(folder / "vine")}
        assert [w.process.wait(timeout=30) for w in started if w.name in ran] == [0] * len(ran)
    local = subprocess.run(
        [sys.executable, "-m", "flowdc", "download", *_args(listing, folder / "local", *common)],
        capture_output=True,
        text=True,
    )
    assert local.returncode == 0, local.stderr
    vine, plain = folder / "vine", folder / "local"
    assert _check_dataset(vine, 200) == {"success": 180, "failed_to_download": 20}
    assert _overview(vine) == _overview(plain)
    assert _overview(vine)["shards"] == {
        "total": 7,
        "committed": 7,
        "shard_size": 30,
        "rejected": 0,
    }
    for shard in range(7):
        name = f"{shard:05d}.parquet"
        results = pq.read_table(vine / name).drop(TIMING)
        assert results.equals(pq.read_table(plain / name).drop(TIMING))
    assert _samples(vine) == _samples(plain)
    _validate(vine)
    log = manager.text()
    assert "any machine that reaches port" in log
    logs = next(line for line in log.splitlines() if line.startswith("TaskVine logs: "))
    assert Path(logs.split()[2], "transactions").is_file()
    assert sorted(p.name for p in (vine / TASKVINE_DIR).iterdir()) == ["logs"]
    assert {marker["worker"] for marker in _markers(vine)} <= {w.name for w in started}


def test_a_worker_killed_mid_shard_loses_nothing(
    site: tuple[Path, Workers], fresh_server: ImageServer
) -> None:
    folder, workers = site
    listing = _write_list(folder / "list.parquet", _slow_urls(fresh_server, 48))
    args = _args(listing, folder / "out", "--shard_size", "8", "--concurrent_downloads", "4")
    with running(Manager(folder, args)) as manager:
        victim = workers.start(manager.port, "victim")
        workers.start(manager.port, "other")
        _until(victim.running_a_shard, "the victim to run a shard")
        time.sleep(0.7)  # a shard takes about 2.4 s: 8 URLs of 0.3 s, one at a time
        victim.kill()
        assert manager.wait() == 0, manager.text()
    assert _check_dataset(folder / "out", 48) == {"success": 42, "failed_to_download": 6}


def test_a_worker_that_joins_mid_run_takes_shards(
    site: tuple[Path, Workers], fresh_server: ImageServer
) -> None:
    folder, workers = site
    listing = _write_list(folder / "list.parquet", _slow_urls(fresh_server, 48))
    output = folder / "out"
    args = _args(listing, output, "--shard_size", "8", "--concurrent_downloads", "4")
    with running(Manager(folder, args)) as manager:
        workers.start(manager.port, "first")
        _until(lambda: list(output.glob("*_stats.json")), "a first committed shard")
        newcomer = workers.start(manager.port, "newcomer")
        assert manager.wait() == 0, manager.text()
    assert any(marker["worker"] == newcomer.name for marker in _markers(output))
    _check_dataset(output, 48)


def test_a_killed_manager_resumes_when_the_command_runs_again(
    site: tuple[Path, Workers], fresh_server: ImageServer
) -> None:
    folder, workers = site
    listing = _write_list(folder / "list.parquet", _slow_urls(fresh_server, 48))
    output = folder / "out"
    args = _args(listing, output, "--shard_size", "8", "--concurrent_downloads", "4")
    manager = Manager(folder, args)
    with running(manager):
        for name in ("w1", "w2"):
            workers.start(manager.port, name)
        _until(lambda: list(output.glob("*_stats.json")), "a first committed shard")
        manager.kill()  # kill -9 of its whole session
    committed = len(list(output.glob("*_stats.json")))
    assert committed < 6, "the run ended before the manager was killed"
    with running(manager):  # the same command; the workers come back by themselves
        assert manager.wait() == 0, manager.text()
    assert "already committed" in manager.text()
    assert _check_dataset(output, 48) == {"success": 42, "failed_to_download": 6}


def test_spoiled_shards_are_rejected_and_run_again_elsewhere(
    site: tuple[Path, Workers], fresh_server: ImageServer
) -> None:
    """Three workers that each spoil what they send back (a flipped byte of an image, a missing
    results row, an extra member in the tar): each shard they return is caught, the shard runs
    again on the honest worker that joins later, and the overview counts the rejections."""
    folder, workers = site
    listing = _write_list(folder / "list.parquet", _mixed_urls(fresh_server, 120))
    output = folder / "out"
    with running(Manager(folder, _args(listing, output, "--shard_size", "10"))) as manager:
        for fault in ("flip", "drop_row", "extra_member"):
            workers.start(manager.port, fault, env={"FLOWDC_TASKVINE_TEST_FAULT": fault})
        _until(lambda: manager.text().count(" rejected: ") >= 3, "three rejections")
        workers.start(manager.port, "honest")
        assert manager.wait() == 0, manager.text()
    log = manager.text()
    assert "its bytes are not those its results row names" in log  # the flipped byte
    assert "its results table has 9 rows, the plan 10" in log  # the missing row
    assert "'999999999.jpg' that is no sample of this shard" in log  # the extra member
    assert _check_dataset(output, 120) == {"success": 108, "failed_to_download": 12}
    _validate(output)
    rejected = _overview(output)["shards"]["rejected"]  # type: ignore[index]
    assert rejected == log.count(" rejected: ") >= 3
    assert {marker["worker"] for marker in _markers(output)} == {workers.started[-1].name}
    for spoiler in workers.started[:3]:  # distrusted, each left when next offered a shard
        assert spoiler.process.wait(timeout=30) == 3
        assert "this worker leaves" in (spoiler.folder / "worker.log").read_text()


def test_workers_of_another_version_are_told_and_given_nothing(
    site: tuple[Path, Workers], fresh_server: ImageServer
) -> None:
    folder, workers = site
    listing = _write_list(folder / "list.parquet", _mixed_urls(fresh_server, 40))
    output = folder / "out"
    with running(Manager(folder, _args(listing, output, "--shard_size", "10"))) as manager:
        # a plain vine_worker offering another version, and a FLOW-DC worker that claims one
        old = folder.parent / "workers" / "old"
        old.mkdir(parents=True)
        with open(old / "worker.log", "ab") as log:
            command = [VINE_WORKER, "--workspace", str(old / "ws"), "--cores", "1"]
            command += ["--feature", "flowdc-0.0.9", "--single-shot", "127.0.0.1"]
            plain = subprocess.Popen(
                [*command, str(manager.port)],
                cwd=old,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={k: v for k, v in os.environ.items() if not k.startswith("TCP_")},
            )
        try:
            liar = workers.start(
                manager.port, "liar", env={"FLOWDC_TASKVINE_TEST_FAULT": "version"}
            )
            _until(lambda: "runs FLOW-DC 0.0.9" in manager.text(), "the plain worker's message")
            _until(lambda: "runs FLOW-DC 0.0.0-test" in manager.text(), "the liar's message")
            assert not list(output.glob("*_stats.json"))
            workers.start(manager.port, "current")
            assert manager.wait() == 0, manager.text()
        finally:
            _kill_sessions(plain.pid)
    log = manager.text()
    assert f"runs FLOW-DC 0.0.9 and this manager FLOW-DC {__version__}" in log
    assert f"runs FLOW-DC 0.0.0-test and this manager FLOW-DC {__version__}" in log
    _check_dataset(output, 40)
    # told it is distrusted, the worker that claims another version left, and said why
    assert liar.process.wait(timeout=30) == 3
    said = (liar.folder / "worker.log").read_text()
    assert (
        f"the manager (FLOW-DC {__version__}) refused what this worker (FLOW-DC 0.0.0-test)" in said
    )


# -- shared mode: workers commit into the output themselves --------------------------------------


def _tls_and_password(folder: Path) -> tuple[Path, Path, Path]:
    """A password file and a self-signed key and certificate for 127.0.0.1."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    paths = folder / "vine.password", folder / "key.pem", folder / "cert.pem"
    paths[0].write_text(os.urandom(32).hex())
    paths[1].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    paths[2].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return paths


def test_shared_mode_on_a_folder_every_worker_sees_with_password_and_tls(
    site: tuple[Path, Workers], fresh_server: ImageServer, tmp_path: Path
) -> None:
    pytest.importorskip("cryptography", reason="cryptography makes the test certificate")
    folder, workers = site
    workers.hidden = folder.parent / "nothing-hidden"
    password, key, cert = _tls_and_password(tmp_path)
    listing = _write_list(folder / "list.parquet", _mixed_urls(fresh_server, 60))
    output = folder / "out"
    args = _args(listing, output, "--shard_size", "20", "--shared_output")
    args += ["--password", str(password), "--ssl_key", str(key), "--ssl_cert", str(cert)]
    with running(Manager(folder, args)) as manager:
        extra = ("--password", str(password), "--ssl")
        started = workers.start(manager.port, "w1", isolated=False, extra=extra)
        assert manager.wait() == 0, manager.text()
    assert _check_dataset(output, 60) == {"success": 54, "failed_to_download": 6}
    # the worker's own processes wrote the markers (host:pid of a fork, not the manager's)
    assert all(str(marker["worker"]) != started.name for marker in _markers(output))
    log = manager.text()
    assert "--password FILE --ssl" in log and "any machine that reaches" not in log


def test_shared_mode_on_object_storage(
    site: tuple[Path, Workers], fresh_server: ImageServer, s3: dict[str, str]
) -> None:
    import s3fs

    folder, workers = site
    fs = s3fs.S3FileSystem(
        key="testing",
        secret="testing",
        endpoint_url=s3["AWS_ENDPOINT_URL"],
        skip_instance_cache=True,
    )
    listing = _write_list(folder / "list.parquet", _mixed_urls(fresh_server, 60))
    args = _args(listing, Path("s3://flowdc-test/vine"), "--shard_size", "20")
    args[args.index("--output") + 1] = "s3://flowdc-test/vine"
    with running(Manager(folder, args, env=s3)) as manager:
        workers.start(manager.port, "w1", env=s3)
        assert manager.wait() == 0, manager.text()
    local = folder / "copy"
    fs.get("flowdc-test/vine/", str(local), recursive=True)
    assert _check_dataset(local, 60) == {"success": 54, "failed_to_download": 6}


# -- progress, and what goes wrong before any worker runs ----------------------------------------


def test_progress_of_a_running_shard_reaches_the_manager(
    site: tuple[Path, Workers], fresh_server: ImageServer
) -> None:
    """The rows a worker has done in a shard still running (a watched file, sent every few
    seconds) move the progress bar before the shard is committed."""
    folder, workers = site
    rows = 30  # 9 s: 0.3 s each, one at a time
    urls = [fresh_server.url(f"slow/0.3/{i}.jpg") for i in range(rows)]
    listing = _write_list(folder / "list.parquet", urls)
    args = _args(listing, folder / "out", "--shard_size", str(rows))
    args += ["--concurrent_downloads", "2", "--progress"]
    with running(Manager(folder, args)) as manager:
        workers.start(manager.port, "w1")
        assert manager.wait() == 0, manager.text()
    counts = [int(n) for n in re.findall(rf"\| *(\d+)/{rows} \[", manager.text())]
    assert any(0 < n < rows for n in counts), counts


def test_worker_command_errors_are_one_line() -> None:
    def worker(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "flowdc", "worker", *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=60)

    for args, message in (
        (("--engine", "taskvine", "tcp:/nowhere"), "'tcp:/nowhere' is not HOST:PORT"),
        (("--engine", "taskvine"), "give the manager's HOST:PORT"),
        (("--engine", "spark", "x:1"), "takes dask or taskvine"),
    ):
        done = worker(*args)
        assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
        assert message in done.stderr


def test_manager_errors_are_one_line(tmp_path: Path) -> None:
    listing = _write_list(tmp_path / "list.parquet", ["http://127.0.0.1:9/a.jpg"])
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        for extra, message in (
            (["--port", port], f"cannot start the TaskVine manager on port {port}"),
            (["--port", "0", "--password", "missing.pw"], "--password missing.pw: there is no"),
        ):
            command = [sys.executable, "-m", "flowdc", "download", "--input", str(listing)]
            command += ["--output", str(tmp_path / "out"), "--engine", "taskvine", *extra]
            done = subprocess.run(
                command,
                capture_output=True,
                text=True,
                timeout=60,
                cwd=tmp_path,
            )
            assert done.returncode == 2, done.stderr
            lines = done.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith(f"flowdc: error: {message}"), lines
            assert not (tmp_path / "out").exists()  # a failed start leaves nothing behind


# A user's script as written: no `if __name__ == "__main__":`; each import of it leaves a file
# named after its process (the processes that check returned shards must not run it again).
PLAIN_SCRIPT = """\
import os, pathlib; pathlib.Path(f"imported-by-{{os.getpid()}}").touch()
import flowdc
r = flowdc.download(input={table!r}, output="ds", label="label", shard_size=10,
                    enable_rate_limiting=False, progress=False, engine="taskvine", port={port})
print(r.ok)
"""


def test_a_plain_script_needs_no_main_guard(
    site: tuple[Path, Workers], fresh_server: ImageServer
) -> None:
    folder, workers = site
    listing = _write_list(folder / "list.parquet", _mixed_urls(fresh_server, 30))
    port = _free_port()
    (folder / "my_download.py").write_text(PLAIN_SCRIPT.format(table=str(listing), port=port))
    with open(folder / "script.log", "ab") as log:
        script = subprocess.Popen(
            [sys.executable, "my_download.py"],
            cwd=folder,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _until(lambda: "listening on port" in (folder / "script.log").read_text(), "the manager")
        workers.start(port, "w1")
        assert script.wait(timeout=WAIT) == 0, (folder / "script.log").read_text()
    finally:
        _kill_sessions(script.pid)
    assert (folder / "script.log").read_text().splitlines()[-1] == "True"
    assert len(list(folder.glob("imported-by-*"))) == 1  # the user's process only
    assert len(list((folder / "ds").glob("*_stats.json"))) == 3
