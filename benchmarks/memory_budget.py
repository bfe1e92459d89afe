"""Peak memory of `flowdc download` on a list of huge images, with the memory budget.

    PYTHONPATH=src .venv/bin/python benchmarks/memory_budget.py [--urls 1000] \
        [--concurrency 1000] [--mb 40] [--processes 2] [--max-memory BYTES] [--repeat 1]

nginx on 127.0.0.1-4 (core_run.py) serves one uncompressed TIFF of about `--mb` MB under every
path. Each run downloads `--urls` of them with `--concurrency` requests in flight and
`--min_image_size` above the TIFF's side, so every body is fetched, hashed and checked, then
refused as `too_small` (nothing is written: 1,000 x 40 MB would be 40 GB of tars); the shard's
writer path is covered by tests/test_memory_budget.py. The baseline is the same command on a
list of small JPEGs (the pool of core_run.py). Peak memory is the summed RSS of the run's
process tree (core_run.measure). Without a budget the bodies in flight would reach
concurrency x 40 MB (40 GB at 1,000): do not run a tree without it at that concurrency.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from core_run import HOSTS, free_port, make_pool, measure, start_nginx, stop_nginx

MIB = 1 << 20


def make_tiff(path: Path, megabytes: int) -> int:
    """An uncompressed RGB TIFF of about `megabytes` MB; returns its side in pixels."""
    from PIL import Image

    side = int((megabytes * 1e6 / 3) ** 0.5)
    Image.effect_noise((side, side), 40).convert("RGB").save(path, "TIFF")
    return side


def serve_one_file(www: Path, source: Path) -> None:
    """Every path nginx maps (core_run: the last two digits, else 0) gives `source`."""
    www.mkdir(parents=True, exist_ok=True)
    for name in [f"{n}.jpg" for n in range(100)] + [f"0{n}.jpg" for n in range(10)]:
        (www / name).unlink(missing_ok=True)
        os.link(source, www / name)


def url_table(path: Path, port: int, count: int) -> Path:
    urls = [f"http://{HOSTS[i % len(HOSTS)]}:{port}/{i}.jpg" for i in range(count)]
    pq.write_table(pa.table({"url": urls}), path)
    return path


def download(urls: Path, output: Path, args: argparse.Namespace, *extra: str) -> list[str]:
    command = [
        sys.executable, "-m", "flowdc", "download", "--input", str(urls), "--output", str(output),
        "--no-enable_rate_limiting", "--no-progress", "--timeout", "600",
        "--concurrent_downloads", str(args.concurrency), "--processes", str(args.processes),
        "--shard_size", str(max(1, args.urls // args.processes)), *extra,
    ]  # fmt: skip
    if args.max_memory is not None:
        command += ["--max_memory", str(args.max_memory)]
    return command


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--urls", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=1000)
    parser.add_argument("--mb", type=int, default=40)
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--max-memory", type=int, default=None)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="flowdc-membench-"))
    work.chmod(0o755)  # nginx's workers run as an unprivileged user
    nginx_small = nginx_big = None
    try:
        make_pool(work / "small", 100)
        for digit in range(10):  # the last two digits of a path may be "07"
            shutil.copy(work / "small" / f"{digit}.jpg", work / "small" / f"0{digit}.jpg")
        side = make_tiff(work / "big.tif", args.mb)
        size = (work / "big.tif").stat().st_size
        serve_one_file(work / "big", work / "big.tif")
        ports = free_port(), free_port()
        (work / "n1").mkdir()
        (work / "n2").mkdir()
        nginx_small = start_nginx(work / "small", work / "n1", ports[0])
        nginx_big = start_nginx(work / "big", work / "n2", ports[1])
        small = url_table(work / "small.parquet", ports[0], args.urls)
        big = url_table(work / "big.parquet", ports[1], args.urls)
        runs: dict[str, list[dict[str, float]]] = {"baseline": [], "huge": []}
        for attempt in range(args.repeat):
            for name, urls, extra in (
                ("baseline", small, ()),
                ("huge", big, ("--min_image_size", str(side + 1))),
            ):
                output = work / f"out-{name}-{attempt}"
                figures = measure(download(urls, output, args, *extra))
                overview = json.loads((output / "overview.json").read_text())
                outcome = dict(overview["error_breakdown"])
                outcome["success"] = overview["download_summary"]["successful"]
                expected = "success" if name == "baseline" else "too_small"
                if outcome.get(expected) != args.urls:  # every body fetched whole and checked
                    raise RuntimeError(
                        f"{name}: expected {args.urls} {expected}, got {outcome}: "
                        f"{overview['error_messages']}"
                    )
                print(name, json.dumps({k: round(v, 2) for k, v in figures.items()}), flush=True)
                runs[name].append(figures)
                shutil.rmtree(output)
        baseline = statistics.median(r["peak_mb"] for r in runs["baseline"])
        huge = statistics.median(r["peak_mb"] for r in runs["huge"])
        seconds = statistics.median(r["seconds"] for r in runs["huge"])
        try:
            from flowdc.shard.fetch.budget import default_budget
        except ImportError:  # a tree from before --max_memory (run it at a low concurrency)
            budget = None
        else:
            budget = args.max_memory or default_budget()
        print(
            f"\n{args.urls} URLs of {size / 1e6:.1f} MB, {args.concurrency} concurrent, "
            f"{args.processes} processes, --max_memory "
            + (f"{budget / MIB:,.0f} MiB a process" if budget else "(none)")
        )
        print(f"baseline (small JPEGs) peak RSS: {baseline:,.0f} MB")
        print(f"huge images peak RSS:            {huge:,.0f} MB ({seconds:.1f} s)")
        print(f"huge - baseline:                 {huge - baseline:,.0f} MB")
        if budget:
            print(f"budget, all processes:           {budget * args.processes / 1e6:,.0f} MB")
    finally:
        for nginx in (nginx_small, nginx_big):
            if nginx is not None:
                stop_nginx(nginx)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
