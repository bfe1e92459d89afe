"""What describing a finished output costs: overview, croissant.json, report.html, validate.

    .venv/bin/python benchmarks/metadata_cost.py [--urls 5000] [--repeat 3] [--output DIR]

Downloads --urls rows (cycling through 200 generated JPEGs served by FLOW-DC's test server on
127.0.0.1) into a WebDataset output, or uses an existing --output, then times each metadata
stage --repeat times and prints medians, with the download's own time for comparison.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from flowdc.config.loading import build_config
from flowdc.metadata.croissant import build_croissant
from flowdc.metadata.overview import build_overview
from flowdc.metadata.report import build_report
from flowdc.metadata.validate import validate_output
from flowdc.planning.plan import Plan
from flowdc.runner import run_download
from flowdc.testserver import ImageServer, make_image


def _download(urls: int, output: Path) -> float:
    images = {f"{i}.jpg": make_image(i, 320 + i % 7 * 16, 240 + i % 5 * 16) for i in range(200)}
    with ImageServer(images) as server, tempfile.TemporaryDirectory() as scratch:
        rows = [
            {"url": server.url(f"img/{i % 200}.jpg"), "label": f"class {i % 50}"}
            for i in range(urls)
        ]
        table_path = Path(scratch) / "urls.parquet"
        pq.write_table(pa.Table.from_pylist(rows), table_path)
        config = build_config(
            overrides={
                "input": str(table_path),
                "output": str(output),
                "label": "label",
                "shard_size": 1000,
                "enable_rate_limiting": False,
                "croissant": "no_croissant",
            }
        )
        started = time.perf_counter()
        run_download(config, echo=lambda message: None)
        return time.perf_counter() - started


def _median_seconds(work: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--urls", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--output", help="an existing FLOW-DC output to describe")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        output = Path(args.output) if args.output else Path(scratch) / "out"
        download = None if args.output else _download(args.urls, output)
        plan = Plan.load(output)
        assert plan is not None, f"{output} is not a FLOW-DC output"
        config = build_config(overrides={"input": plan.input, "output": str(output)})
        overview = build_overview(plan, config)
        stages = {
            "overview": lambda: build_overview(plan, config),
            "croissant basic": lambda: build_croissant(plan, config, overview, "basic_croissant"),
            "croissant comprehensive": lambda: build_croissant(
                plan, config, overview, "comprehensive_croissant"
            ),
            "report": lambda: build_report(plan, overview),
            "validate (no croissant.json)": lambda: validate_output(output),
        }
        rows = overview["download_summary"]["total"]
        size = sum(p.stat().st_size for p in output.glob("*.tar")) / 1e6
        print(f"output: {rows:,} rows, {size:.1f} MB of tars, {plan.shard_count} shards")
        if download is not None:
            print(f"download (for comparison, one run): {download:.2f} s")
        for name, work in stages.items():
            print(f"{name:32s} median {_median_seconds(work, args.repeat):.3f} s")


if __name__ == "__main__":
    main()
