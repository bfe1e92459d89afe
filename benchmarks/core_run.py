"""Images/s and peak memory of a whole `flowdc download` run against nginx on loopback.

    .venv/bin/python benchmarks/core_run.py [--urls 20000] [--repeat 3]
    .venv/bin/python benchmarks/core_run.py --from-list ../shared/data/spider100_urls_10gb.parquet \
        --url-column photo_url --label-column taxon_name --repeat 1

Serves a pool of generated JPEGs (median about 100 KB) with nginx from 127.0.0.1-4 (installs
nginx from Debian's packages when missing), writes a URL list that cycles through the pool, then
runs, in alternation, `flowdc download` (webdataset, no rate limiting) and a bare aiohttp loop
that fetches and discards (the ceiling for a Python client). Prints medians: images/s, MB/s,
CPU seconds per 1,000 images, and peak memory (summed RSS of the run's process tree).

With --from-list, a real URL list is replayed instead: hosts are rewritten to 127.0.0.1-4 and
paths kept; nginx answers every path with the pool image named by the path's last two digits.
"""

from __future__ import annotations

import argparse
import ctypes
import io
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

HOSTS = ("127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4")

# A bare aiohttp loop: fetch every URL, check the status, and discard the body (or, with a third
# argument, append it to one file: the least any downloader that stores images must do).
BARE_LOOP = textwrap.dedent(
    """
    import asyncio, sys, aiohttp, pyarrow.parquet as pq
    urls = pq.read_table(sys.argv[1]).column("url").to_pylist()
    sink = open(sys.argv[3], "wb") if len(sys.argv) > 3 else None
    async def main():
        sem = asyncio.Semaphore(int(sys.argv[2]))
        total = 0
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
            async def one(u):
                nonlocal total
                async with sem, s.get(u) as r:
                    body = await r.read()
                    if r.status != 200:
                        raise SystemExit(f"HTTP {r.status} for {u}")
                    total += len(body)
                    if sink is not None:
                        sink.write(body)
            await asyncio.gather(*(one(u) for u in urls))
        print(total)
    asyncio.run(main())
    """
)


def make_pool(folder: Path, count: int, seed: int = 7) -> list[int]:
    """JPEGs of noise plus gradient, sized so the median is about 100 KB (20-500 KB)."""
    from PIL import Image

    rng = random.Random(seed)
    sizes = []
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        side = int(min(1100, max(150, rng.lognormvariate(6.35, 0.45))))
        image = Image.effect_noise((side, int(side * 0.75)), 40).convert("RGB")
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=80)
        (folder / f"{index}.jpg").write_bytes(buffer.getvalue())
        sizes.append(len(buffer.getvalue()))
    return sizes


def real_list(path: Path, url_column: str, label_column: str, port: int) -> pa.Table:
    """The list with each URL's host replaced by one of HOSTS (by the original host) and port."""
    from urllib.parse import urlsplit, urlunsplit

    table = pq.read_table(path)
    urls = []
    for url in table.column(url_column).to_pylist():
        parts = urlsplit(url)
        host = HOSTS[hash(parts.netloc) % len(HOSTS)]
        urls.append(urlunsplit(("http", f"{host}:{port}", parts.path, parts.query, "")))
    labels = table.column(label_column).cast(pa.string())
    return pa.table({"url": urls, "label": labels})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def flowdc_download(urls: Path, *options: str) -> list[str]:
    """`flowdc download` of a benchmark list: its labels, no bar, and no rate limiting (nginx on
    loopback is not a public host; the limits are what benchmarks/polite.py measures)."""
    return [
        sys.executable, "-m", "flowdc", "download", "--input", str(urls), "--label", "label",
        "--no-enable_rate_limiting", "--no-progress", *options,
    ]  # fmt: skip


def stop_nginx(nginx: subprocess.Popen) -> None:
    os.killpg(nginx.pid, signal.SIGTERM)
    nginx.wait(10)


