"""Images/s of the local engine against the Dask and TaskVine engines, same URLs, same nginx.

    .venv/bin/python benchmarks/distributed.py [--urls 20000] [--repeat 3] [--no-taskvine]

Serves the pool of generated JPEGs of core_run.py with nginx on 127.0.0.1-4, starts a Dask
scheduler and two `dask worker` processes (two task threads each) on 127.0.0.1, then runs, in
alternation: `flowdc download` with the local engine (two processes), with `--engine dask
--scheduler` on that cluster (with --own-cluster also `--engine dask` alone: a cluster of its
own, whose start is in the time), and, when TaskVine is installed (`make taskvine`), with
`--engine taskvine` in gathered mode (the shards come back to the manager, are checked and
committed there) and in shared mode (`--shared_output`: the workers write into the output).
Each TaskVine run gets two fresh `vine_worker`s (two cores each, as `flowdc worker --engine
taskvine` starts them), started just before the manager; their start and warm-up overlap the
planning and are in the time. Every run must download every URL. Prints medians and each
engine's ratio to the local engine, and the CPU seconds per 1,000 images of everything each run
started (manager, workers, the Dask cluster's share during the run; read from a cpuacct cgroup
per run where this runs as root, else n/a): on a machine shared with other work the seconds vary
with the load, the CPU much less. Everything runs in this script's session (see `timed`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from core_run import HOSTS, flowdc_download, free_port, make_pool, start_nginx, stop_nginx


class CpuGroup:
    """A cpuacct cgroup (v1, root): the CPU time of every process started in it and of their
    descendants, however they end; a busy machine changes the seconds a run takes, not the CPU
    it uses. Where the cgroup cannot be made, `seconds` is None."""

    ROOT = Path("/sys/fs/cgroup/cpuacct")

    def __init__(self, name: str) -> None:
        self.path: Path | None = self.ROOT / f"flowdc-bench-{os.getpid()}-{name}"
        try:
            self.path.mkdir()
        except OSError:
            self.path = None

    def join(self) -> None:
        """preexec_fn: the child process enters the group before it runs its program."""
        if self.path is not None:
            (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def seconds(self) -> float | None:
        if self.path is None:
            return None
        return int((self.path / "cpuacct.usage").read_text()) / 1e9

    def remove(self) -> None:
        """End what is left in the group (a vine_worker's transfer server may outlive it), then
        the group."""
        if self.path is None:
            return
        for _ in range(50):
            for pid in (self.path / "tasks").read_text().split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.1)


def timed(command: list[str], group: CpuGroup) -> float:
    """Seconds a command takes. It stays in this script's session, as the cluster does: with
    the kernel's autogroup scheduling each session gets an equal CPU share, so a cluster in
    sessions of its own would get more of a busy machine than the local engine."""
    started = time.monotonic()
    result = subprocess.run(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=group.join
    )
    if result.returncode != 0:
        raise RuntimeError(f"{command[:3]} failed: {result.stderr.decode()[-2000:]}")
    return time.monotonic() - started


def start_cluster(work: Path, processes: list[subprocess.Popen], group: CpuGroup) -> str:
    """A scheduler and two single-process workers on 127.0.0.1, in this script's session;
    each is appended to `processes` as soon as it starts (so the caller can stop them)."""
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    log = open(work / "cluster.log", "ab")
    commands = [["distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", str(port)]]
    worker = ["distributed.cli.dask_worker", address, "--nthreads", "2", "--no-nanny"]
    commands += [[*worker, "--name", name, "--host", "127.0.0.1"] for name in ("w1", "w2")]
    for command in commands:
        processes.append(
            subprocess.Popen(
                [sys.executable, "-m", *command, "--no-dashboard"],
                stdout=log,
                stderr=log,
                preexec_fn=group.join,
                cwd=work,  # not this script's folder: `-m distributed` would find this file
            )
        )
    wait = f"from distributed import Client; Client({address!r}).wait_for_workers(2, timeout=60)"
    subprocess.run([sys.executable, "-c", wait], check=True, timeout=90, cwd=work)
    return address


def vine_workers(port: int, work: Path, group: CpuGroup, count: int = 2) -> list[subprocess.Popen]:
    """`count` vine_workers for a manager on 127.0.0.1:port, as `flowdc worker --engine taskvine`
    starts them, but in this script's session (see `timed`); each exits when the run ends."""
    from flowdc.engines.taskvine.command import worker_environment
    from flowdc.engines.taskvine.manager import feature

    program = shutil.which("vine_worker", path=str(Path(sys.executable).parent))
    assert program is not None
    log = open(work / "vine-workers.log", "ab")
    options = ["--cores", "2", "--feature", feature(), "--max-backoff=1", "--single-shot"]
    return [
        subprocess.Popen(
            [
                program,
                "--workspace",
                str(work / f"vine-{port}-{i}"),
                *options,
                "127.0.0.1",
                str(port),
            ],
            stdout=log,
            stderr=log,
            env=worker_environment(),
            preexec_fn=group.join,
        )
        for i in range(count)
    ]


def stop(processes: list[subprocess.Popen], grace: float = 10) -> None:
    for process in processes:
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def taskvine_installed() -> bool:
    try:
        import ndcctools.taskvine  # noqa: F401
    except ImportError:
        return False
    return shutil.which("vine_worker", path=f"{Path(sys.executable).parent}") is not None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--urls", type=int, default=20_000)
    parser.add_argument("--pool", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--shard-size", type=int, default=2500)
    parser.add_argument(
        "--own-cluster", action="store_true", help="also time --engine dask with no address"
    )
    parser.add_argument("--no-taskvine", action="store_true", help="leave TaskVine out")
    parser.add_argument("--no-dask", action="store_true", help="leave Dask out")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="flowdc-bench-dist-"))
    work.chmod(0o755)  # nginx's workers run as an unprivileged user
    nginx: subprocess.Popen | None = None
    cluster: list[subprocess.Popen] = []
    dask_group = CpuGroup("dask")  # the cluster lives across runs: its CPU is read per run
    try:
        sizes = make_pool(work / "www", args.pool)
        port = free_port()
        nginx = start_nginx(work / "www", work, port)
        urls = [
            f"http://{HOSTS[i % len(HOSTS)]}:{port}/{i % args.pool}.jpg" for i in range(args.urls)
        ]
        labels = [f"class_{i % 10}" for i in range(args.urls)]
        pq.write_table(pa.table({"url": urls, "label": labels}), work / "urls.parquet")
        address = "" if args.no_dask else start_cluster(work, cluster, dask_group)
        print(
            f"{args.urls:,} URLs, pool of {args.pool} JPEGs, median "
            f"{statistics.median(sizes) / 1e3:.0f} KB, {os.cpu_count()} cores, shards of "
            f"{args.shard_size}"
        )
        base = flowdc_download(
            work / "urls.parquet", "--shard_size", str(args.shard_size), "--processes", "2"
        )
        engines = {"local (2 processes)": []}
        if not args.no_dask:
            engines["dask (2 workers)"] = ["--engine", "dask", "--scheduler", address]
        if args.own_cluster:
            engines["dask (own cluster)"] = ["--engine", "dask"]
        if not args.no_taskvine and taskvine_installed():
            engines["taskvine gathered"] = ["--engine", "taskvine"]
            engines["taskvine shared"] = ["--engine", "taskvine", "--shared_output"]
        runs: dict[str, list[float]] = {name: [] for name in engines}
        cpu: dict[str, list[float]] = {name: [] for name in engines}
        for attempt in range(args.repeat):
            for name, extra in engines.items():
                out = work / f"out{attempt}"
                workers: list[subprocess.Popen] = []
                group = CpuGroup(f"{attempt}-{name.split()[0]}-{len(extra)}")
                cluster_before = dask_group.seconds() if name.startswith("dask (2") else None
                if name.startswith("taskvine"):
                    port = free_port()
                    extra = [*extra, "--port", str(port)]
                    workers = vine_workers(port, work, group)
                try:
                    runs[name].append(timed([*base, *extra, "--output", str(out)], group))
                finally:
                    stop(workers)
                used = group.seconds()
                if used is not None and cluster_before is not None:
                    used += (dask_group.seconds() or 0.0) - cluster_before
                group.remove()
                if used is not None:
                    cpu[name].append(used)
                summary = json.loads((out / "overview.json").read_text())["download_summary"]
                if summary["successful"] != args.urls:
                    raise RuntimeError(f"{name}: {summary['successful']} of {args.urls} downloaded")
                shutil.rmtree(out)
        print(f"\n{'engine':<22}{'images/s':>10}{'runs (s)':>26}{'CPU s/1k img':>14}")
        medians = {}
        for name, seconds in runs.items():
            medians[name] = args.urls / statistics.median(seconds)
            shown = ", ".join(f"{s:.1f}" for s in seconds)
            used = f"{statistics.median(cpu[name]) * 1000 / args.urls:.2f}" if cpu[name] else "n/a"
            print(f"{name:<22}{medians[name]:>10.0f}{shown:>26}{used:>14}")
        local = medians["local (2 processes)"]
        print()
        for name, median in medians.items():
            if name != "local (2 processes)":
                print(f"{name} / local images/s: {median / local:.2f}")
    finally:
        for process in reversed(cluster):
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
        if nginx is not None:
            stop_nginx(nginx)
        dask_group.remove()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
