"""FLOW-DC against img2dataset and a bare aiohttp loop: same machine, same URLs, one run.

    .venv/bin/python benchmarks/throughput.py [--urls 20000] [--repeat 3] [--cases ...]
        [--memory-urls 20000 1000000] [--i2d-threads 64] [--json results.json]

Serves a pool of generated JPEGs (20-500 KB, median about 100 KB) with nginx from 127.0.0.1-4
over HTTP and HTTPS (a self-signed CA made for the run, which every client is told to trust
through SSL_CERT_FILE and REQUESTS_CA_BUNDLE); installs img2dataset in its own virtual
environment (benchmarks/.venv-img2dataset, git-ignored). Then, for each case, runs the clients in
alternation, --repeat times each, and prints medians: images/s, MB/s, CPU seconds per 1,000
images, peak memory (summed RSS of the client's process tree), and the ratios.

Cases: webdataset without resizing over HTTP and HTTPS, webdataset center-cropped to 256 px,
imagefolder without resizing (img2dataset has no imagefolder: its `files` output stands in).
Then FLOW-DC's peak memory for growing URL lists against nginx answering 404 (fast, and nothing
stored, so what grows with the list shows).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from core_run import (
    BARE_LOOP,
    HOSTS,
    flowdc_download,
    free_port,
    make_pool,
    measure,
    start_nginx,
    stop_nginx,
)

I2D_VENV = Path(__file__).resolve().parent / ".venv-img2dataset"
CASES = ("wds-http", "wds-https", "wds-resize256", "imagefolder-http")


def ensure_img2dataset() -> Path:
    """img2dataset in its own venv (its pins clash with ours); returns its command."""
    command = I2D_VENV / "bin" / "img2dataset"
    if not command.exists():
        subprocess.run([sys.executable, "-m", "venv", str(I2D_VENV)], check=True)
        subprocess.run(
            [str(I2D_VENV / "bin" / "pip"), "install", "--quiet", "img2dataset"], check=True
        )
    return command


def make_tls(work: Path) -> tuple[Path, Path, Path]:
    """A CA and a certificate for HOSTS signed by it: (ca.pem, server.pem, server.key)."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, cwd=work, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
            "ca.pem", "-days", "2", "-subj", "/CN=FLOW-DC benchmark CA")  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out",
            "server.csr", "-subj", "/CN=127.0.0.1")  # fmt: skip
    (work / "san.ext").write_text(
        "subjectAltName=" + ",".join(f"IP:{host}" for host in HOSTS) + "\n"
    )
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "server.pem", "-days", "2",
            "-extfile", "san.ext")  # fmt: skip
    return work / "ca.pem", work / "server.pem", work / "server.key"


def url_list(path: Path, scheme: str, port: int, count: int, pool: int, prefix: str = "") -> Path:
    urls = [
        f"{scheme}://{HOSTS[i % len(HOSTS)]}:{port}/{prefix}{i % pool}.jpg" for i in range(count)
    ]
    labels = [f"class_{i % 10}" for i in range(count)]
    pq.write_table(pa.table({"url": urls, "label": labels}), path)
    return path