def start_nginx(
    root: Path, work: Path, port: int, tls: tuple[Path, Path, int] | None = None
) -> subprocess.Popen:
    """nginx on HOSTS:port (and, with tls=(cert, key, port), HTTPS there); /missing/ is 404."""
    if shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists():
        subprocess.run(["apt-get", "install", "-y", "-qq", "nginx-light"], check=True)
    listens = "\n".join(f"listen {host}:{port};" for host in HOSTS)
    if tls is not None:
        cert, key, tls_port = tls
        listens += "\n" + "\n".join(f"listen {host}:{tls_port} ssl;" for host in HOSTS)
        listens += f"\nssl_certificate {cert};\nssl_certificate_key {key};"
    conf = work / "nginx.conf"
    conf.write_text(
        textwrap.dedent(f"""
        worker_processes 1;
        daemon off;
        pid {work}/nginx.pid;
        error_log {work}/error.log warn;
        events {{ worker_connections 4096; }}
        http {{
            access_log off;
            sendfile on;
            keepalive_requests 100000;
            types {{ image/jpeg jpg; }}
            map $uri $pick {{ "~(\\d\\d)\\D*$" $1; default 0; }}
            server {{
                {listens}
                root {root};
                location / {{ try_files $uri /$pick.jpg =404; }}
                location /missing/ {{ return 404; }}
            }}
        }}
    """)
    )
    process = subprocess.Popen(
        ["/usr/sbin/nginx", "-c", str(conf), "-p", str(work)], start_new_session=True
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection((HOSTS[0], port), timeout=0.2).close()
            return process
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("nginx did not start")


def _session_stats(session_id: int) -> list[list[str]]:
    """/proc/PID/stat fields after the comm field of every process in a session (zombies too)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(stat[3]) == session_id:  # field 6 (session) after the comm field
            found.append(stat)
    return found


def _tree_rss(session_id: int) -> tuple[int, float]:
    """Summed RSS (bytes) and CPU seconds of every process in a session."""
    tick, page = os.sysconf("SC_CLK_TCK"), os.sysconf("SC_PAGE_SIZE")
    stats = _session_stats(session_id)
    rss = sum(int(stat[21]) * page for stat in stats)
    return rss, sum((int(stat[11]) + int(stat[12])) / tick for stat in stats)


def _adopt_orphans() -> None:
    """Become the reaper of orphaned descendants (Linux's PR_SET_CHILD_SUBREAPER).

    A process that outlives its parent (multiprocessing's fork server, whose children are
    FLOW-DC's workers, exits after the main process) would otherwise go to init, and its CPU
    and its children's would be missing from this process's children's rusage."""
    ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)


def _reap_session(session_id: int, seconds: float = 30.0) -> None:
    """Wait for the processes of the session that were handed to this process."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            if not _session_stats(session_id):  # nothing of it left to wait for
                return
            time.sleep(0.02)


def measure(command: list[str], env: dict[str, str] | None = None) -> dict[str, float]:
    """Run a command in its own session; sample the tree's memory; time it; CPU via rusage
    (of every process of the tree: orphans are adopted and waited for)."""
    _adopt_orphans()
    started = time.monotonic()
    before = os.times()
    errors = tempfile.TemporaryFile()  # a file, not a pipe: a chatty client cannot block on it
    process = subprocess.Popen(
        command,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=errors,
        env=None if env is None else {**os.environ, **env},
    )
    peak = 0
    while process.poll() is None:
        rss, _ = _tree_rss(process.pid)
        peak = max(peak, rss)
        time.sleep(0.05)
    seconds = time.monotonic() - started
    _reap_session(process.pid)
    after = os.times()
    if process.returncode != 0:
        errors.seek(0)
        raise RuntimeError(f"{command[:3]} failed: {errors.read().decode()[-2000:]}")
    errors.close()
    cpu = (after.children_user - before.children_user) + (
        after.children_system - before.children_system
    )
    return {"seconds": seconds, "peak_mb": peak / 1e6, "cpu": cpu}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--urls", type=int, default=20_000)
    parser.add_argument("--pool", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--from-list", help="replay a real URL list (parquet), hosts rewritten")
    parser.add_argument("--url-column", default="url")
    parser.add_argument("--label-column", default="label")
    args = parser.parse_args()
    if args.from_list:
        args.pool = 100

    work = Path(tempfile.mkdtemp(prefix="flowdc-bench-"))
    work.chmod(0o755)  # nginx's workers run as an unprivileged user
    nginx = None
    try:
        sizes = make_pool(work / "www", args.pool)
        for digit in range(10):  # the last two digits of a path may be "07"
            shutil.copy(work / "www" / f"{digit}.jpg", work / "www" / f"0{digit}.jpg")
        port = free_port()
        nginx = start_nginx(work / "www", work, port)
        if args.from_list:
            table = real_list(Path(args.from_list), args.url_column, args.label_column, port)
            args.urls = table.num_rows
        else:
            urls = [
                f"http://{HOSTS[i % len(HOSTS)]}:{port}/{i % args.pool}.jpg"
                for i in range(args.urls)
            ]
            labels = [f"class_{i % 10}" for i in range(args.urls)]
            table = pa.table({"url": urls, "label": labels})
        pq.write_table(table, work / "urls.parquet")
        mean_kb = statistics.mean(sizes) / 1e3
        print(
            f"{args.urls:,} URLs, pool of {args.pool} JPEGs, median "
            f"{statistics.median(sizes) / 1e3:.0f} KB, mean per URL {mean_kb:.0f} KB, "
            f"{os.cpu_count()} cores"
        )
        flowdc = flowdc_download(
            work / "urls.parquet", "--concurrent_downloads", str(args.concurrency),
            "--shard_size", "10000",
        )  # fmt: skip
        bare = [sys.executable, "-c", BARE_LOOP, str(work / "urls.parquet"), str(args.concurrency)]
        runs: dict[str, list[dict[str, float]]] = {
            "flowdc": [],
            "bare aiohttp": [],
            "aiohttp+write": [],
        }
        for attempt in range(args.repeat):
            out = work / f"out{attempt}"
            runs["flowdc"].append(measure([*flowdc, "--output", str(out)]))
            overview = json.loads((out / "overview.json").read_text())
            summary = overview["download_summary"]
            if summary["successful"] != args.urls:
                raise RuntimeError(
                    f"flowdc downloaded {summary['successful']} of {args.urls}: "
                    f"{overview['error_breakdown']} {overview['error_messages']}"
                )
            shutil.rmtree(out)
            runs["bare aiohttp"].append(measure(bare))
            runs["aiohttp+write"].append(measure([*bare, str(work / "sink.bin")]))
            (work / "sink.bin").unlink()
        total_mb = mean_kb * args.urls / 1e3
        print(f"\n{'client':<15}{'images/s':>10}{'MB/s':>8}{'CPU s/1k':>10}{'peak MB':>9}")
        medians = {}
        for name, samples in runs.items():
            seconds = statistics.median(s["seconds"] for s in samples)
            cpu = statistics.median(s["cpu"] for s in samples)
            peak = statistics.median(s["peak_mb"] for s in samples)
            medians[name] = args.urls / seconds
            print(
                f"{name:<15}{args.urls / seconds:>10.0f}{total_mb / seconds:>8.0f}"
                f"{cpu / args.urls * 1000:>10.2f}{peak:>9.0f}"
            )
        print()
        for other in ("bare aiohttp", "aiohttp+write"):
            print(f"flowdc / {other} images/s: {medians['flowdc'] / medians[other]:.2f}")
    finally:
        if nginx is not None:
            stop_nginx(nginx)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
