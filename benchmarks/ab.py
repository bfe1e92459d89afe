"""A/B of FLOW-DC source trees: the same nginx and list, runs in alternation, medians.

    git archive main src | tar -x -C /tmp/flowdc-main
    .venv/bin/python benchmarks/ab.py --variant main=/tmp/flowdc-main/src --variant new=src \
        [--urls 10000] [--repeat 3] [--https] [--bare] [--extra "--resize_mode center_crop"]

    # one tree, two output formats: --options gives one variant its own options
    .venv/bin/python benchmarks/ab.py --variant wds=src --variant parquet=src \
        --options parquet="--output_format parquet"

Each variant is run as `python -m flowdc download` with PYTHONPATH set to its `src` folder (the
same interpreter and packages), against nginx on 127.0.0.1-4 serving the generated pool
(core_run.py), with throughput.py's list and shard size; --bare adds the bare aiohttp loop. Every
run must store every image. Prints each run (with the load average at its start) and the medians:
on a shared machine, only ratios within one run mean something.
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

from core_run import (
    BARE_LOOP,
    flowdc_download,
    free_port,
    make_pool,
    measure,
    start_nginx,
    stop_nginx,
)
from throughput import make_tls, shard_size, url_list


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", action="append", required=True, help="NAME=SRC_FOLDER")
    parser.add_argument("--urls", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--https", action="store_true")
    parser.add_argument("--bare", action="store_true", help="also run the bare aiohttp loop")
    parser.add_argument("--extra", default="", help="more `flowdc download` options")
    parser.add_argument(
        "--options", action="append", default=[], help="NAME=OPTIONS: more options for one variant"
    )
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)
    variants = dict(v.split("=", 1) for v in args.variant)
    own = dict(o.split("=", 1) for o in args.options)

    work = Path(tempfile.mkdtemp(prefix="flowdc-ab-"))
    work.chmod(0o755)  # nginx's workers run as an unprivileged user
    nginx = None
    try:
        make_pool(work / "www", 300)
        ca, cert, key = make_tls(work)
        port, tls_port = free_port(), free_port()
        nginx = start_nginx(work / "www", work, port, tls=(cert, key, tls_port))
        env = {"SSL_CERT_FILE": str(ca), "NO_ALBUMENTATIONS_UPDATE": "1"}
        scheme, used_port = ("https", tls_port) if args.https else ("http", port)
        urls = url_list(work / "urls.parquet", scheme, used_port, args.urls, 300)
        runs: dict[str, list[dict[str, float]]] = {}
        for attempt in range(args.repeat):
            for name, src in variants.items():
                out = work / f"out-{name}-{attempt}"
                command = flowdc_download(
                    urls, "--output", str(out), "--shard_size", str(shard_size(args.urls)),
                    "--concurrent_downloads", str(args.concurrency), *args.extra.split(),
                    *own.get(name, "").split(),
                )  # fmt: skip
                load = os.getloadavg()[0]
                result = measure(command, {**env, "PYTHONPATH": str(Path(src).resolve())})
                summary = json.loads((out / "overview.json").read_text())["download_summary"]
                if summary["successful"] != args.urls:
                    raise RuntimeError(f"{name} stored {summary['successful']} of {args.urls}")
                shutil.rmtree(out)
                runs.setdefault(name, []).append({**result, "load": load})
                rate = args.urls / result["seconds"]
                print(f"run {attempt + 1} {name}: {rate:.0f}/s, load {load:.1f}")
            if args.bare:
                load = os.getloadavg()[0]
                result = measure(
                    [sys.executable, "-c", BARE_LOOP, str(urls), str(args.concurrency)], env
                )
                runs.setdefault("bare aiohttp", []).append({**result, "load": load})
                print(f"run {attempt + 1} bare aiohttp: {args.urls / result['seconds']:.0f}/s")
        print(f"\n{'client':<15}{'images/s':>10}{'CPU s/1k':>10}{'peak MB':>9}  runs (images/s)")
        for name, samples in runs.items():
            seconds = statistics.median(s["seconds"] for s in samples)
            cpu = statistics.median(s["cpu"] for s in samples) / args.urls * 1000
            peak = statistics.median(s["peak_mb"] for s in samples)
            each = [round(args.urls / s["seconds"]) for s in samples]
            print(f"{name:<15}{args.urls / seconds:>10.0f}{cpu:>10.2f}{peak:>9.0f}  {each}")
    finally:
        if nginx is not None:
            stop_nginx(nginx)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