def shard_size(urls: int) -> int:
    """10,000 (both tools' default), but at least two shards: one per process."""
    return max(1, min(10_000, -(-urls // 2)))


def flowdc_command(urls: Path, out: Path, concurrency: int, *extra: str) -> list[str]:
    rows = pq.ParquetFile(urls).metadata.num_rows
    return flowdc_download(
        urls, "--output", str(out), "--shard_size", str(shard_size(rows)),
        "--concurrent_downloads", str(concurrency), *extra,
    )  # fmt: skip


def flowdc_count(out: Path) -> int:
    return json.loads((out / "overview.json").read_text())["download_summary"]["successful"]


def i2d_command(i2d: Path, urls: Path, out: Path, threads: int, *extra: str) -> list[str]:
    rows = pq.ParquetFile(urls).metadata.num_rows
    return [
        str(i2d), "--url_list", str(urls), "--input_format", "parquet", "--url_col", "url",
        "--output_folder", str(out), "--processes_count", "2", "--thread_count", str(threads),
        "--number_sample_per_shard", str(shard_size(rows)), "--extract_exif", "False",
        "--timeout", "30",
        *extra,
    ]  # fmt: skip


def i2d_count(out: Path) -> int:
    return sum(json.loads(p.read_text())["successes"] for p in out.glob("*_stats.json"))


def run_case(
    case: str, args: argparse.Namespace, work: Path, lists: dict[str, Path], env: dict[str, str]
) -> dict[str, list[dict[str, float]]]:
    """Every client of one case, in alternation, args.repeat times; each run checked."""
    urls = lists["https" if case == "wds-https" else "http"]
    i2d = ensure_img2dataset()
    flowdc_extra: tuple[str, ...] = ()
    i2d_extra: tuple[str, ...] = ("--resize_mode", "no", "--disable_all_reencoding", "True")
    if case == "wds-resize256":
        flowdc_extra = ("--resize_mode", "center_crop", "--image_size", "256")
        i2d_extra = ("--resize_mode", "center_crop", "--image_size", "256")
    if case == "imagefolder-http":
        flowdc_extra = ("--output_format", "imagefolder")
        i2d_extra = (*i2d_extra, "--output_format", "files")
    else:
        i2d_extra = (*i2d_extra, "--output_format", "webdataset")
    clients: dict[str, tuple[Callable[[Path], list[str]], Callable[[Path], int] | None]] = {
        "flowdc": (
            lambda out: flowdc_command(urls, out, args.concurrency, *flowdc_extra),
            flowdc_count,
        ),
        "bare aiohttp": (
            lambda out: [sys.executable, "-c", BARE_LOOP, str(urls), str(args.concurrency)],
            None,
        ),
        "img2dataset": (
            lambda out: i2d_command(i2d, urls, out, args.i2d_threads, *i2d_extra),
            i2d_count,
        ),
    }
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in clients}
    for attempt in range(args.repeat):
        for name, (command, count) in clients.items():
            out = work / f"out-{case}-{attempt}-{name.split()[0]}"
            result = measure(command(out), env)
            if count is not None:
                got = count(out)
                if got != args.urls:
                    raise RuntimeError(f"{case}: {name} stored {got} of {args.urls} images")
            shutil.rmtree(out, ignore_errors=True)
            runs[name].append(result)
            print(f"  {case} run {attempt + 1} {name}: {args.urls / result['seconds']:.0f}/s")
    return runs


def summarize(runs: dict[str, list[dict[str, float]]], urls: int, mean_mb: float) -> dict:
    table = {}
    for name, samples in runs.items():
        seconds = statistics.median(s["seconds"] for s in samples)
        table[name] = {
            "images_per_s": urls / seconds,
            "mb_per_s": urls * mean_mb / seconds,
            "cpu_s_per_1000": statistics.median(s["cpu"] for s in samples) / urls * 1000,
            "peak_mb": statistics.median(s["peak_mb"] for s in samples),
            "runs": len(samples),
        }
    return table


def print_case(case: str, table: dict) -> None:
    print(f"\n{case}")
    print(f"{'client':<15}{'images/s':>10}{'MB/s':>8}{'CPU s/1k':>10}{'peak MB':>9}")
    for name, row in table.items():
        print(
            f"{name:<15}{row['images_per_s']:>10.0f}{row['mb_per_s']:>8.0f}"
            f"{row['cpu_s_per_1000']:>10.2f}{row['peak_mb']:>9.0f}"
        )
    flowdc = table["flowdc"]["images_per_s"]
    for other in ("bare aiohttp", "img2dataset"):
        print(f"flowdc / {other} images/s: {flowdc / table[other]['images_per_s']:.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--urls", type=int, default=20_000)
    parser.add_argument("--pool", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--i2d-threads", type=int, default=64)
    parser.add_argument("--cases", nargs="*", choices=CASES, default=list(CASES))
    parser.add_argument("--memory-urls", type=int, nargs="*", default=[20_000, 1_000_000])
    parser.add_argument("--json", help="also write the medians to this JSON file")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # progress shows when the output is a file

    work = Path(tempfile.mkdtemp(prefix="flowdc-throughput-"))
    work.chmod(0o755)  # nginx's workers run as an unprivileged user
    nginx = None
    results: dict = {"urls": args.urls, "repeat": args.repeat, "cases": {}, "memory": {}}
    try:
        sizes = make_pool(work / "www", args.pool)
        ca, cert, key = make_tls(work)
        port, tls_port = free_port(), free_port()
        nginx = start_nginx(work / "www", work, port, tls=(cert, key, tls_port))
        env = {
            "SSL_CERT_FILE": str(ca),
            "REQUESTS_CA_BUNDLE": str(ca),
            "NO_ALBUMENTATIONS_UPDATE": "1",
        }
        lists = {
            "http": url_list(work / "http.parquet", "http", port, args.urls, args.pool),
            "https": url_list(work / "https.parquet", "https", tls_port, args.urls, args.pool),
        }
        mean_mb = statistics.mean(sizes) / 1e6
        results["pool"] = {
            "images": args.pool,
            "median_kb": statistics.median(sizes) / 1e3,
            "mean_kb": mean_mb * 1e3,
        }
        print(
            f"{args.urls:,} URLs, pool of {args.pool} JPEGs, median "
            f"{statistics.median(sizes) / 1e3:.0f} KB, mean {mean_mb * 1e3:.0f} KB, "
            f"{os.cpu_count()} cores; img2dataset: 2 processes, {args.i2d_threads} threads"
        )
        for case in args.cases:
            table = summarize(run_case(case, args, work, lists, env), args.urls, mean_mb)
            results["cases"][case] = table
            print_case(case, table)
        for count in args.memory_urls:
            urls = url_list(work / "404.parquet", "http", port, count, args.pool, "missing/")
            out = work / "out-404"
            result = measure(flowdc_command(urls, out, args.concurrency), env)
            rows = json.loads((out / "overview.json").read_text())["download_summary"]["total"]
            if rows != count:
                raise RuntimeError(f"404 run accounted for {rows} of {count} rows")
            shutil.rmtree(out)
            results["memory"][count] = {**result, "rows_per_s": count / result["seconds"]}
            print(
                f"\n{count:,} URLs answered 404: peak {result['peak_mb']:.0f} MB, "
                f"{count / result['seconds']:.0f} rows/s"
            )
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1))
    finally:
        if nginx is not None:
            stop_nginx(nginx)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
