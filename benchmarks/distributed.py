"""Images/s of the local engine against the Dask engine, same URLs, same loopback nginx.

    .venv/bin/python benchmarks/distributed.py [--urls 20000] [--repeat 3]

Serves the pool of generated JPEGs of core_run.py with nginx on 127.0.0.1-4, starts a Dask
scheduler and two `dask worker` processes (two task threads each) on 127.0.0.1, then runs, in
alternation: `flowdc download` with the local engine (two processes), with `--engine dask
--scheduler` on that cluster, and with `--engine dask` alone (a cluster of its own, so its start
is in the time). Every run must download every URL. Prints medians and the Dask/local ratio.
"""

from __future__ import annotations

import argparse
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
from core_run import HOSTS, free_port, make_pool, measure, start_nginx


def start_cluster(work: Path) -> tuple[str, list[subprocess.Popen]]:
    """A scheduler and two single-process workers on 127.0.0.1, each in its own session."""
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    python = [sys.executable, "-m"]
    log = open(work / "cluster.log", "ab")
    processes = [
        subprocess.Popen(
            [
                *python,
                "distributed.cli.dask_scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--no-dashboard",
            ],
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    ]
    time.sleep(2)
    for name in ("w1", "w2"):
        processes.append(
            subprocess.Popen(
                [
                    *python,
                    "distributed.cli.dask_worker",
                    address,
                    "--name",
                    name,
                    "--nthreads",
                    "2",
                    "--no-nanny",
                    "--no-dashboard",
                    "--host",
                    "127.0.0.1",
                ],
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        )
    # a child process: in this script's folder, `import distributed` would find this file
    wait = f"from distributed import Client; Client({address!r}).wait_for_workers(2, timeout=60)"
    subprocess.run([sys.executable, "-c", wait], check=True, timeout=90, cwd=work)
    return address, processes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--urls", type=int, default=20_000)
    parser.add_argument("--pool", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--shard-size", type=int, default=2500)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="flowdc-bench-dist-"))
    work.chmod(0o755)  # nginx's workers run as an unprivileged user
    started: list[subprocess.Popen] = []
    try:
        sizes = make_pool(work / "www", args.pool)
        port = free_port()
        started.append(start_nginx(work / "www", work, port))
        urls = [
            f"http://{HOSTS[i % len(HOSTS)]}:{port}/{i % args.pool}.jpg" for i in range(args.urls)
        ]
        labels = [f"class_{i % 10}" for i in range(args.urls)]
        pq.write_table(pa.table({"url": urls, "label": labels}), work / "urls.parquet")
        address, cluster = start_cluster(work)
        started.extend(cluster)
        print(
            f"{args.urls:,} URLs, pool of {args.pool} JPEGs, median "
            f"{statistics.median(sizes) / 1e3:.0f} KB, {os.cpu_count()} cores, shards of "
            f"{args.shard_size}"
        )
        base = [
            sys.executable,
            "-m",
            "flowdc",
            "download",
            "--input",
            str(work / "urls.parquet"),
            "--label",
            "label",
            "--no-enable_rate_limiting",
            "--no-progress",
            "--shard_size",
            str(args.shard_size),
            "--processes",
            "2",
        ]
        engines = {
            "local (2 processes)": [],
            "dask (2 workers)": ["--engine", "dask", "--scheduler", address],
            "dask (own cluster)": ["--engine", "dask"],
        }
        runs: dict[str, list[float]] = {name: [] for name in engines}
        for attempt in range(args.repeat):
            for name, extra in engines.items():
                out = work / f"out{attempt}"
                runs[name].append(measure([*base, *extra, "--output", str(out)])["seconds"])
                summary = json.loads((out / "overview.json").read_text())["download_summary"]
                if summary["successful"] != args.urls:
                    raise RuntimeError(f"{name}: {summary['successful']} of {args.urls} downloaded")
                shutil.rmtree(out)
        print(f"\n{'engine':<22}{'images/s':>10}{'runs (s)':>26}")
        medians = {}
        for name, seconds in runs.items():
            medians[name] = args.urls / statistics.median(seconds)
            shown = ", ".join(f"{s:.1f}" for s in seconds)
            print(f"{name:<22}{medians[name]:>10.0f}{shown:>26}")
        local = medians["local (2 processes)"]
        print(f"\ndask (2 workers) / local images/s: {medians['dask (2 workers)'] / local:.2f}")
        print(f"dask (own cluster) / local images/s: {medians['dask (own cluster)'] / local:.2f}")
    finally:
        for process in reversed(started):
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
